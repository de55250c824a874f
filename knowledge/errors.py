"""Document errors a user can cause by uploading a file, each with an English and a Chinese message."""

from __future__ import annotations

from typing import ClassVar

from pipeline.errors import TalkTwinError


class UnsupportedDocument(TalkTwinError):
    code = "unsupported_document"
    messages: ClassVar[dict[str, str]] = {
        "en": "I can't read {name}. Please send a .txt, .md, .pdf, .docx or .html file.",
        "zh": "无法读取 {name}，请发送 .txt、.md、.pdf、.docx 或 .html 文件。",
    }


class DocumentTooLarge(TalkTwinError):
    code = "document_too_large"
    messages: ClassVar[dict[str, str]] = {
        "en": "{name} is too large ({size_mb:.1f} MB); the limit is {limit_mb:g} MB.",
        "zh": "{name} 太大（{size_mb:.1f} MB），上限是 {limit_mb:g} MB。",
    }


class TooManyPages(TalkTwinError):
    code = "too_many_pages"
    messages: ClassVar[dict[str, str]] = {
        "en": "{name} has {pages} pages; the limit is {limit}.",
        "zh": "{name} 有 {pages} 页，上限是 {limit} 页。",
    }


class UnreadableDocument(TalkTwinError):
    code = "unreadable_document"
    messages: ClassVar[dict[str, str]] = {
        "en": "I could not open {name}: the file looks damaged or is protected.",
        "zh": "无法打开 {name}：文件似乎已损坏或受保护。",
    }


class EmptyDocument(TalkTwinError):
    code = "empty_document"
    messages: ClassVar[dict[str, str]] = {
        "en": "{name} has no text I can read (a scanned PDF needs text, not only pictures).",
        "zh": "{name} 中没有可读取的文字（扫描版 PDF 需要包含文字，而不只是图片）。",
    }


class TooManyDocuments(TalkTwinError):
    code = "too_many_documents"
    messages: ClassVar[dict[str, str]] = {
        "en": "You already have {count} documents; the limit is {limit}. Remove one first.",
        "zh": "你已经有 {count} 份文档，上限是 {limit} 份，请先删除一份。",
    }
