"""Idle motion (blinks, head sway) as pure functions of absolute clip time and a seed.

The pipeline renders a reply sentence by sentence; because nothing here depends on where a sentence
starts, a blink or a head movement continues seamlessly across the cut, and the same seed always
gives the same video.
"""

from __future__ import annotations

import math

import numpy as np

# Blinks: first one after FIRST_BLINK seconds, then every BLINK_GAP seconds (uniform ranges).
FIRST_BLINK = (0.5, 2.0)
BLINK_GAP = (2.0, 5.0)
BLINK_CLOSE = 0.08  # seconds for the lid to come down
BLINK_HOLD = 0.06  # seconds fully closed: longer than a frame at 25 fps, so a frame catches it
BLINK_OPEN = 0.16  # seconds for the lid to go back up (slower than closing, as in real blinks)

# Head sway: a few slow sinusoids per axis; amplitudes are the peak of their sum.
SWAY_FREQ_HZ = (0.1, 0.6)
SWAY_TERMS = 3
SWAY_ROTATION = math.radians(1.8)
SWAY_SHIFT_X = 0.012  # fraction of the frame side
SWAY_SHIFT_Y = 0.008

_BLINK_STREAM, _SWAY_STREAM = 1, 2  # independent random streams from one seed


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def blink_onsets(seed: int, until: float) -> np.ndarray:
    """Start times of all blinks in [0, until]; a prefix of one infinite seeded sequence."""
    rng = np.random.default_rng([seed, _BLINK_STREAM])
    onsets = []
    t = rng.uniform(*FIRST_BLINK)
    while t <= until:
        onsets.append(t)
        t += rng.uniform(*BLINK_GAP)
    return np.array(onsets, dtype=np.float64)


def blink_curve(times: np.ndarray, seed: int) -> np.ndarray:
    """Eyelid closure (0 open .. 1 closed) at absolute `times` in seconds."""
    times = np.asarray(times, dtype=np.float64)
    out = np.zeros_like(times)
    if times.size == 0:
        return out
    duration = BLINK_CLOSE + BLINK_HOLD + BLINK_OPEN
    for onset in blink_onsets(seed, float(times.max())):
        dt = times - onset
        closing = _smoothstep(dt / BLINK_CLOSE)
        opening = 1 - _smoothstep((dt - BLINK_CLOSE - BLINK_HOLD) / BLINK_OPEN)
        lid = np.where(dt < BLINK_CLOSE, closing, opening)
        lid[(dt < 0) | (dt > duration)] = 0.0
        out = np.maximum(out, lid)
    return out


def _sway_axis(times: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    freqs = rng.uniform(*SWAY_FREQ_HZ, SWAY_TERMS)
    phases = rng.uniform(0, 2 * math.pi, SWAY_TERMS)
    gains = 1.0 / np.arange(1, SWAY_TERMS + 1)  # slower-looking: later terms are weaker
    waves = np.sin(2 * math.pi * freqs[:, None] * times[None] + phases[:, None])
    return amplitude * (gains[:, None] * waves).sum(0) / gains.sum()


def head_sway(times: np.ndarray, seed: int) -> np.ndarray:
    """(len(times), 3): rotation in radians, x and y shift as fractions of the frame side."""
    times = np.asarray(times, dtype=np.float64)
    rng = np.random.default_rng([seed, _SWAY_STREAM])
    return np.stack(
        [
            _sway_axis(times, rng, SWAY_ROTATION),
            _sway_axis(times, rng, SWAY_SHIFT_X),
            _sway_axis(times, rng, SWAY_SHIFT_Y),
        ],
        1,
    )
