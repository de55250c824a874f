"""Helpers shared by the bot adapter tests (Telegram, Discord): predictable chat models and media checks."""

from __future__ import annotations

import io
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from PIL import Image, ImageOps

from bots.jobs import JobStore
from pipeline.llm.base import ChatMessage
from pipeline.types import Transcript
from tests.helpers import Mp4Info, probe_mp4


class RuleChat:
    """A predictable chat model: recalls "my name is X" from the conversation, else a fixed line.

    It records every prompt, so tests can see what context (memory, documents) reached the model.
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.prompts: list[list[ChatMessage]] = []

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> Iterator[str]:
        self.prompts.append(list(messages))
        time.sleep(self.delay_s)
        names = [
            m for msg in messages if msg.role == "user" for m in re.findall(r"my name is (\w+)", msg.content)
        ]
        if "what is my name" in messages[-1].content.lower():
            yield f"Your name is {names[-1]}." if names else "I don't know your name yet."
        else:
            yield "Nice to hear from you. Let me think about that."


class FixedRecognizer:
    """Stands in for Whisper in the hermetic tier: every (decodable) recording says `text`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.calls = 0

    def transcribe(self, audio, language=None, token=None) -> Transcript:
        self.calls += 1
        return Transcript(self.text, "en")


def portrait(mirror: bool = False) -> bytes:
    """The default avatar photo as JPEG; mirrored and cropped, a visibly different face picture."""
    from pipeline.config import PROJECT_ROOT

    img = Image.open(PROJECT_ROOT / "assets" / "avatar.jpg")
    if mirror:
        img = ImageOps.mirror(img).crop((20, 0, 512, 492))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def probe_mp4_bytes(data: bytes) -> Mp4Info:
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(data)
        f.flush()
        return probe_mp4(Path(f.name))


class AnswerRecorder:
    """Wraps a real chat model and keeps what it said."""

    def __init__(self, model) -> None:
        self.model = model
        self.answers: list[str] = []
        self.prompts: list[list[ChatMessage]] = []

    def stream(self, messages, *, max_tokens, temperature):
        self.prompts.append(list(messages))
        for piece in self.model.stream(messages, max_tokens=max_tokens, temperature=temperature):
            self.answers.append(piece)
            yield piece


class SlowJobStore(JobStore):
    """A job store whose crash-recovery query is slow, as on a loaded machine."""

    def unfinished(self, platform: str):
        time.sleep(1.5)
        return super().unfinished(platform)
