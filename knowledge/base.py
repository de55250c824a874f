"""The knowledge base: each user's uploaded documents plus a shared folder, searchable by meaning.

Chunks live in chromadb (an embedded `PersistentClient` under the data dir, or a Chroma server when
`knowledge.chroma_url` is set), one collection per user (named by a hash of the user key, so a key
never becomes a name on disk) and one "shared" collection. Embeddings come from our shipped USE
model; chromadb's own default embedder (a download) is never built. Search covers the user's
collection and the shared one and drops passages below `min_relevance`, so an unrelated question
brings no documents into the prompt at all.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import chromadb
from chromadb.config import Settings as ChromaSettings

from knowledge.embeddings import UseChromaEmbeddingFunction, embed
from knowledge.errors import TooManyDocuments
from knowledge.loaders import EXTENSIONS, load_document, split_document
from pipeline.config import Settings
from pipeline.errors import TalkTwinError

log = logging.getLogger(__name__)

SHARED = "shared"
SHARED_COLLECTION = "talktwin-shared"


@dataclass(frozen=True)
class DocumentInfo:
    name: str
    chunks: int
    pages: int
    bytes: int


@dataclass(frozen=True)
class Passage:
    source: str  # document name; shared ones are their path inside the shared folder
    text: str
    score: float  # cosine similarity to the query, higher is closer
    scope: str = "user"  # "user" | "shared"


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> reason


class KnowledgeForgetIncomplete(RuntimeError):
    """Raised when a user's documents are still found after `forget`."""


def collection_name(user: str) -> str:
    """The user's collection: a hash, so user keys never reach chromadb names or paths."""
    return "talktwin-u-" + hashlib.sha256(user.encode()).hexdigest()[:40]


