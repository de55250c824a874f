"""Shared geometry for painting between two warped contours (lips, eyelids)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PaintWindow:
    """The frame rows/columns a pair of contours can touch, and their frame-pixel coordinates."""

    x0: int
    x1: int
    y0: int
    y1: int
    xs: torch.Tensor  # (W,) frame x of each column in the window
    ys: torch.Tensor  # (H,) frame y of each row


def paint_window(
    frames: torch.Tensor, origin: tuple[int, int], upper: torch.Tensor, lower: torch.Tensor, margin: int = 0
) -> PaintWindow | None:
    """The bounding window of `upper` and `lower` (B, N, 2) inside `frames` (B, 3, h, w), with a margin
    of 2-3 px plus `margin` rows above and below.

    `origin` is the frame position (y, x) of frames[..., 0, 0]. None when the window is empty.
    """
    h, w = frames.shape[-2:]
    oy, ox = origin
    both = torch.cat([upper, lower], 1)
    lo_xy = both.amin((0, 1)).floor() - 2
    hi_xy = both.amax((0, 1)).ceil() + 3
    lo_xy[1] -= margin
    hi_xy[1] += margin
    x0, y0 = max(0, int(lo_xy[0]) - ox), max(0, int(lo_xy[1]) - oy)
    x1, y1 = min(w, int(hi_xy[0]) - ox), min(h, int(hi_xy[1]) - oy)
    if x1 <= x0 or y1 <= y0:
        return None
    dev = frames.device
    xs = torch.arange(x0, x1, device=dev, dtype=torch.float32) + ox
    ys = torch.arange(y0, y1, device=dev, dtype=torch.float32) + oy
    return PaintWindow(x0, x1, y0, y1, xs, ys)


def column_profile(contour: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """y of a left-to-right polyline (B, N, 2) at columns xs (W,), as (B, W); clamped at its ends."""
    x, y = contour[..., 0], contour[..., 1]
    xa, xb = x[:, :-1, None], x[:, 1:, None]
    ya, yb = y[:, :-1, None], y[:, 1:, None]
    t = (xs[None, None] - xa) / (xb - xa).clamp(min=1e-3)
    inside = (t >= 0) & (t < 1)
    ys = (ya + t.clamp(0, 1) * (yb - ya)) * inside
    found = inside.sum(1)
    mid = ys.sum(1) / found.clamp(min=1)
    # Outside the polyline: hold the end value (the cavity is cut off there anyway).
    left = torch.where(xs[None] < x[:, :1], y[:, :1], y[:, -1:])
    return torch.where(found > 0, mid, left)
