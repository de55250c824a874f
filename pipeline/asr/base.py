"""The speech-recognition stage."""

from __future__ import annotations

from typing import Protocol

from pipeline.cancel import CancelToken
from pipeline.types import Audio, Transcript


class SpeechRecognizer(Protocol):
    """Turns a user's decoded speech (16 kHz mono) into text, its language and word timings."""

    def transcribe(
        self, audio: Audio, language: str | None = None, token: CancelToken | None = None
    ) -> Transcript:
        """Transcribe `audio`; `language` None means detect it. Raises EmptyTranscript.

        With a `token`, checks it as recognition goes, so a cancel or time limit stops it early."""
        ...
