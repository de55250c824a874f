"""Values that flow between the pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class WordTiming:
    """A word (or a CJK character group) and when it is spoken, in seconds from the start."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class PhonemeTiming:
    """One phoneme in IPA and its time span, in seconds from the start of its audio."""

    phoneme: str
    start: float
    end: float


@dataclass(frozen=True)
class Audio:
    """Mono float32 PCM in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    words: tuple[WordTiming, ...] = ()
    audio_duration: float = 0.0


@dataclass(frozen=True)
class VoiceSettings:
    """How the reply should sound; the same knobs as edge-tts (and the seed's EdgeTTS class).

    `voice` names an engine voice (edge-tts ShortName, Piper model name or espeak-ng voice); empty
    means the engine's default for the reply's language. `rate` and `pitch` are offsets (percent and
    Hz, 0 = unchanged); `volume` is 0-100 (100 = unchanged).
    """

    voice: str = ""
    rate: int = 0
    volume: int = 100
    pitch: int = 0


@dataclass(frozen=True)
class Speech:
    """Synthesised speech for one piece of text, with whatever timings the engine gave."""

    text: str
    language: str
    audio: Audio
    words: tuple[WordTiming, ...] = ()
    phonemes: tuple[PhonemeTiming, ...] = ()
    engine: str = ""

    @property
    def duration(self) -> float:
        return self.audio.duration


@dataclass
class StageTimings:
    """Seconds spent per stage for one reply; stages that run per sentence are summed."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}
