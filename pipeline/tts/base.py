"""The speech-synthesis stage."""

from __future__ import annotations

from typing import Protocol

from pipeline.types import Speech, VoiceSettings


class SpeechSynthesizer(Protocol):
    """Speaks one piece of text (a sentence, usually) in the given language and voice."""

    name: str

    def supports(self, language: str) -> bool:
        """Whether this engine can speak `language` ("en", "zh", ...)."""
        ...

    def synthesize(self, text: str, language: str, voice: VoiceSettings) -> Speech:
        """Audio for `text`, with word or phoneme timings when the engine gives them."""
        ...
