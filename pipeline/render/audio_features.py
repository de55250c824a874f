"""Mouth controls from the audio alone: loudness opens the jaw, spectral balance spreads or rounds.

This is the fallback when the TTS engine gives no phonemes (edge-tts gives only words), and the
loudness curve also scales the opening when phonemes exist.
"""

from __future__ import annotations

import numpy as np

from pipeline.types import Audio

WINDOW_S = 0.08  # analysis window (two frames at 25 fps): long enough for a stable spectrum
SILENCE_DB = -50.0  # frames quieter than this (dBFS) are silence, whatever the rest of the speech
DYNAMIC_RANGE_DB = 30.0  # levels this far below the speech's loud frames map to a closed mouth
LEVEL_CURVE = 0.8  # < 1: the mouth opens quickly at low levels, as in speech
LOW_BAND = (250.0, 1000.0)  # Hz: first-formant region, strong in open and rounded vowels
HIGH_BAND = (1200.0, 3500.0)  # Hz: second-formant region, strong in spread vowels (i, e)
MIN_BALANCE_SD = 0.5  # log-ratio spread below which the timbre counts as steady (no spread/round)
ATTACK_S, RELEASE_S = 0.02, 0.04  # jaw inertia time constants: opens fast, closes a little slower
ENVELOPE_S = 0.04  # loudness window: one frame at 25 fps, so the jaw follows syllables, not phrases
ENVELOPE_AHEAD_S = 0.02  # centre of the loudness window after the frame's start (mid-frame)
ENVELOPE_CURVE = 0.85  # opening ~ (rms / loud rms) ** this: close to linear in amplitude
ACTIVITY_RANGE_DB = 10.0  # voice activity ramps from 0 at SILENCE_DB to 1 this far above it


def _frames(samples: np.ndarray, sample_rate: int, times: np.ndarray) -> np.ndarray:
    """(len(times), win) Hann-windowed slices centred at `times` (zero outside the audio)."""
    win = max(16, round(WINDOW_S * sample_rate))
    padded = np.pad(samples.astype(np.float32), (win, win))
    starts = np.round(times * sample_rate).astype(np.int64) - win // 2 + win
    starts = np.clip(starts, 0, len(padded) - win)
    idx = starts[:, None] + np.arange(win)[None]
    return padded[idx] * np.hanning(win).astype(np.float32)[None]


def _smooth(level: np.ndarray, step: float) -> np.ndarray:
    """Asymmetric one-pole smoothing (attack faster than release), like a jaw with some inertia."""
    attack, release = 1 - np.exp(-step / ATTACK_S), 1 - np.exp(-step / RELEASE_S)
    out = np.empty_like(level)
    v = 0.0
    for i, x in enumerate(level):
        v += (attack if x > v else release) * (x - v)
        out[i] = v
    return out


def loudness_envelope(audio: Audio, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(loud, active) at speech-relative frame-start `times`, both in [0, 1].

    `loud` is the short-window RMS relative to this speech's loud frames, nearly linear in amplitude:
    jaw opening tracks the syllable envelope that a viewer hears (and that lip-sync is judged
    against). `active` is a voice-activity gate that is exactly 0 in silence, so the mouth closes in
    pauses whatever the phoneme spans say.
    """
    times = np.asarray(times, dtype=np.float64)
    zeros = np.zeros_like(times)
    if times.size == 0 or audio.samples.size == 0:
        return zeros, zeros.copy()
    sr = audio.sample_rate
    win = max(16, round(ENVELOPE_S * sr))
    padded = np.pad(audio.samples.astype(np.float32), (win, win))
    starts = np.clip(
        np.round((times + ENVELOPE_AHEAD_S) * sr).astype(np.int64) - win // 2 + win, 0, len(padded) - win
    )
    seg = padded[starts[:, None] + np.arange(win)[None]].astype(np.float64)
    rms = np.sqrt(np.mean(seg**2, axis=1) + 1e-12)
    db = 20 * np.log10(rms)
    loud = db > SILENCE_DB
    if not loud.any():
        return zeros, zeros.copy()
    peak = float(np.percentile(rms[loud], 95))
    level = np.clip(rms / peak, 0, 1) ** ENVELOPE_CURVE
    step = float(times[1] - times[0]) if times.size > 1 else 0.04
    active = np.clip((db - SILENCE_DB) / ACTIVITY_RANGE_DB, 0, 1)
    return _smooth(level, max(step, 1e-3)) * (active > 0), active


def audio_controls(audio: Audio, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(level, wide) at speech-relative `times` (s): level in [0, 1], wide in [-1, 1] (< 0 = rounded).

    Level is relative to this speech's own loud frames, so a quiet TTS voice still moves the mouth,
    but anything under SILENCE_DB stays closed.
    """
    times = np.asarray(times, dtype=np.float64)
    zeros = np.zeros_like(times)
    if times.size == 0 or audio.samples.size == 0:
        return zeros, zeros.copy()
    seg = _frames(audio.samples, audio.sample_rate, times)
    rms = np.sqrt(np.mean(seg.astype(np.float64) ** 2, axis=1) + 1e-12)
    db = 20 * np.log10(rms)
    loud = db > SILENCE_DB
    if not loud.any():
        return zeros, zeros.copy()
    hi = float(np.percentile(db[loud], 95))
    lo = max(hi - DYNAMIC_RANGE_DB, SILENCE_DB)
    level = np.clip((db - lo) / max(hi - lo, 1e-6), 0, 1) ** LEVEL_CURVE
    level[~loud] = 0.0
    step = float(times[1] - times[0]) if times.size > 1 else 0.04
    level = _smooth(level, max(step, 1e-3))

    spectrum = np.abs(np.fft.rfft(seg, axis=1)) ** 2
    freqs = np.fft.rfftfreq(seg.shape[1], 1 / audio.sample_rate)
    low = spectrum[:, (freqs > LOW_BAND[0]) & (freqs < LOW_BAND[1])].sum(1)
    high = spectrum[:, (freqs > HIGH_BAND[0]) & (freqs < HIGH_BAND[1])].sum(1)
    balance = np.log((high + 1e-9) / (low + 1e-9))
    voiced = level > 0.15
    wide = np.zeros_like(times)
    if voiced.sum() >= 3:
        mu, sd = balance[voiced].mean(), max(float(balance[voiced].std()), MIN_BALANCE_SD)
        wide = np.clip((balance - mu) / (2 * sd), -1, 1) * (level > 0.1)
        wide = np.convolve(wide, [0.25, 0.5, 0.25], mode="same")
    return level, wide
