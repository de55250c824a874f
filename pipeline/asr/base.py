"""The speech-recognition stage."""

from __future__ import annotations

from typing import Protocol

from pipeline.types import Audio, Transcript


class SpeechRecognizer(Protocol):
    """Turns a user's decoded speech (16 kHz mono) into text, its language and word timings."""

    def transcribe(self, audio: Audio, language: str | None = None) -> Transcript:
        """Transcribe `audio`; `language` None means detect it. Raises EmptyTranscript."""
        ...
