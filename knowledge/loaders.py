"""Uploaded bytes -> checked, typed, text pages (LangChain loaders) -> chunks (LangChain splitter).

The filename comes from a chat user, so it is only used as a display name after sanitising; the
type is decided by the extension AND the content (a .pdf must start like a PDF, a .docx must be a
zip holding word/document.xml, text must decode). Limits are checked before anything is parsed.
"""

from __future__ import annotations

import io
import re
import tempfile
import unicodedata
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from langchain_core.documents import Document
from langchain_text_splitters import RecursiveCharacterTextSplitter

from knowledge.errors import (
    DocumentTooLarge,
    EmptyDocument,
    TooManyPages,
    UnreadableDocument,
    UnsupportedDocument,
)

with warnings.catch_warnings():  # langchain-community announces its sunset on import
    warnings.simplefilter("ignore")
    from langchain_community.document_loaders import (
        BSHTMLLoader,
        Docx2txtLoader,
        PyPDFLoader,
        TextLoader,
    )

EXTENSIONS = {".txt": "txt", ".md": "md", ".markdown": "md", ".pdf": "pdf", ".docx": "docx"}
EXTENSIONS |= {".html": "html", ".htm": "html"}
# sentence ends first, Chinese and Latin, so chunks break at sentences rather than mid-phrase
SEPARATORS = ["\n\n", "\n", "。", "！", "？", ". ", "! ", "? ", "；", "; ", "，", ", ", " ", ""]
_TEXT_ENCODINGS = ("utf-8-sig", "utf-16", "gb18030")
_MAX_NAME = 100


@dataclass(frozen=True)
class LoadedDocument:
    name: str  # sanitised display name
    kind: str  # txt | md | pdf | docx | html
    pages: int
    text_pages: tuple[Document, ...]


def sanitize_filename(filename: str) -> str:
    """A display name safe to show and to store as metadata: no folders, no control characters."""
    name = unicodedata.normalize("NFC", filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    name = re.sub(r"[^\w.\- ()\[\]]+", "_", name).strip(" ._")
    if len(name) > _MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: _MAX_NAME - len(ext) - 1] + dot + ext) if dot and len(ext) <= 10 else name[:_MAX_NAME]
    return name or "document"


def detect_kind(name: str, data: bytes) -> str:
    """The document type from the extension, confirmed by the content."""
    kind = EXTENSIONS.get(Path(name).suffix.lower())
    if kind is None:
        raise UnsupportedDocument(f"unsupported extension: {name!r}", name=name)
    is_pdf = data[:1024].lstrip().startswith(b"%PDF-")
    is_zip = data.startswith(b"PK\x03\x04")
    if kind == "pdf" and not is_pdf:
        raise UnreadableDocument(f"{name!r} is not a PDF", name=name)
    if kind == "docx":
        try:
            if not is_zip or "word/document.xml" not in zipfile.ZipFile(io.BytesIO(data)).namelist():
                raise UnreadableDocument(f"{name!r} is not a Word document", name=name)
        except zipfile.BadZipFile as e:
            raise UnreadableDocument(f"{name!r} is not a Word document", name=name) from e
    if kind in ("txt", "md", "html") and (is_pdf or is_zip or (b"\x00" in data[:4096] and not _utf16(data))):
        raise UnsupportedDocument(f"{name!r} is binary, not {kind}", name=name)
    return kind


def _utf16(data: bytes) -> bool:
    return data[:2] in (b"\xff\xfe", b"\xfe\xff")


def _decode(data: bytes, name: str) -> str:
    for encoding in _TEXT_ENCODINGS:
        if encoding == "utf-16" and not _utf16(data):
            continue
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise UnreadableDocument(f"{name!r}: unknown text encoding", name=name)


def _strip_html(html: str) -> str:
    """The page without scripts, styles and templates, whose text is not content."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    return str(soup)


def _pdf_pages(data: bytes, name: str) -> int:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise UnreadableDocument(f"{name!r} is encrypted", name=name)
        return len(reader.pages)
    except (PdfReadError, ValueError, KeyError, OSError) as e:
        raise UnreadableDocument(f"{name!r}: {e}", name=name) from e


def load_document(filename: str, data: bytes, *, max_bytes: int, max_pages: int) -> LoadedDocument:
    """Check limits and type, then extract text with the LangChain loader for the type."""
    name = sanitize_filename(filename)
    if len(data) > max_bytes:
        raise DocumentTooLarge(
            f"{name!r}: {len(data)} bytes", name=name, size_mb=len(data) / 1e6, limit_mb=max_bytes / 1e6
        )
    if not data:
        raise EmptyDocument(f"{name!r} is empty", name=name)
    kind = detect_kind(name, data)
    pages = 1
    if kind == "pdf":
        pages = _pdf_pages(data, name)
        if pages > max_pages:
            raise TooManyPages(f"{name!r}: {pages} pages", name=name, pages=pages, limit=max_pages)
    if kind in ("txt", "md", "html"):
        text = _decode(data, name)
        data = (_strip_html(text) if kind == "html" else text).encode("utf-8")  # loaders read plain UTF-8
    with tempfile.TemporaryDirectory(prefix="talktwin-doc-") as tmp:
        path = Path(tmp) / f"upload.{kind}"  # never the user's name on disk
        path.write_bytes(data)
        try:
            docs = _loader(kind, path).load()
        except Exception as e:  # loaders raise anything from zip errors to parser errors
            raise UnreadableDocument(f"{name!r}: {type(e).__name__}: {e}", name=name) from e
    docs = [d for d in docs if d.page_content.strip()]
    if not docs:
        raise EmptyDocument(f"{name!r} has no text", name=name)
    return LoadedDocument(name, kind, pages, tuple(docs))


def _loader(kind: str, path: Path) -> PyPDFLoader | Docx2txtLoader | BSHTMLLoader | TextLoader:
    if kind == "pdf":
        return PyPDFLoader(str(path))
    if kind == "docx":
        return Docx2txtLoader(str(path))
    if kind == "html":
        return BSHTMLLoader(str(path), open_encoding="utf-8", bs_kwargs={"features": "html.parser"})
    return TextLoader(str(path), encoding="utf-8")


def split_document(doc: LoadedDocument, *, chunk_size: int, chunk_overlap: int) -> list[Document]:
    """Chunks with `page` metadata (1-based), ready to embed."""
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=chunk_size,
        chunk_overlap=min(chunk_overlap, chunk_size // 2),
        separators=SEPARATORS,
        keep_separator="end",
        strip_whitespace=True,
    )
    chunks: list[Document] = []
    for index, page in enumerate(doc.text_pages):
        text = re.sub(r"[ \t]+\n", "\n", page.page_content)
        text = re.sub(r"\n{3,}", "\n\n", text)
        page_no = int(page.metadata.get("page", index)) + 1 if doc.kind == "pdf" else 1
        for piece in splitter.split_text(text):
            if piece.strip():
                chunks.append(Document(page_content=piece, metadata={"page": page_no}))
    return chunks
