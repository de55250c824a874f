"""The talking-head stage.

A renderer gets the speech itself (audio samples plus any word/phoneme timings), not only a loudness
curve, so that checkpoint-based neural renderers (Wav2Lip, SadTalker) can plug in behind the same
Protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from pipeline.types import Speech


class PreparedAvatar(Protocol):
    """Everything a renderer computes once per photo and output size."""

    key: str  # content hash of the photo plus the output size
    size: int  # the longer side of the output frames, in pixels
    width: int  # output frame width (= size for the square face crop)
    height: int


class AvatarRenderer(Protocol):
    def prepare(self, image: bytes, size: int) -> PreparedAvatar:
        """Analyse a photo once. Raises UnreadableImage, NoFaceFound or FaceTooSmall."""
        ...

    def render(
        self, avatar: PreparedAvatar, speech: Speech, *, fps: int, start_time: float, n_frames: int
    ) -> Iterator[np.ndarray]:
        """Yield frames for `speech` as uint8 arrays of shape (batch, height, width, 3).

        `start_time` is where this speech begins in the whole clip, so that idle motion (blinks,
        head sway) continues smoothly across sentences; exactly `n_frames` frames are yielded.
        """
        ...
