"""Painting the inside of the open mouth: a dark cavity, the upper teeth and, when wide open, a tongue.

Warping alone cannot show what the photo does not contain (its mouth is closed in the rest pose), so
the gap between the warped inner lips is painted. Kept cheap and vectorised over the batch: only the
columns between the mouth corners and the rows between the lips are touched.
"""

from __future__ import annotations

import math

import torch

from pipeline.render.regions import column_profile, paint_window

# Colours at the brightness of a typical portrait (scaled by the photo's cheek brightness).
CAVITY = (0.10, 0.035, 0.04)
TONGUE = (0.42, 0.16, 0.16)
TEETH = (0.86, 0.83, 0.77)
UPPER_TEETH = 0.075  # height of the visible upper teeth / mouth width, at the centre
LOWER_TEETH = 0.05  # same for the lower teeth, which only show when the mouth is wide open
LOWER_TEETH_FROM = 0.12  # lower teeth appear once the gap exceeds this fraction of the mouth width
TOOTH_ANGLE = math.radians(16)  # angular width of one front tooth on the dental arch
FEATHER = 1.25  # edge softness in px at 256 px output (scaled with the size)


def paint_mouth(
    frames: torch.Tensor,
    origin: tuple[int, int],
    upper: torch.Tensor,
    lower: torch.Tensor,
    mouth_width: float,
    brightness: float,
) -> None:
    """Paint the mouth interior into `frames` (B, 3, h, w, in place) between the inner lip contours.

    `upper` and `lower` are (B, N, 2) inner-lip polylines from corner to corner in frame px; `origin`
    is the frame position (y, x) of frames[..., 0, 0].
    """
    window = paint_window(frames, origin, upper, lower)
    if window is None:
        return
    x0, x1, y0, y1, xs, ys = window.x0, window.x1, window.y0, window.y1, window.xs, window.ys
    dev = frames.device
    feather = FEATHER * max(1.0, mouth_width / 40.0)

    # Centre line and half-gap per column; an elliptic envelope rounds the corners of the cavity.
    y_up, y_lo = column_profile(upper, xs), column_profile(lower, xs)
    left, right = upper[:, :1, 0], upper[:, -1:, 0]
    centre_x, half_w = (left + right) / 2, ((right - left) / 2).clamp(min=1.0)
    across = ((xs[None] - centre_x) / half_w).clamp(-1, 1)  # (B, W): -1 .. 1 corner to corner
    arch = torch.sqrt((1 - across.square()).clamp(min=0))  # 1 at the centre, 0 at the corners
    mid, half = (y_up + y_lo) / 2, ((y_lo - y_up) / 2).clamp(min=0)
    half = torch.minimum(half, half.amax(1, keepdim=True) * arch)
    top, bottom, gap = mid - half, mid + half, 2 * half  # (B, W)

    yy = ys[None, :, None]  # (1, H, 1) against (B, 1, W)
    top_, bottom_, gap_, arch_ = top[:, None], bottom[:, None], gap[:, None], arch[:, None]
    alpha = ((yy - top_) / feather + 0.5).clamp(0, 1) * ((bottom_ - yy) / feather + 0.5).clamp(0, 1)
    alpha = alpha * (gap_ / 2).clamp(0, 1)  # a hairline gap fades in instead of popping

    depth = ((yy - top_) / gap_.clamp(min=1)).clamp(0, 1)  # 0 under the upper lip .. 1 at the lower
    cavity = torch.tensor(CAVITY, device=dev)[None, :, None, None]
    tongue = torch.tensor(TONGUE, device=dev)[None, :, None, None]
    tongue_w = ((depth - 0.55) / 0.45).clamp(0, 1) * arch_ * (gap_ / (0.18 * mouth_width)).clamp(0, 1)
    colour = cavity + (tongue - cavity) * tongue_w[:, None]
    colour = colour * (0.6 + 0.4 * arch_[:, None])  # darker towards the corners

    # Teeth sit on an arch: a tooth's width shrinks towards the corners, with a dark line between teeth.
    angle = torch.asin(across.clamp(-0.999, 0.999)) / TOOTH_ANGLE + 0.5
    seams = 1 - 0.22 * torch.exp(-((angle - angle.round()) ** 2) / 0.01)
    upper_h = torch.minimum(UPPER_TEETH * mouth_width * arch, 0.42 * gap)[:, None]
    upper_t = ((top_ + upper_h - yy) / feather + 0.5).clamp(0, 1) * (arch_ > 0.2)
    lower_h = torch.minimum(
        LOWER_TEETH * mouth_width * arch, (gap - LOWER_TEETH_FROM * mouth_width).clamp(min=0)
    )
    lower_h = lower_h[:, None]
    lower_t = ((yy - (bottom_ - lower_h)) / feather + 0.5).clamp(0, 1) * (lower_h > 0.7) * (arch_ > 0.35)
    shade = (0.55 + 0.45 * arch_.pow(0.7)) * seams[:, None]
    shade = shade * (1 - 0.25 * ((yy - top_) / upper_h.clamp(min=1)).clamp(0, 1))  # shadow at the tips
    teeth = torch.tensor(TEETH, device=dev)[None, :, None, None] * shade[:, None]
    teeth_a = (upper_t + 0.85 * lower_t).clamp(0, 1)[:, None]
    colour = (colour + (teeth - colour) * teeth_a) * brightness

    roi = frames[:, :, y0:y1, x0:x1]
    a = alpha[:, None]
    frames[:, :, y0:y1, x0:x1] = roi + (colour.clamp(0, 1) - roi) * a
