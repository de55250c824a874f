"""Encoding the reply: frames stream into H.264 while they are rendered; AAC audio is muxed at the end.

Frames are never all held in memory: each batch goes straight into ffmpeg's stdin. The audio of the
whole reply is short (seconds of PCM), so it is collected and muxed once the last frame is in, which
keeps the sentence-by-sentence pipeline simple and gives one continuous AAC track without the gaps
that joining per-sentence AAC segments leaves.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
import wave
from pathlib import Path
from types import TracebackType

import numpy as np

from pipeline.media.ffmpeg import ffmpeg_exe, run_ffmpeg
from pipeline.media.subtitles import SubtitleBurner
from pipeline.types import Audio

log = logging.getLogger(__name__)


class VideoWriter:
    """Writes one mp4: H.264 (yuv420p, main profile) + AAC, with +faststart for instant playback.

    Frames are `width` x `height` (`height` defaults to `width`: square frames);
    both must be even, because yuv420p halves the colour planes.
    """

    def __init__(
        self,
        path: Path,
        width: int,
        fps: int,
        *,
        height: int | None = None,
        crf: int = 23,
        preset: str = "veryfast",
        audio_bitrate_k: int = 64,
        subtitles: SubtitleBurner | None = None,
    ) -> None:
        height = width if height is None else height
        if width < 2 or height < 2 or width % 2 or height % 2:
            raise ValueError(f"frame size must be even for yuv420p, got {width}x{height}")
        self.path = path
        self.width, self.height = width, height
        self.fps = fps
        self.audio_bitrate_k = audio_bitrate_k
        self.subtitles = subtitles
        self.frames_written = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="talktwin-enc-")
        self._video_path = Path(self._tmp.name) / "video.mp4"
        cmd = [
            ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{width}x{height}",
            "-r",
            str(fps),
            "-i",
            "pipe:0",
            "-c:v",
            "libx264",
            "-preset",
            preset,
            "-crf",
            str(crf),
            "-pix_fmt",
            "yuv420p",
            "-profile:v",
            "main",
            "-threads",
            "2",
            str(self._video_path),
        ]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, frames: np.ndarray) -> None:
        """Append frames, uint8 (batch, height, width, 3) RGB."""
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(
                f"expected uint8 frames of shape (B, {self.height}, {self.width}, 3), got {frames.shape}"
            )
        if self.subtitles is not None:
            frames = self.subtitles.burn(frames, first_frame=self.frames_written, fps=self.fps)
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        except BrokenPipeError:
            raise RuntimeError(f"video encoder stopped: {self._encoder_error()}") from None
        self.frames_written += len(frames)

    def finish(self, audio: Audio) -> Path:
        """Close the video stream, mux `audio` as AAC, and return the mp4's path."""
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        if self._proc.wait() != 0:
            raise RuntimeError(f"video encoder failed: {self._encoder_error()}")
        wav_path = Path(self._tmp.name) / "audio.wav"
        write_wav(wav_path, audio)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        run_ffmpeg(
            [
                "-y",
                "-i",
                str(self._video_path),
                "-i",
                str(wav_path),
                "-map",
                "0:v:0",
                "-map",
                "1:a:0",
                "-c:v",
                "copy",
                "-c:a",
                "aac",
                "-b:a",
                f"{self.audio_bitrate_k}k",
                "-movflags",
                "+faststart",
                str(self.path),
            ],
        )
        self._tmp.cleanup()
        return self.path

    def abort(self) -> None:
        """Stop the encoder and drop everything (on errors and cancellation)."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._tmp.cleanup()

    def _encoder_error(self) -> str:
        if self._proc.poll() is None:
            self._proc.kill()
        err = self._proc.stderr.read() if self._proc.stderr else b""
        return err.decode(errors="replace")[-500:]

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()


def write_wav(path: Path, audio: Audio) -> None:
    """16-bit PCM wav, the one format every tool reads."""
    pcm = (np.clip(audio.samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(audio.sample_rate)
        w.writeframes(pcm.tobytes())