class KnowledgeBase:
    def __init__(
        self,
        *,
        path: Path | None = None,
        chroma_url: str = "",
        chunk_size: int = 500,
        chunk_overlap: int = 80,
        max_file_mb: float = 10,
        max_pages: int = 200,
        max_documents: int = 50,
        top_k: int = 3,
        min_relevance: float = 0.25,
    ) -> None:
        chroma_settings = ChromaSettings(anonymized_telemetry=False)
        if chroma_url:
            url = urlparse(chroma_url)
            self.client: Any = chromadb.HttpClient(
                host=url.hostname or "127.0.0.1",
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=chroma_settings,
            )
            self.path = None
        else:
            if path is None:
                raise ValueError("an embedded knowledge base needs a path")
            path.mkdir(parents=True, exist_ok=True)
            self.client = chromadb.PersistentClient(path=str(path), settings=chroma_settings)
            self.path = path
        self.chunk_size, self.chunk_overlap = chunk_size, chunk_overlap
        self.max_bytes, self.max_pages, self.max_documents = int(max_file_mb * 1e6), max_pages, max_documents
        self.top_k, self.min_relevance = top_k, min_relevance
        self._ef = UseChromaEmbeddingFunction()
        self._lock = threading.RLock()  # writes (add/replace/remove) are read-modify-write

    @classmethod
    def from_settings(cls, settings: Settings) -> KnowledgeBase:
        k = settings.knowledge
        return cls(
            path=settings.resolve(settings.paths.data_dir) / "chroma",
            chroma_url=k.chroma_url,
            chunk_size=k.chunk_size,
            chunk_overlap=k.chunk_overlap,
            max_file_mb=k.max_file_mb,
            max_pages=k.max_pages,
            max_documents=k.max_documents,
            top_k=k.top_k,
            min_relevance=k.min_relevance,
        )

    # ------------------------------------------------------------------ collections
    def _collection(self, name: str, create: bool = True) -> Any:
        if not create and name not in self._collection_names():
            return None
        return self.client.get_or_create_collection(
            name, embedding_function=self._ef, metadata={"hnsw:space": "cosine"}
        )

    def _collection_names(self) -> set[str]:
        return {c if isinstance(c, str) else c.name for c in self.client.list_collections()}

    def _user_collection(self, user: str, create: bool = True) -> Any:
        return self._collection(collection_name(user), create)

    # ------------------------------------------------------------------ documents
    def add_document(self, user: str, filename: str, data: bytes) -> DocumentInfo:
        """Index an uploaded document for `user`; a document of the same name is replaced.

        Raises a knowledge.errors TalkTwinError (unsupported, too large, too many pages, unreadable,
        empty, too many documents) with a message for the user.
        """
        with self._lock:
            col = self._user_collection(user)
            doc = load_document(filename, data, max_bytes=self.max_bytes, max_pages=self.max_pages)
            existing = {d.name for d in self._infos(col)}
            if doc.name not in existing and len(existing) >= self.max_documents:
                raise TooManyDocuments(count=len(existing), limit=self.max_documents)
            return self._index(col, doc, hashlib.sha256(data).hexdigest(), len(data))

    def _index(self, col: Any, doc: Any, digest: str, size: int) -> DocumentInfo:
        from knowledge.errors import EmptyDocument

        chunks = split_document(doc, chunk_size=self.chunk_size, chunk_overlap=self.chunk_overlap)
        if not chunks:
            raise EmptyDocument(name=doc.name)
        texts = [c.page_content for c in chunks]
        vectors = embed([f"{Path(doc.name).stem}\n{t}" for t in texts])  # the title helps short chunks
        col.delete(where={"source": doc.name})
        prefix = f"{digest[:16]}-{hashlib.sha1(doc.name.encode()).hexdigest()[:8]}"
        ids = [f"{prefix}-{i}" for i in range(len(chunks))]
        meta = {"source": doc.name, "sha256": digest, "pages": doc.pages, "bytes": size, "kind": doc.kind}
        col.add(
            ids=ids,
            documents=texts,
            embeddings=[v.tolist() for v in vectors],
            metadatas=[{**meta, "page": c.metadata["page"], "chunk": i} for i, c in enumerate(chunks)],
        )
        return DocumentInfo(doc.name, len(chunks), doc.pages, size)

    @staticmethod
    def _infos(col: Any) -> list[DocumentInfo]:
        if col is None:
            return []
        counts: dict[str, list[int]] = {}
        for m in col.get(include=["metadatas"])["metadatas"] or []:
            entry = counts.setdefault(str(m["source"]), [0, int(m["pages"]), int(m["bytes"])])
            entry[0] += 1
        return [DocumentInfo(name, *v) for name, v in sorted(counts.items())]

    def documents(self, user: str) -> list[DocumentInfo]:
        return self._infos(self._user_collection(user, create=False))

    def remove_document(self, user: str, name: str) -> bool:
        with self._lock:
            col = self._user_collection(user, create=False)
            if col is None or not col.get(where={"source": name}, include=[])["ids"]:
                return False
            col.delete(where={"source": name})
            return True

    def forget(self, user: str) -> None:
        """Delete every document of `user`, then scrub the embedded store's files and check."""
        with self._lock:
            name = collection_name(user)
            if name in self._collection_names():
                self.client.delete_collection(name)
            self._scrub()
            if name in self._collection_names():
                raise KnowledgeForgetIncomplete(f"collection of {user} still exists")

    def _scrub(self) -> None:
        """chromadb deletes rows but leaves their bytes in SQLite's free pages and the deleted
        collection's HNSW folder on disk; VACUUM and remove the folders no segment refers to."""
        if self.path is None:
            return  # a Chroma server manages its own files
        db = self.path / "chroma.sqlite3"
        with sqlite3.connect(db, timeout=30) as con:
            live = {row[0] for row in con.execute("SELECT id FROM segments")}
        con.close()
        con = sqlite3.connect(db, timeout=30, isolation_level=None)
        try:
            con.execute("VACUUM")
        finally:
            con.close()
        for child in self.path.iterdir():
            if child.is_dir() and len(child.name) == 36 and child.name not in live:
                shutil.rmtree(child, ignore_errors=True)

    # ------------------------------------------------------------------ search
    def search(self, user: str, query: str, k: int | None = None) -> list[Passage]:
        """The best passages for `query` from the user's and the shared documents, thresholded."""
        k = k or self.top_k
        scopes = [
            (scope, col)
            for scope, col in (
                ("user", self._user_collection(user, create=False)),
                (SHARED, self._collection(SHARED_COLLECTION, create=False)),
            )
            if col is not None and col.count() > 0
        ]
        if not query.strip() or not scopes:
            return []  # nothing to search: the embedding model is not even loaded
        vector = embed([query])[0].tolist()
        found: list[Passage] = []
        for scope, col in scopes:
            res = col.query(query_embeddings=[vector], n_results=min(k, col.count()))
            rows = zip(res["documents"][0], res["metadatas"][0], res["distances"][0], strict=True)
            for text, meta, dist in rows:
                score = 1.0 - float(dist)
                if score >= self.min_relevance:
                    found.append(Passage(str(meta["source"]), text, round(score, 4), scope))
        found.sort(key=lambda p: p.score, reverse=True)
        return found[:k]

    # ------------------------------------------------------------------ shared folder
    def sync_shared(self, folder: Path) -> SyncReport:
        """Bring the shared collection in line with `folder`: (re)index new and changed files (by
        content hash), drop removed ones. Bad files are reported, not raised."""
        report = SyncReport()
        with self._lock:
            col = self._collection(SHARED_COLLECTION)
            indexed: dict[str, str] = {}
            for m in col.get(include=["metadatas"])["metadatas"] or []:
                indexed[str(m["source"])] = str(m["sha256"])
            present: set[str] = set()
            files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
            for path in files:
                name = path.relative_to(folder).as_posix()
                present.add(name)
                data = path.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                if indexed.get(name) == digest:
                    report.unchanged.append(name)
                    continue
                try:
                    doc = load_document(name, data, max_bytes=self.max_bytes, max_pages=self.max_pages)
                    doc = type(doc)(name, doc.kind, doc.pages, doc.text_pages)  # keep the folder path
                    self._index(col, doc, digest, len(data))
                except TalkTwinError as e:
                    report.failed[name] = str(e)
                    col.delete(where={"source": name})
                    continue
                (report.updated if name in indexed else report.added).append(name)
            for name in sorted(set(indexed) - present):
                col.delete(where={"source": name})
                report.removed.append(name)
        log.info(
            "shared knowledge: +%d ~%d -%d =%d, %d failed",
            len(report.added),
            len(report.updated),
            len(report.removed),
            len(report.unchanged),
            len(report.failed),
        )
        return report

    def shared_documents(self) -> list[DocumentInfo]:
        return self._infos(self._collection(SHARED_COLLECTION, create=False))
