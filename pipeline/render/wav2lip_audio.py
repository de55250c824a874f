"""Wav2Lip's audio front end: the normalised log-mel spectrogram its weights were trained on, and the
0.2 s mel window each video frame gets.

The settings are the authors' (hparams.py, audio.py of the released code, as recorded in the shared
FACTS.md): 16 kHz mono, pre-emphasis 0.97, STFT n_fft = win = 800 with a periodic Hann window and hop
200 (12.5 ms, 80 mel frames per second), centred with reflect padding (librosa 0.7, which the authors
pinned), magnitude (power 1), 80 Slaney-scale, area-normalised mel bands from 55 to 7600 Hz, then
20·log10(max(1e-5, ·)) − 20 dB, mapped from [−100, 0] dB onto [−4, 4] and clipped. Written with numpy
so no audio library is needed; a model trained on other features would lip-sync worse, silently, so
every constant here is checked by tests. Checked once against librosa 0.11 (stft with pad_mode
"reflect", filters.mel) on 2 s of a modulated tone with noise: largest difference 8e-6 on the [-4, 4]
scale, filter bank 2e-9.
"""

from __future__ import annotations

import functools

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
PREEMPHASIS = 0.97
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS = 4.0
MEL_FPS = SAMPLE_RATE / HOP  # 80 mel frames per second
WINDOW = 16  # mel frames per video frame: 0.2 s


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale: linear (3 bands per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


@functools.cache
def mel_filters() -> np.ndarray:
    """(80, 401) triangular filters on the STFT bins, each of unit area in Hz (Slaney normalisation)."""
    edges = mel_to_hz(np.linspace(hz_to_mel(FMIN), hz_to_mel(FMAX), N_MELS + 2))
    bins = np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lo) / (mid - lo)
    falling = (hi - bins[None]) / (hi - mid)
    tri = np.maximum(0.0, np.minimum(rising, falling))
    return (tri * (2.0 / (hi - lo))).astype(np.float32)


@functools.cache
def _window() -> np.ndarray:
    n = np.arange(N_FFT)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)).astype(np.float32)  # periodic Hann


def mel_spectrogram(samples: np.ndarray) -> np.ndarray:
    """(80, 1 + len(samples) // 200) float32 in [-4, 4], for 16 kHz mono samples."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError("audio contains NaN or infinity")
    x = np.concatenate([x[:1], x[1:] - PREEMPHASIS * x[:-1]])
    half = N_FFT // 2
    x = np.pad(x, half, mode="reflect" if len(x) > half else "constant")
    n_frames = 1 + (len(x) - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP][:n_frames]
    magnitude = np.abs(np.fft.rfft(frames * _window(), axis=1)).astype(np.float32)  # (T, 401)
    mel = mel_filters() @ magnitude.T
    db = 20.0 * np.log10(np.maximum(mel, 1e-5)) - REF_LEVEL_DB
    scaled = 2 * MAX_ABS * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS
    return np.clip(scaled, -MAX_ABS, MAX_ABS).astype(np.float32)


def mel_windows(mel: np.ndarray, *, fps: float, n_frames: int, first_frame: int = 0) -> np.ndarray:
    """(n_frames, 1, 80, 16): video frame i gets the 16 mel frames from int(i·80/fps), as the authors'
    inference cuts them; near the end, where 16 no longer fit, the last 16."""
    if mel.shape[1] < WINDOW:  # shorter than 0.2 s: pad with silence's floor
        mel = np.pad(mel, ((0, 0), (0, WINDOW - mel.shape[1])), constant_values=-MAX_ABS)
    out = np.empty((n_frames, 1, N_MELS, WINDOW), np.float32)
    last = mel.shape[1] - WINDOW
    for j in range(n_frames):
        start = int((first_frame + j) * (MEL_FPS / fps))  # the multiplier first, as upstream rounds
        start = min(start, last)
        out[j, 0] = mel[:, start : start + WINDOW]
    return out
