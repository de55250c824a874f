"""The default voice: edge-tts when it answers, else an offline voice for the reply's language.

A circuit breaker keeps offline machines fast: after edge-tts fails, it is not tried again for
`cooldown_s`, so a reply of ten sentences pays for one failed connection, not ten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from pipeline.tts.base import SpeechSynthesizer
from pipeline.tts.edge import EdgeSynthesizer, EdgeUnavailable
from pipeline.types import Speech, VoiceSettings

log = logging.getLogger(__name__)


class AutoSynthesizer:
    """Edge first (unless it failed within `cooldown_s`), then `offline_by_language`, then `fallback`."""

    name = "auto"

    def __init__(
        self,
        edge: EdgeSynthesizer | None,
        offline_by_language: Mapping[str, SpeechSynthesizer],
        fallback: SpeechSynthesizer,
        cooldown_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.edge = edge
        self.offline_by_language = dict(offline_by_language)
        self.fallback = fallback
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._edge_failed_at: float | None = None
        self._last_engine = ""

    def supports(self, language: str) -> bool:
        return (
            (self.edge is not None and self.edge.supports(language))
            or language in self.offline_by_language
            or self.fallback.supports(language)
        )

    def offline_for(self, language: str) -> SpeechSynthesizer:
        return self.offline_by_language.get(language, self.fallback)

    def edge_available(self) -> bool:
        """False while the breaker is open (edge failed less than `cooldown_s` ago)."""
        with self._lock:
            failed = self._edge_failed_at
        return self.edge is not None and (failed is None or self._clock() - failed >= self.cooldown_s)

    def synthesize(self, text: str, language: str, voice: VoiceSettings) -> Speech:
        if self.edge is not None and self.edge_available() and self.edge.supports(language):
            try:
                speech = self.edge.synthesize(text, language, voice)
            except EdgeUnavailable as e:
                with self._lock:
                    self._edge_failed_at = self._clock()
                log.info("edge-tts unavailable, using offline voices for %.0f s", self.cooldown_s)
                log.debug("edge-tts failure: %s", e)
            else:
                with self._lock:
                    self._edge_failed_at = None
                self._note(speech.engine)
                return speech
        speech = self.offline_for(language).synthesize(text, language, voice)
        self._note(speech.engine)
        return speech

    def _note(self, engine: str) -> None:
        """Log the engine at info when it changes, not for every sentence."""
        with self._lock:
            changed, self._last_engine = engine != self._last_engine, engine
        if changed:
            log.info("speaking with %s", engine)
