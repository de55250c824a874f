"""Mouth shapes (visemes) from IPA phonemes, with coarticulation, and the per-frame mouth controls.

Each phoneme has a target (jaw opening, lip spread/rounding) and a dominance; the mouth at time t is
the dominance- and proximity-weighted mean of the nearby targets (after Cohen & Massaro). Strong
dominance lets bilabials (p, b, m) close the lips even between two open vowels, while weak ones
(h, k) take their shape from their neighbours, as they do in real speech.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np

from pipeline.render.audio_features import audio_controls, loudness_envelope
from pipeline.types import PhonemeTiming, Speech

LEAD_S = 0.02  # lips lead the sound: shapes are shown this much before the phoneme's centre
MIN_SPREAD_S = 0.035  # a phoneme's influence reaches at least this far (s) from its centre
# jaw = active x (JAW_FLOOR + (1 - JAW_FLOOR) x loud) x (1 - SHAPE_WEIGHT + SHAPE_WEIGHT x open)
#       x clip(open / CLOSURE_OPEN, 0, 1)
# Loudness carries most of the opening (it is what the viewer hears, syllable by syllable); the
# viseme scales it (an "a" opens more than an "i") and closes the lips outright for p/b/m/f/v.
JAW_FLOOR = 0.3  # any voiced frame opens at least this much: smaller openings do not read as open
SHAPE_WEIGHT = 0.3
CLOSURE_OPEN = 0.18  # visemes whose opening is below this close the lips in proportion
WIDE_GAIN = 0.8  # scale of the spread/round control fed to the rig


@dataclass(frozen=True)
class Viseme:
    open: float  # jaw opening, 0 closed .. 1 wide open
    wide: float  # lip spread, -1 rounded/protruded .. +1 spread
    dominance: float  # how strongly the shape resists its neighbours


REST = Viseme(0.0, 0.0, 0.8)
UNKNOWN = Viseme(0.35, 0.2, 0.5)

# Vowels (English and Mandarin pinyin-ish IPA) by height and rounding; glides go with their vowel.
_GROUPS: dict[Viseme, tuple[str, ...]] = {
    Viseme(1.0, 0.2, 1.0): ("a", "ɑ", "ɐ", "æ", "ʌ", "ɶ"),
    Viseme(0.6, 0.35, 1.0): ("e", "ɛ", "ə", "ɜ", "ɚ", "ɝ", "ɤ", "ɘ", "ɞ"),
    Viseme(0.3, 0.9, 1.0): ("i", "ɪ", "ɨ", "ɯ", "j", "ɿ", "ʅ"),
    Viseme(0.65, -0.8, 1.0): ("o", "ɔ", "ɒ", "ø", "œ", "ɵ"),
    Viseme(0.25, -1.0, 1.0): ("u", "ʊ", "y", "ʉ", "ɥ", "w", "ʏ"),
    # Consonants.
    Viseme(0.0, 0.0, 3.0): ("p", "b", "m", "ɸ", "β"),  # lips pressed together
    Viseme(0.1, 0.15, 2.5): ("f", "v", "ɱ"),  # lower lip on the upper teeth
    Viseme(0.2, 0.2, 0.8): ("θ", "ð"),
    Viseme(0.22, 0.35, 0.6): ("t", "d", "n", "l", "s", "z", "ɾ", "ɬ", "ts", "dz", "ɫ"),
    Viseme(0.22, -0.5, 1.2): ("ʃ", "ʒ", "tʃ", "dʒ", "ʂ", "ʐ", "ʈʂ", "ɖʐ"),  # lips protrude
    Viseme(0.22, 0.3, 0.8): ("ɕ", "ʑ", "tɕ", "dʑ"),  # Mandarin x/j/q: spread, before i/ü
    Viseme(0.25, -0.5, 0.9): ("ɹ", "r", "ʁ", "ɻ", "ʀ"),
    Viseme(0.35, 0.1, 0.3): ("k", "g", "ɡ", "ŋ", "x", "h", "ɣ", "ʔ", "χ", "ɦ", "c", "ɟ", "q"),
}
VISEMES: dict[str, Viseme] = {sym: v for v, syms in _GROUPS.items() for sym in syms}
_LONGEST = max(len(s) for s in VISEMES)

# Marks that change nothing visible: stress, length, tone letters/digits, aspiration, palatalisation.
_IGNORED = set("ˈˌːˑ˥˦˧˨˩ʰʲʷˠˤ˞‿-0123456789'`,.")


def _clean(phoneme: str) -> str:
    """Drop stress, length, tone and combining marks: 'ˈaː' -> 'a', 'tʂʰ' -> 'tʂ', 'i˧˥' -> 'i'."""
    decomposed = unicodedata.normalize("NFD", phoneme.strip())
    return "".join(c for c in decomposed if c not in _IGNORED and not unicodedata.combining(c))


def visemes_of(phoneme: str) -> list[Viseme]:
    """The shapes one phoneme string passes through (diphthongs like 'aɪ' give two), [] for a pause."""
    s = _clean(phoneme)
    if not s or not any(c.isalpha() for c in s):
        return []
    out: list[Viseme] = []
    i = 0
    while i < len(s):
        for n in range(min(_LONGEST, len(s) - i), 0, -1):
            v = VISEMES.get(s[i : i + n])
            if v is not None:
                out.append(v)
                i += n
                break
        else:
            if s[i].isalpha():
                out.append(UNKNOWN)
            i += 1
    # An affricate or a consonant cluster mid-string is one articulation; keep at most 3 shapes.
    return out[:3]


def _keyframes(phonemes: tuple[PhonemeTiming, ...], duration: float) -> list[tuple[float, float, Viseme]]:
    """(centre, spread, viseme) for every shape, with REST filling pauses and the edges."""
    keys: list[tuple[float, float, Viseme]] = []
    prev_end = 0.0
    for ph in sorted(phonemes, key=lambda p: p.start):
        start, end = ph.start, max(ph.end, ph.start)
        if start - prev_end > 2 * MIN_SPREAD_S:  # a gap: the mouth rests
            keys.append(((prev_end + start) / 2, (start - prev_end) / 2, REST))
        shapes = visemes_of(ph.phoneme) or [REST]
        span = (end - start) / len(shapes)
        for k, v in enumerate(shapes):
            keys.append((start + (k + 0.5) * span, max(span / 2, MIN_SPREAD_S), v))
        prev_end = max(prev_end, end)
    tail = max(duration, prev_end) + 0.5
    keys.append(((prev_end + tail) / 2, max((tail - prev_end) / 2, MIN_SPREAD_S), REST))
    keys.insert(0, (-0.25, 0.25, REST))
    return keys


def phoneme_targets(phonemes: tuple[PhonemeTiming, ...], duration: float, times: np.ndarray) -> np.ndarray:
    """(len(times), 2) coarticulated (open, wide) at speech-relative `times`."""
    keys = _keyframes(phonemes, duration)
    centres = np.array([c for c, _, _ in keys]) - LEAD_S
    spreads = np.array([s for _, s, _ in keys])
    dominance = np.array([v.dominance for _, _, v in keys])
    targets = np.array([(v.open, v.wide) for _, _, v in keys])
    z = (np.asarray(times)[:, None] - centres[None]) / spreads[None]
    w = dominance[None] * np.exp(-0.5 * z * z) + 1e-12
    w[:, 0] += 1e-9  # far from everything the weights underflow: fall back to the leading REST
    return (w @ targets) / w.sum(1, keepdims=True)


def mouth_controls(speech: Speech, times: np.ndarray) -> np.ndarray:
    """(len(times), 2) rig weights (jaw, wide) at speech-relative `times` in seconds.

    The opening follows the loudness envelope (see the formula above); with phonemes the viseme
    table shapes it and sets spread/rounding, without them the spectrum does.
    """
    times = np.asarray(times, dtype=np.float64)
    loud, active = loudness_envelope(speech.audio, times)
    jaw = active * (JAW_FLOOR + (1 - JAW_FLOOR) * loud)
    if speech.phonemes:
        targets = phoneme_targets(speech.phonemes, speech.duration, times)
        shape = np.clip(targets[:, 0], 0, 1)
        jaw = jaw * (1 - SHAPE_WEIGHT + SHAPE_WEIGHT * shape) * np.clip(shape / CLOSURE_OPEN, 0, 1)
        wide = targets[:, 1]
    else:
        _, wide = audio_controls(speech.audio, times + LEAD_S)
    return np.stack([np.clip(jaw, 0, 1), WIDE_GAIN * np.clip(wide, -1, 1)], 1)
