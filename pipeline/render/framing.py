"""Output framing: the square face crop, or the whole photo with the animated crop pasted back in.

"square": the frame is the face crop itself (what a round video needs: it is shown as a
circle cut from a square). "photo": the frame is the user's whole picture, scaled so that its longer
side is the output size (both sides even, as H.264 in yuv420p requires), and the rig is built on a
crop cut from that very picture, pixel-aligned with it. Outside the rig's moving region the crop is
the picture byte for byte, so the paste is invisible; where the moving region reaches a crop edge
that lies inside the picture, a feathered band blends it into the picture, so no seam can show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.errors import FaceTooSmall
from pipeline.render.rig import crop_box

FRAMES = ("square", "photo")
FEATHER = 0.05  # seam band width / crop side, on crop edges that lie inside the picture
MIN_CROP_PX = 64  # a face crop smaller than this in the whole-photo frame is too blurry to animate


@dataclass(frozen=True)
class Backdrop:
    """The whole picture a photo-mode frame is built on, and where the rig's crop sits in it."""

    still: np.ndarray  # (H, W, 3) uint8: the frame at rest
    origin: tuple[int, int]  # (y, x) of the crop's top-left corner in the frame
    alpha: np.ndarray | None  # (h, w, 1) float32 over the rig's roi: 1 = animated, 0 = picture

    @property
    def height(self) -> int:
        return int(self.still.shape[0])

    @property
    def width(self) -> int:
        return int(self.still.shape[1])


@dataclass(frozen=True)
class PhotoLayout:
    """The scaled picture, and the square crop (left, top, side in its px) the rig is built on."""

    picture: np.ndarray  # (H, W, 3) uint8
    points: np.ndarray  # (478, 2) landmarks in picture px
    left: int
    top: int
    side: int

    @property
    def crop(self) -> np.ndarray:
        return self.picture[self.top : self.top + self.side, self.left : self.left + self.side]


def even(x: float) -> int:
    """The nearest even integer >= 2."""
    return max(2, 2 * round(x / 2))


def photo_layout(rgb: np.ndarray, points: np.ndarray, size: int) -> PhotoLayout:
    """Scale the whole photo so its longer side is `size` (rounded down to even), and place the crop.

    Raises FaceTooSmall when the face crop would be under MIN_CROP_PX in that frame.
    """
    h, w = rgb.shape[:2]
    longest = size - size % 2
    f = longest / max(h, w)
    width, height = (longest, even(h * f)) if w >= h else (even(w * f), longest)
    resample = Image.LANCZOS if f < 1 else Image.BICUBIC
    picture = np.asarray(Image.fromarray(rgb).resize((width, height), resample), dtype=np.uint8).copy()
    pts = points * np.array([width / w, height / h])
    left, top, side = crop_box(pts, height, width)
    n = min(round(side), height, width)
    if n < MIN_CROP_PX:
        raise FaceTooSmall(f"the face crop is {n} px in a {width}x{height} frame, need {MIN_CROP_PX}")
    x0 = int(np.clip(round(left), 0, width - n))
    y0 = int(np.clip(round(top), 0, height - n))
    return PhotoLayout(picture, pts.astype(np.float64), x0, y0, n)


def backdrop(layout: PhotoLayout, rest: np.ndarray, roi: tuple[int, int, int, int]) -> Backdrop:
    """The photo-mode backdrop for a rig whose rest-pose crop is `rest` and moving region `roi`."""
    still = layout.picture.copy()
    n = layout.side
    still[layout.top : layout.top + n, layout.left : layout.left + n] = rest
    height, width = still.shape[:2]
    band = max(2.0, FEATHER * n)
    ramp = np.ones((n, n), np.float32)
    axis = np.arange(n, dtype=np.float32)
    edges = [
        (layout.left > 0, axis[None, :]),  # left edge inside the picture
        (layout.left + n < width, (n - 1 - axis)[None, :]),
        (layout.top > 0, axis[:, None]),
        (layout.top + n < height, (n - 1 - axis)[:, None]),
    ]
    for inside, distance in edges:
        if inside:
            ramp = np.minimum(ramp, np.clip((distance + 0.5) / band, 0, 1))
    y0, y1, x0, x1 = roi
    alpha = ramp[y0:y1, x0:x1]
    t = alpha * alpha * (3 - 2 * alpha)
    return Backdrop(still, (layout.top, layout.left), None if t.min() >= 1 else t[..., None].copy())


def _feather_strips(alpha: np.ndarray) -> list[tuple[slice, slice]]:
    """The (rows, cols) strips of the roi where alpha < 1: the ramps are per edge, so the rest of the
    roi is one rectangle of alpha == 1 that can be copied without blending."""
    full = alpha[..., 0] >= 1
    rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
    h, w = full.shape
    if rows.size == 0 or cols.size == 0:
        return [(slice(0, h), slice(0, w))]
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    strips = [(slice(0, r0), slice(0, w)), (slice(r1, h), slice(0, w))]
    strips += [(slice(r0, r1), slice(0, c0)), (slice(r0, r1), slice(c1, w))]
    return [(r, c) for r, c in strips if r.stop > r.start and c.stop > c.start]


def paste(frames_roi: np.ndarray, backdrop_: Backdrop, roi: tuple[int, int, int, int]) -> np.ndarray:
    """Whole frames (B, H, W, 3): the backdrop with the rendered roi (B, h, w, 3) pasted, feathered."""
    b = frames_roi.shape[0]
    out = np.repeat(backdrop_.still[None], b, axis=0)
    y0, y1, x0, x1 = roi
    oy, ox = backdrop_.origin
    target = out[:, oy + y0 : oy + y1, ox + x0 : ox + x1]
    picture = target.copy() if backdrop_.alpha is not None else None
    target[:] = frames_roi
    if picture is not None:
        for rows, cols in _feather_strips(backdrop_.alpha):
            a = backdrop_.alpha[rows, cols]
            blended = frames_roi[:, rows, cols].astype(np.float32) * a + picture[:, rows, cols] * (1 - a)
            target[:, rows, cols] = (blended + 0.5).astype(np.uint8)
    return out
