"""A user's settings: reply language, voice, reply mode, whether they set an avatar.

Keyed by platform + user, so it is the same in every chat the user talks in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from pipeline.types import VoiceSettings

MODES = ("video_note", "video", "voice", "text")


@dataclass(frozen=True)
class UserProfile:
    user: str
    language: str | None = None  # None = answer in the language of each message
    voice: VoiceSettings = field(default_factory=VoiceSettings)
    mode: str = "video_note"  # "video_note" | "video" | "voice" | "text"
    has_avatar: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.language not in (None, "en", "zh"):
            raise ValueError(f"language must be None, 'en' or 'zh', not {self.language!r}")
        if isinstance(self.voice, dict):  # from JSON
            object.__setattr__(self, "voice", VoiceSettings(**self.voice))

    @property
    def chosen_voice(self) -> VoiceSettings | None:
        """The voice the user set with /voice; None while they kept the default, so that the
        configured voice (`[tts]` voice, rate, volume, pitch) speaks for them."""
        return None if self.voice == VoiceSettings() else self.voice

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UserProfile:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_changes(self, **changes: Any) -> UserProfile:
        unknown = set(changes) - {f.name for f in fields(self)} | ({"user"} & set(changes))
        if unknown:
            raise ValueError(f"unknown or fixed profile fields: {sorted(unknown)}")
        return replace(self, **changes)
