"""A reply as a message: what to answer and how (`ReplyJob`), and what came of it (`ReplyOutcome`).

Both are plain data that survive a JSON round trip, so the same job runs on the service's own worker
or on a machine across the network. Media never travels inside them: the question's audio, the
avatar photo and the rendered answer are blob references (bots/core/blobs.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pipeline.types import VoiceSettings

Kind = Literal["video", "voice", "text"]
REPLY_MODES = ("video_note", "video", "voice", "text")


@dataclass(frozen=True)
class OutputSpec:
    """What the answer must be, decided once when the job is admitted and kept with it.

    `round`: the adapter sends it as the platform's round video (Telegram's video note) when it came
    out square and at most `max_seconds` long; otherwise as an ordinary video. `max_mb`: the
    platform's largest upload. How the pipeline makes it: `square` frames (the face crop, whatever
    the renderer frames) and the answer cut at the last sentence within `longest_s`, for a caller
    with no fallback to an ordinary video (the command line's file); a bot leaves both unset, so a
    long answer is sent whole, as a video.
    """

    kind: Kind = "video"
    round: bool = False
    max_seconds: float | None = None
    max_mb: float = 50.0
    audio_codec: str = "aac"
    aspect: Literal["square", "photo"] = "square"
    square: bool = False
    longest_s: float | None = None

    @property
    def container(self) -> str:
        return {"video": "mp4", "voice": "ogg", "text": ""}[self.kind]


def decide_output(mode: str, *, max_upload_mb: float, round_video_s: float | None, frame: str) -> OutputSpec:
    """The output for a user's reply mode on a platform.

    A round video needs square frames: with `render.frame = "photo"` it becomes an ordinary video.
    `round_video_s` is None on platforms without round videos.
    """
    aspect: Literal["square", "photo"] = "photo" if frame == "photo" else "square"
    if mode == "text":
        return OutputSpec(kind="text", max_mb=max_upload_mb, audio_codec="")
    if mode == "voice":
        return OutputSpec(kind="voice", max_mb=max_upload_mb, audio_codec="opus")
    round_ok = mode == "video_note" and round_video_s is not None and aspect == "square"
    return OutputSpec(
        kind="video",
        round=round_ok,
        max_seconds=round_video_s if round_ok else None,
        max_mb=max_upload_mb,
        aspect=aspect,
    )


@dataclass(frozen=True)
class ReplyJob:
    """One reply to make. `say` set: speak exactly that text (a greeting) instead of answering.

    `audio` and `avatar` are blob refs; no avatar = the default one. `deadline` is a Unix time after
    which the answer is no use any more (the user was told it took too long).
    """

    id: str
    user: str
    conversation: str
    output: OutputSpec
    text: str | None = None
    audio: str | None = None
    avatar: str | None = None
    voice: VoiceSettings | None = None
    say: str | None = None
    subtitles: bool | None = None
    deadline: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str) -> ReplyJob:
        raw: dict[str, Any] = json.loads(data)
        raw["output"] = OutputSpec(**raw["output"])
        if raw.get("voice") is not None:
            raw["voice"] = VoiceSettings(**raw["voice"])
        return cls(**raw)


@dataclass(frozen=True)
class ReplyOutcome:
    """What a finished job made: `media` is a blob ref (None for a text answer)."""

    job_id: str
    media: str | None
    kind: Kind
    question: str
    answer: str
    language: str
    duration: float
    transcript: str | None = None
    transcript_language: str | None = None
    truncated: bool = False
    truncation: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str) -> ReplyOutcome:
        return cls(**json.loads(data))
