"""Closing the eyelids fully during a blink.

The blink warp pulls the lids together, but a smooth spline cannot fold the eye away and leaves
squashed sclera and iris behind. Near full closure the whole rest-pose aperture is therefore
painted over, opaque inside and feathered only at its rim: lid skin taken from just above the upper
lid (so it follows the photo's lighting and the head motion), a little darker towards a thin dark
lash line where the lids meet, and the lower lid's own skin below that line.
"""

from __future__ import annotations

import torch

from pipeline.render.regions import column_profile, paint_window

CLOSING_FROM, CLOSING_TO = 0.55, 0.92  # blink weights over which the painted lid fades in
MEET = 0.72  # the closed lids meet this far down the aperture, upper lid to lower lid
LASH = (0.22, 0.15, 0.12)  # lash line colour (dark brown)
LID_SHADE = (1.0, 0.9)  # lid skin brightness at its top and just above the lash line
LID_SAMPLE = (0.10, 0.22)  # lid skin is sampled this far above the upper lid (x eye width)
BELOW_SAMPLE = (0.08, 0.16)  # lower-lid skin this far below the lower lid
FEATHER = 0.6  # edge softness in px per 10 px of eye width


def paint_lids(
    frames: torch.Tensor,
    origin: tuple[int, int],
    upper: torch.Tensor,
    lower: torch.Tensor,
    blink: torch.Tensor,
) -> None:
    """Cover one eye's aperture in `frames` (B, 3, h, w, in place) as far as the blink has closed it.

    `upper`/`lower` are (B, N, 2) rest-pose lid polylines (moved with the head) from corner to
    corner, left to right, in frame px; `origin` is the frame position (y, x) of frames[..., 0, 0];
    `blink` is (B,).
    """
    t = ((blink - CLOSING_FROM) / (CLOSING_TO - CLOSING_FROM)).clamp(0, 1)
    closure = t * t * (3 - 2 * t)
    if float(closure.max()) <= 0:
        return
    window = paint_window(frames, origin, upper, lower)
    if window is None:
        return
    x0, x1, y0, y1, xs, ys = window.x0, window.x1, window.y0, window.y1, window.xs, window.ys
    # per frame, so that a frame does not depend on which batch it was rendered in
    eye_w = (upper[:, -1, 0] - upper[:, 0, 0]).abs()[:, None, None]  # (B, 1, 1)
    feather = (FEATHER * eye_w / 10).clamp(min=0.6)

    top = column_profile(upper, xs)[:, None]  # (B, 1, W)
    bottom = column_profile(lower, xs)[:, None]
    meet = top + MEET * (bottom - top)
    inside_x = ((xs >= upper[:, :1, 0] - 0.5) & (xs <= upper[:, -1:, 0] + 0.5)).float()[:, None]
    yy = ys[None, :, None]
    # a wide soft top edge: the lid skin above blends into the painted lid without a seam
    alpha = ((yy - top + feather) / (3 * feather)).clamp(0, 1) * ((bottom + feather - yy) / feather).clamp(
        0, 1
    )
    alpha = alpha * inside_x * closure[:, None, None]

    lash_rgb = torch.tensor(LASH, device=frames.device)[None, :, None, None]
    roi = frames[:, :, y0:y1, x0:x1]
    above = _skin(frames, top[:, 0] - origin[0], -eye_w[:, 0], LID_SAMPLE, (x0, x1))  # (B, 3, 1, W)
    below = _skin(frames, bottom[:, 0] - origin[0], eye_w[:, 0], BELOW_SAMPLE, (x0, x1))
    down = ((yy - top) / (meet - top).clamp(min=1)).clamp(0, 1)  # 0 at the lid's top .. 1 at the lashes
    lid = above * (LID_SHADE[0] + (LID_SHADE[1] - LID_SHADE[0]) * down)[:, None]
    colour = torch.where((yy < meet)[:, None], lid, below * 0.95)
    lash_w = (0.035 * eye_w).clamp(min=0.4)
    lash = 0.9 * torch.exp(-(((yy - meet) / lash_w) ** 2))[:, None]
    colour = colour * (1 - lash) + lash_rgb * lash
    a = alpha[:, None]
    frames[:, :, y0:y1, x0:x1] = roi + (colour.clamp(0, 1) - roi) * a


def _skin(
    frames: torch.Tensor,
    edge: torch.Tensor,
    eye_w: torch.Tensor,
    span: tuple[float, float],
    cols: tuple[int, int],
) -> torch.Tensor:
    """Median colour (B, 3, 1, W) of a few rows of skin `span` x `eye_w` (B, 1) px from `edge` (B, W)."""
    x0, x1 = cols
    h = frames.shape[-2]
    samples = []
    for k in torch.linspace(span[0], span[1], 4).tolist():
        rows = (edge + k * eye_w).round().long().clamp(0, h - 1)  # (B, W)
        idx = rows[:, None, None, :].expand(-1, frames.shape[1], 1, -1)
        samples.append(torch.gather(frames[..., x0:x1], 2, idx))
    return torch.stack(samples).median(0).values
