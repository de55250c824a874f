"""What a Discord attachment is (audio, image, document) and its bytes; what a profile mode means here."""

from __future__ import annotations

import discord

from knowledge.loaders import EXTENSIONS as DOCUMENT_EXTENSIONS
from pipeline.errors import FileTooLarge

AUDIO_SUFFIXES = (".ogg", ".oga", ".opus", ".mp3", ".wav", ".m4a", ".aac", ".flac", ".webm", ".mp4", ".mov")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def reply_format(mode: str) -> str:
    """Discord has no round video notes: that profile mode (the default) means a plain video here."""
    return "video" if mode == "video_note" else mode


def _suffix(attachment: discord.Attachment) -> str:
    name = attachment.filename.lower()
    return name[name.rfind(".") :] if "." in name else ""


def is_audio(attachment: discord.Attachment) -> bool:
    ctype = (attachment.content_type or "").lower()
    return (
        attachment.is_voice_message()
        or ctype.startswith(("audio/", "video/"))
        or (not ctype and _suffix(attachment) in AUDIO_SUFFIXES)
    )


def is_image(attachment: discord.Attachment) -> bool:
    ctype = (attachment.content_type or "").lower()
    return ctype.startswith("image/") or (not ctype and _suffix(attachment) in IMAGE_SUFFIXES)


def is_document(attachment: discord.Attachment) -> bool:
    return (
        _suffix(attachment) in DOCUMENT_EXTENSIONS and not is_audio(attachment) and not is_image(attachment)
    )


async def download(attachment: discord.Attachment, limit_mb: float) -> bytes:
    """The attachment's bytes; FileTooLarge (before downloading, when Discord says so) over the limit."""
    if attachment.size > limit_mb * 1e6:
        raise FileTooLarge(size_mb=attachment.size / 1e6, limit_mb=limit_mb)
    data = await attachment.read()
    if len(data) > limit_mb * 1e6:
        raise FileTooLarge(size_mb=len(data) / 1e6, limit_mb=limit_mb)
    return data
