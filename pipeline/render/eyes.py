"""Closing the eyelids fully during a blink.

The blink warp pulls the lids together, but a smooth spline cannot fold the eye away completely and
leaves a slit; near full closure we paint the remaining aperture with the lid skin just above it (taken
from the frame itself, so it follows lighting and head motion) and a darker lash line along the lower
lid, as a closed eye looks.
"""

from __future__ import annotations

import torch

from pipeline.render.regions import column_profile, paint_window

CLOSING_FROM, CLOSING_TO = 0.45, 0.9  # blink weights over which the painted lid fades in
LASH_DARKEN = 0.55  # lash line brightness factor at its centre
LID_SHADE = 0.96  # the closed lid is a little darker than the skin above it
LID_SAMPLE = (0.12, 0.25)  # lid skin is sampled this far above the upper lid (x eye width)
FEATHER = 0.8  # edge softness in px per 10 px of eye width


def paint_lids(
    frames: torch.Tensor,
    origin: tuple[int, int],
    upper: torch.Tensor,
    lower: torch.Tensor,
    blink: torch.Tensor,
) -> None:
    """Cover one eye's aperture in `frames` (B, 3, h, w, in place) as far as the blink has closed it.

    `upper`/`lower` are (B, N, 2) warped lid polylines from corner to corner (left to right), in
    frame px; `origin` is the frame position (y, x) of frames[..., 0, 0]; `blink` is (B,).
    """
    t = ((blink - CLOSING_FROM) / (CLOSING_TO - CLOSING_FROM)).clamp(0, 1)
    closure = t * t * (3 - 2 * t)
    if float(closure.max()) <= 0:
        return
    window = paint_window(frames, origin, upper, lower)
    if window is None:
        return
    x0, x1, y0, y1, xs, ys = window.x0, window.x1, window.y0, window.y1, window.xs, window.ys
    eye_w = float((upper[:, -1, 0] - upper[:, 0, 0]).abs().mean())
    feather = max(0.6, FEATHER * eye_w / 10)

    top = column_profile(upper, xs)[:, None]  # (B, 1, W)
    bottom = column_profile(lower, xs)[:, None]
    inside_x = ((xs >= upper[:, :1, 0]) & (xs <= upper[:, -1:, 0])).float()[:, None]  # (B, 1, W)
    yy = ys[None, :, None]
    # Cover from the upper lid down to just below the lower lid line, so no sclera peeks through.
    alpha = ((yy - top) / feather + 0.5).clamp(0, 1) * ((bottom + feather - yy) / feather + 0.5).clamp(0, 1)
    alpha = alpha * inside_x * closure[:, None, None]
    lash = 1 - (1 - LASH_DARKEN) * torch.exp(-(((yy - bottom) / (1.2 * feather)) ** 2))
    roi = frames[:, :, y0:y1, x0:x1]
    skin = _skin_above(frames, top[:, 0] - origin[0], eye_w, (x0, x1))  # (B, 3, 1, W)
    colour = skin * (LID_SHADE * lash)[:, None]
    a = alpha[:, None]
    frames[:, :, y0:y1, x0:x1] = roi + (colour.clamp(0, 1) - roi) * a


def _skin_above(frames: torch.Tensor, top: torch.Tensor, eye_w: float, cols: tuple[int, int]) -> torch.Tensor:
    """Mean colour (B, 3, 1, W) of a few rows of lid skin above the upper lid `top` (B, W, region px)."""
    x0, x1 = cols
    h = frames.shape[-2]
    samples = []
    for k in torch.linspace(LID_SAMPLE[0], LID_SAMPLE[1], 4).tolist():
        rows = (top - k * eye_w).round().long().clamp(0, h - 1)  # (B, W)
        idx = rows[:, None, None, :].expand(-1, frames.shape[1], 1, -1)
        samples.append(torch.gather(frames[..., x0:x1], 2, idx))
    return torch.stack(samples).mean(0)
