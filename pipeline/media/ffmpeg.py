"""The ffmpeg binary: the static build that the imageio-ffmpeg wheel carries (libx264 + aac)."""

from __future__ import annotations

import functools
import os
import subprocess


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg to use: $TALKTWIN_FFMPEG if set, else imageio-ffmpeg's bundled binary."""
    override = os.environ.get("TALKTWIN_FFMPEG")
    if override:
        return override
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str], stdin: bytes | None = None, timeout: float = 120) -> bytes:
    """Run ffmpeg with `args` (after the binary), return stdout; CalledProcessError carries stderr."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin" if stdin is None else "-y", *args]
    result = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, cmd, result.stdout, result.stderr)
    return result.stdout
