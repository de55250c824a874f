"""Emphasis gestures: a small nod and a brow raise on the prominent syllables of a sentence.

Speakers beat time with the head and the brows on the words they stress; without it a talking head
looks like a puppet whose mouth alone is alive. Prominence is measured from the sentence's own audio
(a syllable clearly louder than the sentence's typical voiced level; a primary stress mark in the
phonemes counts extra), so it works for every TTS engine, with or without phoneme timings.

Continuity: the pipeline renders a reply sentence by sentence. Every gesture here is a smooth bump
that starts and ends at exactly 0 and lies wholly inside [0, duration] of its sentence's audio, so the
nod and brow controls are exactly 0 at every sentence boundary and the joins cannot jump. (Blinks and
head sway, which do run across the cut, are functions of absolute time: see motion.py.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.types import Speech

SYLLABLE_S = 0.12  # loudness window: about one syllable
VOICED_DB = -40.0  # frames louder than this (dBFS) are speech, for the sentence's typical level
PROMINENCE_DB = 2.5  # a syllable this much above the sentence's median voiced level is emphasised ...
FULL_PROMINENCE_DB = 8.0  # ... and this much above gives a full-strength gesture
STRESS_BONUS_DB = 2.0  # a primary-stressed vowel (IPA "ˈ") within STRESS_REACH_S of the peak
STRESS_REACH_S = 0.12
MIN_GAP_S = 0.9  # gestures at least this far apart: a nod on every syllable reads as a tic
SECONDS_PER_GESTURE = 1.4  # at most one gesture per this much voiced speech (and at least one)
MIN_STRENGTH = 0.35  # weakest gesture drawn (as a share of full strength)
NOD_S = 0.5  # nod length: the head dips and comes back, deepest a little after the peak
NOD_LAG_S = 0.04
BROW_S = 0.75  # brow raise length: up before the stressed syllable, held, then down
BROW_LEAD_S = 0.25  # the brows are up by the time the stressed syllable peaks
BROW_FROM = 0.5  # only gestures at least this strong raise the brows (nods are more frequent)


@dataclass(frozen=True)
class Gesture:
    """One emphasis beat: `time` of the stressed syllable's loudness peak (s), `strength` in (0, 1]."""

    time: float
    strength: float


def _syllable_db(speech: Speech, times: np.ndarray) -> np.ndarray:
    """Level (dBFS) of a SYLLABLE_S window centred at each speech-relative time."""
    sr = speech.audio.sample_rate
    win = max(16, round(SYLLABLE_S * sr))
    padded = np.pad(speech.audio.samples.astype(np.float32), (win, win))
    starts = np.clip(np.round(times * sr).astype(np.int64) - win // 2 + win, 0, len(padded) - win)
    seg = padded[starts[:, None] + np.arange(win)[None]].astype(np.float64)
    return 10 * np.log10(np.mean(seg**2, axis=1) + 1e-12)


def _stressed_times(speech: Speech) -> np.ndarray:
    """Centres of phonemes that carry a primary stress mark (engines that keep them: Piper)."""
    return np.array([(p.start + p.end) / 2 for p in speech.phonemes if "ˈ" in p.phoneme], dtype=np.float64)


def find_gestures(speech: Speech, step: float = 0.02) -> list[Gesture]:
    """The emphasis beats of one sentence, strongest first, at least MIN_GAP_S apart."""
    duration = speech.duration
    if duration <= 0 or speech.audio.samples.size == 0:
        return []
    times = np.arange(0.0, duration, step)
    db = _syllable_db(speech, times)
    voiced = db > VOICED_DB
    if voiced.sum() < 3:
        return []
    prominence = db - float(np.median(db[voiced]))
    stressed = _stressed_times(speech)
    if stressed.size:
        near = np.abs(times[:, None] - stressed[None]).min(1) < STRESS_REACH_S
        prominence = prominence + STRESS_BONUS_DB * near
    # Local maxima of the syllable level: the loudness peak of each syllable.
    peak = np.zeros_like(voiced)
    peak[1:-1] = (db[1:-1] >= db[:-2]) & (db[1:-1] > db[2:])
    candidates = np.flatnonzero(peak & voiced & (prominence > PROMINENCE_DB))
    budget = max(1, int(voiced.sum() * step / SECONDS_PER_GESTURE))
    chosen: list[Gesture] = []
    for i in sorted(candidates, key=lambda k: -prominence[k]):
        t = float(times[i])
        if len(chosen) >= budget:
            break
        if all(abs(t - g.time) >= MIN_GAP_S for g in chosen):
            s = (prominence[i] - PROMINENCE_DB) / (FULL_PROMINENCE_DB - PROMINENCE_DB)
            chosen.append(Gesture(t, float(np.clip(MIN_STRENGTH + (1 - MIN_STRENGTH) * s, 0, 1))))
    return chosen


def _bump(times: np.ndarray, start: float, length: float, hold: float = 0.0) -> np.ndarray:
    """A smooth 0 -> 1 -> 0 bump over [start, start + length], flat for the middle `hold` share."""
    u = (times - start) / length
    ramp = (1 - hold) / 2
    rise = np.clip(u / ramp, 0, 1)
    fall = np.clip((1 - u) / ramp, 0, 1)
    x = np.minimum(rise, fall)
    out = x * x * (3 - 2 * x)
    out[(u <= 0) | (u >= 1)] = 0.0
    return out


def _fit(centre: float, length: float, duration: float) -> float | None:
    """Start of a `length` window centred near `centre`, moved to lie inside [0, duration]."""
    if length >= duration:
        return None
    return float(np.clip(centre - length / 2, 0.0, duration - length))


def emphasis_controls(speech: Speech, times: np.ndarray) -> np.ndarray:
    """(len(times), 2): nod and brow raise in [0, 1] at speech-relative `times` (s).

    Exactly 0 outside every gesture, and so at the start and the end of the sentence's audio.
    """
    times = np.asarray(times, dtype=np.float64)
    out = np.zeros((times.size, 2), dtype=np.float64)
    if times.size == 0:
        return out
    duration = speech.duration
    for g in find_gestures(speech):
        start = _fit(g.time + NOD_LAG_S, NOD_S, duration)
        if start is not None:
            out[:, 0] = np.maximum(out[:, 0], g.strength * _bump(times, start, NOD_S))
        if g.strength >= BROW_FROM:
            start = _fit(g.time - BROW_LEAD_S + BROW_S / 2, BROW_S, duration)
            if start is not None:
                out[:, 1] = np.maximum(out[:, 1], g.strength * _bump(times, start, BROW_S, hold=0.4))
    return out
