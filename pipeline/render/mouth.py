"""Painting the inside of the open mouth: a shaded cavity, the teeth and a tongue.

Warping alone cannot show what the rest pose does not contain (its mouth is closed), so the gap
between the warped inner lips is painted. The cavity has rounded corners and soft edges, is lit
from the front (pinkish just inside the lips, dark at the back), and holds a domed tongue when the
jaw is open. The upper teeth are the photo's own when it shows them (sampled before the mouth was
closed), otherwise synthesised with shading on a dental arch; lower teeth appear on wide vowels.
Kept cheap and vectorised over the batch: only the window between the mouth corners is touched.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pipeline.render.regions import column_profile, paint_window

if TYPE_CHECKING:
    from pipeline.render.rig import MouthRig

# Colours at the brightness of a typical portrait (scaled by the photo's cheek brightness).
CAVITY = (0.09, 0.03, 0.035)  # the back of the mouth
MUCOSA = (0.38, 0.13, 0.14)  # the wet inner side of the lips, just inside the opening
TONGUE = (0.55, 0.24, 0.24)
TEETH = (0.88, 0.85, 0.79)
UPPER_TEETH = 0.085  # height of the visible upper teeth / mouth width, at the centre
LOWER_TEETH = 0.05  # same for the lower teeth, which only show when the mouth is wide open
LOWER_TEETH_FROM = 0.14  # lower teeth appear once the gap exceeds this fraction of the mouth width
TEETH_SHARE = 0.3  # teeth never fill more than this share of the gap (the cavity must read as open)
TONGUE_FROM = 0.08  # the tongue shows once the gap exceeds this fraction of the mouth width
TOOTH_ANGLE = math.radians(16)  # angular width of one front tooth on the dental arch
FEATHER = 1.25  # edge softness in px at 256 px output (scaled with the size)
TEETH_FADE = (0.3, 0.65)  # arch heights over which the upper teeth fade in from the corners


def paint_mouth(
    frames: torch.Tensor, origin: tuple[int, int], upper: torch.Tensor, lower: torch.Tensor, mouth: MouthRig
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
    width = mouth.width
    feather = FEATHER * max(1.0, width / 40.0)

    # Centre line and half-gap per column; an elliptic envelope rounds the corners of the cavity.
    k = max(3, int(width / 12) | 1)  # from the rig, not the window: batch-independent
    y_up, y_lo = _smooth_columns(column_profile(upper, xs), k), _smooth_columns(column_profile(lower, xs), k)
    left, right = upper[:, :1, 0], upper[:, -1:, 0]
    centre_x, half_w = (left + right) / 2, ((right - left) / 2).clamp(min=1.0)
    across = ((xs[None] - centre_x) / half_w).clamp(-1, 1)  # (B, W): -1 .. 1 corner to corner
    arch = torch.sqrt((1 - across.square()).clamp(min=0))  # 1 at the centre, 0 at the corners
    mid, half = (y_up + y_lo) / 2, ((y_lo - y_up) / 2).clamp(min=0)
    half = torch.minimum(half, half.amax(1, keepdim=True) * arch.pow(0.6))
    top, bottom, gap = mid - half, mid + half, 2 * half  # (B, W)

    yy = ys[None, :, None]  # (1, H, 1) against (B, 1, W)
    top_, bottom_, gap_, arch_ = top[:, None], bottom[:, None], gap[:, None], arch[:, None]
    alpha = ((yy - top_) / feather + 0.5).clamp(0, 1) * ((bottom_ - yy) / feather + 0.5).clamp(0, 1)
    alpha = alpha * (gap_ / 2).clamp(0, 1)  # a hairline gap fades in instead of popping

    # Cavity: mucosa just inside the lips, darkening towards the back; darker towards the corners.
    edge = torch.minimum(yy - top_, bottom_ - yy).clamp(min=0) / (0.9 * feather + 0.12 * gap_)
    back = (1 - torch.exp(-edge)).clamp(0, 1)
    colour = _rgb(MUCOSA, dev) + (_rgb(CAVITY, dev) - _rgb(MUCOSA, dev)) * back[:, None]
    colour = colour * (0.55 + 0.45 * arch_.pow(0.8))[:, None]

    # Tongue: a dome rising from the lower lip, lit on its front, once the jaw is open enough.
    open_ = ((gap_ - TONGUE_FROM * width) / (0.12 * width)).clamp(0, 1)
    dome = bottom_ - (0.42 * gap_) * arch_.pow(0.5)
    tongue_a = ((yy - dome) / feather + 0.5).clamp(0, 1) * open_ * (arch_ > 0.05)
    lit = 0.65 + 0.35 * ((yy - dome) / (0.42 * gap_).clamp(min=1)).clamp(0, 1)
    tongue = _rgb(TONGUE, dev) * (lit * (0.6 + 0.4 * arch_))[:, None]
    colour = (colour + (tongue - colour) * tongue_a[:, None]) * mouth.brightness

    # Upper teeth hang from the upper lip; only their tips show in a small opening.
    visible = torch.minimum(UPPER_TEETH * width * arch, TEETH_SHARE * gap)[:, None]  # (B, 1, W)
    # the teeth fade out towards the corners, where a real mouth shows the dark of the cheeks
    upper_a = ((top_ + visible - yy) / feather + 0.5).clamp(0, 1) * _centre(arch_)
    teeth = _synthetic_teeth(across, arch_, yy, top_, visible, dev) * mouth.brightness
    tooth_colour = _rgb(TEETH, dev)[0, :, 0, 0] * mouth.brightness
    if mouth.teeth is not None and mouth.teeth_height is not None:
        photo = _photo_teeth(mouth.teeth, mouth.teeth_height, across, yy, top_ + visible)
        teeth = teeth + (photo[:, :3] - teeth) * photo[:, 3:]  # the photo's teeth where it has them
        weight = mouth.teeth[3:].mean((1, 2)).clamp(min=1e-6)
        tooth_colour = (mouth.teeth[:3] * mouth.teeth[3:]).mean((1, 2)) / weight
    colour = colour + (teeth - colour) * upper_a[:, None]

    # Lower teeth: only on wide vowels, behind the lower lip, in the photo's tooth colour.
    lower_h = torch.minimum(LOWER_TEETH * width * arch, (gap - LOWER_TEETH_FROM * width).clamp(min=0))[
        :, None
    ]
    lower_a = ((yy - (bottom_ - lower_h)) / feather + 0.5).clamp(0, 1) * (lower_h > 0.7) * (arch_ > 0.35)
    shade = (0.45 + 0.35 * arch_.pow(0.7)) * (1 - 0.5 * (1 - _seams(across)))[:, None]
    lower_teeth = tooth_colour[None, :, None, None] * shade[:, None]
    colour = colour + (lower_teeth - colour) * (0.7 * lower_a)[:, None]

    roi = frames[:, :, y0:y1, x0:x1]
    a = alpha[:, None]
    frames[:, :, y0:y1, x0:x1] = roi + (colour.clamp(0, 1) - roi) * a


def _centre(arch: torch.Tensor) -> torch.Tensor:
    """1 across the front teeth, fading to 0 before the mouth corners (smoothstep on the arch)."""
    t = ((arch - TEETH_FADE[0]) / (TEETH_FADE[1] - TEETH_FADE[0])).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _smooth_columns(y: torch.Tensor, k: int) -> torch.Tensor:
    """Round off the kinks of the 11-point lip polylines (B, W) with a k-column moving average."""
    padded = F.pad(y[:, None], (k // 2, k // 2), mode="replicate")
    return F.avg_pool1d(padded, k, stride=1)[:, 0]


def _rgb(c: tuple[float, float, float], dev: torch.device) -> torch.Tensor:
    return torch.tensor(c, device=dev)[None, :, None, None]


def _seams(across: torch.Tensor) -> torch.Tensor:
    """A faint dark line between neighbouring teeth, whose width shrinks along the dental arch."""
    angle = torch.asin(across.clamp(-0.999, 0.999)) / TOOTH_ANGLE + 0.5
    return 1 - 0.22 * torch.exp(-((angle - angle.round()) ** 2) / 0.01)


def _synthetic_teeth(
    across: torch.Tensor, arch: torch.Tensor, yy: torch.Tensor, top: torch.Tensor, visible: torch.Tensor, dev
) -> torch.Tensor:
    """Shaded upper teeth (B, 3, H, W): lit at the centre, darker round the arch and under the lip."""
    shade = (0.55 + 0.45 * arch.pow(0.7)) * _seams(across)[:, None]
    under_lip = 0.8 + 0.2 * ((yy - top) / (0.35 * visible).clamp(min=1)).clamp(0, 1)  # lip's shadow
    tips = 1 - 0.2 * ((yy - top) / visible.clamp(min=1)).clamp(0, 1) ** 3  # translucent tips
    return _rgb(TEETH, dev) * (shade * under_lip * tips)[:, None]


def _photo_teeth(
    texture: torch.Tensor, height: torch.Tensor, across: torch.Tensor, yy: torch.Tensor, tips: torch.Tensor
) -> torch.Tensor:
    """The photo's teeth (B, 4, H, W) with alpha; the texture's bottom edge at `tips`, per column.

    The texture's own height at each column keeps the photo's scale; a smaller opening hides the
    upper part under the lip, as real teeth do.
    """
    b = tips.shape[0]
    cols = texture.shape[-1]
    u = across  # (B, W) in -1 .. 1 across the texture
    idx = ((u + 1) / 2 * (cols - 1)).round().long().clamp(0, cols - 1)
    h = height[idx][:, None].clamp(min=1)  # (B, 1, W)
    v = 1 - (tips - yy) / h  # 1 at the tips, 0 at the gum line
    grid = torch.stack([u[:, None].expand(-1, yy.shape[1], -1), (v * 2 - 1).expand(b, -1, -1)], -1)
    return F.grid_sample(
        texture[None].expand(b, -1, -1, -1), grid, mode="bilinear", padding_mode="border", align_corners=True
    )
