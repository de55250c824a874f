"""SadTalker's audio front end: Wav2Lip's log-mel settings (wav2lip_audio.py) with the zero padding of
the librosa (>= 0.9) its authors pinned, the 16-frame mel window of each 25 fps video frame, and the
random blinks its expression net is conditioned on (shared FACTS.md, section 2.4).

Differences from Wav2Lip's windows: a frame's window starts at int(80·(i − 2)/25) mel frames (two video
frames early, truncated toward zero) and indices outside the spectrogram are clamped to its ends.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.render import wav2lip_audio as w2l

SAMPLE_RATE = w2l.SAMPLE_RATE
MODEL_FPS = 25  # SadTalker's coefficients are predicted at 25 frames per second
SAMPLES_PER_FRAME = SAMPLE_RATE // MODEL_FPS  # 640
WINDOW = w2l.WINDOW
BLINK = (0.5, 0.9, 1.0, 0.9, 0.5)


def mel_spectrogram(samples: np.ndarray) -> np.ndarray:
    """(80, 1 + len // 200) in [-4, 4]: Wav2Lip's mel with zero (not reflect) padding of the STFT."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError("audio contains NaN or infinity")
    x = np.concatenate([x[:1], x[1:] - w2l.PREEMPHASIS * x[:-1]])
    x = np.pad(x, w2l.N_FFT // 2)
    n = 1 + (len(x) - w2l.N_FFT) // w2l.HOP
    frames = np.lib.stride_tricks.sliding_window_view(x, w2l.N_FFT)[:: w2l.HOP][:n]
    magnitude = np.abs(np.fft.rfft(frames * w2l._window(), axis=1)).astype(np.float32)
    db = 20.0 * np.log10(np.maximum(w2l.mel_filters() @ magnitude.T, 1e-5)) - w2l.REF_LEVEL_DB
    scaled = 2 * w2l.MAX_ABS * (db - w2l.MIN_LEVEL_DB) / -w2l.MIN_LEVEL_DB - w2l.MAX_ABS
    return np.clip(scaled, -w2l.MAX_ABS, w2l.MAX_ABS).astype(np.float32)


def mel_windows(mel: np.ndarray, n_frames: int) -> np.ndarray:
    """(n_frames, 1, 80, 16): frame i gets mel frames int(80·(i−2)/25) .. +15, clamped to the ends."""
    out = np.empty((n_frames, 1, w2l.N_MELS, WINDOW), np.float32)
    last = mel.shape[1] - 1
    for i in range(n_frames):
        start = math.trunc(w2l.MEL_FPS * (i - 2) / MODEL_FPS)
        idx = np.clip(np.arange(start, start + WINDOW), 0, last)
        out[i, 0] = mel[:, idx]
    return out


def blinks(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """(n_frames, 1) eye-blink ratios: a 5-frame blink after every 10 to ~70 frames (none when short)."""
    ratio = np.zeros((n_frames, 1), np.float32)
    if n_frames <= 20:
        return ratio
    frame = 0
    lo, hi = min(10, n_frames), max(min(n_frames // 2, 70), min(10, n_frames) + 1)
    while True:
        start = frame + int(rng.integers(lo, hi))
        if start + len(BLINK) > n_frames - 1:
            return ratio
        ratio[start : start + len(BLINK), 0] = BLINK
        frame = start + len(BLINK)
