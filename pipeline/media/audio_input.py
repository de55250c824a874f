"""Decoding whatever audio a user sends (OGG/Opus voice notes, mp3, m4a, wav, a video's sound track).

Everything goes through ffmpeg from a temporary file rather than a pipe: phone recordings (m4a/mp4)
often keep their index at the end of the file, which ffmpeg cannot seek to on a pipe.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.errors import AudioTooLong, EmptyAudio, FileTooLarge, UnreadableAudio
from pipeline.media.ffmpeg import ffmpeg_exe, run_ffmpeg
from pipeline.types import Audio

SILENCE_PEAK = 1e-3  # below this peak amplitude a recording counts as silent
_DURATION = re.compile(rb"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")


def decode_audio(
    data: bytes | Path,
    *,
    sample_rate: int = 16000,
    max_seconds: float | None = None,
    max_bytes: int | None = None,
) -> Audio:
    """Decode `data` (raw bytes or a file) to mono float32 at `sample_rate`.

    Raises FileTooLarge, UnreadableAudio (not audio, corrupt), EmptyAudio (no samples, or silence)
    or AudioTooLong (over `max_seconds`; only that much plus a little is ever decoded).
    """
    if isinstance(data, Path):
        size = data.stat().st_size if data.exists() else 0
        return _decode_file(data, size, sample_rate, max_seconds, max_bytes)
    with tempfile.NamedTemporaryFile(suffix=".media") as f:
        f.write(data)
        f.flush()
        return _decode_file(Path(f.name), len(data), sample_rate, max_seconds, max_bytes)


def _decode_file(
    path: Path, size: int, sample_rate: int, max_seconds: float | None, max_bytes: int | None
) -> Audio:
    if max_bytes is not None and size > max_bytes:
        raise FileTooLarge(size_mb=size / 1e6, limit_mb=max_bytes / 1e6)
    if size == 0:
        raise EmptyAudio("empty file")
    limit = [] if max_seconds is None else ["-t", f"{max_seconds + 0.5:.3f}"]
    try:
        pcm = run_ffmpeg(
            [
                "-i",
                str(path),
                *limit,
                "-map",
                "0:a:0",
                "-vn",
                "-ac",
                "1",
                "-ar",
                str(sample_rate),
                "-f",
                "f32le",
                "-acodec",
                "pcm_f32le",
                "pipe:1",
            ],
            timeout=60,
        )
    except subprocess.CalledProcessError as e:
        raise UnreadableAudio(
            f"ffmpeg could not decode audio: {e.stderr.decode(errors='replace')[-300:]}"
        ) from None
    samples = np.frombuffer(pcm, dtype=np.float32).copy()
    if samples.size == 0:
        raise EmptyAudio("no audio samples")
    duration = samples.size / sample_rate
    if max_seconds is not None and duration > max_seconds:
        raise AudioTooLong(seconds=max(duration, probe_duration(path) or 0.0), limit=max_seconds)
    if float(np.abs(samples).max()) < SILENCE_PEAK:
        raise EmptyAudio("silent recording")
    return Audio(samples=np.clip(samples, -1.0, 1.0), sample_rate=sample_rate)


def probe_duration(path: Path) -> float | None:
    """The container's stated duration in seconds, if ffmpeg reports one."""
    result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, timeout=30)
    m = _DURATION.search(result.stderr)
    if not m:
        return None
    h, mnt, s = m.groups()
    return int(h) * 3600 + int(mnt) * 60 + float(s)


def resample(audio: Audio, sample_rate: int) -> Audio:
    """Polyphase resampling (scipy), for joining speech from engines with different rates."""
    if audio.sample_rate == sample_rate:
        return audio
    from scipy.signal import resample_poly

    ratio = Fraction(sample_rate, audio.sample_rate).limit_denominator(1000)
    out = resample_poly(audio.samples, ratio.numerator, ratio.denominator)
    return Audio(out.astype(np.float32), sample_rate)
