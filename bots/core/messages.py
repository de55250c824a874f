"""What an adapter hands the application core, and what it declares about its platform.

An adapter's whole job is to turn a platform update into an `IncomingMessage` and to deliver through
a `ReplySink`. Everything between (durable job, admission, texts, errors, resume) is the core's.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bots.core.reply_job import OutputSpec, ReplyOutcome


@dataclass(frozen=True)
class Document:
    name: str
    data: bytes


@dataclass(frozen=True)
class IncomingMessage:
    """One user message, platform-neutral.

    `platform`, `chat` and `message_id` identify it (a redelivered update is recognised by them);
    `user` and `conversation` are memory keys (memory/keys.py); `locale` is the platform's language
    code for the user, when it has one. Exactly one kind of content is set.
    """

    platform: str
    chat: str
    message_id: str
    user: str
    conversation: str
    text: str | None = None
    audio: bytes | None = None
    photo: bytes | None = None
    document: Document | None = None
    locale: str | None = None


@dataclass(frozen=True)
class RoundVideo:
    """A platform's round video message (Telegram's video note): square frames, a length cap."""

    max_seconds: float = 60.0


@dataclass(frozen=True)
class Capabilities:
    """What a platform can carry; the core decides each reply's output spec from it."""

    max_upload_mb: float
    text_limit: int
    round_video: RoundVideo | None = None
    voice_codec: str = "opus"  # the codec a voice message must have


class ReplySink(Protocol):
    """Where one message's answers go: the chat it came from, as a reply to it when possible."""

    capabilities: Capabilities

    async def send_text(self, text: str) -> None: ...

    async def send_media(self, outcome: ReplyOutcome, media: Path, spec: OutputSpec, lang: str) -> None:
        """Send the rendered answer (`media` is a local file); `spec` is what was asked for and
        `lang` the user's language, for any line the platform's limits make necessary."""

    def working(self, spec: OutputSpec, lang: str) -> AbstractAsyncContextManager[None]:
        """Shown while the reply is made ("recording a video…", "typing…")."""


class NoWorkingIndicator:
    """For sinks without a "working" display."""

    def working(self, spec: OutputSpec, lang: str) -> AbstractAsyncContextManager[None]:
        return nullcontext()
