"""Painting the inside of the open mouth: parting lips, a shaded cavity, the teeth and a tongue.

Warping alone cannot show what the rest pose does not contain (its mouth is closed), so the gap
between the warped inner lips is painted. As the lips part, their wet inner sides roll into view: a
rim of the photo's own lip colour, darker towards the opening, along both edges (thin lips would
otherwise read as a slit cut into the skin). The cavity has rounded corners and soft edges, is lit
from the front (pinkish just inside the lips, dark at the back), and holds a domed tongue when the
jaw is open. The upper teeth are the photo's own when it shows them (sampled before the mouth was
closed), otherwise synthesised with shading on a dental arch, in the photo's colour cast; lower teeth
appear on wide vowels. Rounded vowels (o, u) narrow the opening and round it towards an oval, and
the pushed-out lips hide more of the teeth. Every painted colour takes on the photo's colour cast and
loses its colour in a black and white photo. Kept cheap and vectorised over the batch: only the
window around the lips is touched.
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
CAVITY = (0.11, 0.035, 0.04)  # the back of the mouth
MUCOSA = (0.42, 0.15, 0.16)  # the wet inner side of the lips, just inside the opening
TONGUE = (0.55, 0.24, 0.24)
TEETH = (0.86, 0.83, 0.77)
UPPER_TEETH = 0.085  # height of the visible upper teeth / mouth width, at the centre
LOWER_TEETH = 0.05  # same for the lower teeth, which only show when the mouth is wide open
LOWER_TEETH_FROM = 0.2  # lower teeth appear once the gap exceeds this fraction of the mouth width
LOWER_ALPHA = 0.5  # and stay half hidden in the shadow of the lower lip
TEETH_SHARE = 0.38  # teeth never fill more than this share of the gap (the cavity must read as open)
TONGUE_FROM = 0.08  # the tongue shows once the gap exceeds this fraction of the mouth width
TOOTH_ANGLE = math.radians(16)  # angular width of one front tooth on the dental arch
FEATHER = 1.25  # edge softness in px at 256 px output (scaled with the size)
TEETH_FADE = (0.3, 0.65)  # arch heights over which the upper teeth fade in from the corners
DEPTH = 0.22  # the cavity darkens from the lips inwards over this share of the gap
# Parting lips: the inner side of each lip shows as a rim this thick (x the gap, at most RIM_MAX x the
# mouth width), in the lip colour darkened to RIM_SHADE at the opening.
RIM = 0.3
RIM_MAX = 0.05
RIM_SHADE = 0.8
RIM_SOLID = 0.5  # the rim is opaque over this inner share of its thickness, then fades
# Rounded lips (o, u): the opening ends this much short of the lip corners (share of the half-width)
# and its outline goes from a flat, wide shape (envelope power 0.6) to an oval (power ROUND_POWER).
ROUND_NARROW = 0.18
FLAT_POWER, ROUND_POWER = 0.6, 1.15
ROUND_TEETH = 0.45  # pushed-out lips hide this share of the upper teeth


def paint_mouth(
    frames: torch.Tensor,
    origin: tuple[int, int],
    upper: torch.Tensor,
    lower: torch.Tensor,
    mouth: MouthRig,
    rounding: torch.Tensor | None = None,
) -> None:
    """Paint the mouth interior into `frames` (B, 3, h, w, in place) between the inner lip contours.

    `upper` and `lower` are (B, N, 2) inner-lip polylines from corner to corner in frame px; `origin`
    is the frame position (y, x) of frames[..., 0, 0]; `rounding` (B,) in 0 .. 1 is how rounded the
    lips are (0 when not given).
    """
    width = mouth.width
    rim_max = RIM_MAX * width
    window = paint_window(frames, origin, upper, lower, margin=math.ceil(rim_max) + 2)
    if window is None:
        return
    x0, x1, y0, y1, xs, ys = window.x0, window.x1, window.y0, window.y1, window.xs, window.ys
    dev = frames.device
    b = upper.shape[0]
    feather = FEATHER * max(1.0, width / 40.0)
    rnd = torch.zeros(b, device=dev) if rounding is None else rounding.clamp(0, 1)
    rnd_ = rnd[:, None]  # (B, 1)

    # Centre line and half-gap per column; an elliptic envelope rounds the corners of the cavity.
    k = max(3, int(width / 12) | 1)  # from the rig, not the window: batch-independent
    y_up, y_lo = _smooth_columns(column_profile(upper, xs), k), _smooth_columns(column_profile(lower, xs), k)
    left, right = upper[:, :1, 0], upper[:, -1:, 0]
    centre_x = (left + right) / 2
    half_w = ((right - left) / 2 * (1 - ROUND_NARROW * rnd_)).clamp(min=1.0)
    across = ((xs[None] - centre_x) / half_w).clamp(-1, 1)  # (B, W): -1 .. 1 corner to corner
    arch = torch.sqrt((1 - across.square()).clamp(min=0))  # 1 at the centre, 0 at the corners
    mid, half = (y_up + y_lo) / 2, ((y_lo - y_up) / 2).clamp(min=0)
    power = FLAT_POWER + (ROUND_POWER - FLAT_POWER) * rnd_
    half = torch.minimum(half, half.amax(1, keepdim=True) * arch.pow(power))
    top, bottom, gap = mid - half, mid + half, 2 * half  # (B, W)

    yy = ys[None, :, None]  # (1, H, 1) against (B, 1, W)
    top_, bottom_, gap_, arch_ = top[:, None], bottom[:, None], gap[:, None], arch[:, None]
    opening = (gap_ / 2).clamp(0, 1)  # a hairline gap fades in instead of popping
    alpha = ((yy - top_) / feather + 0.5).clamp(0, 1) * ((bottom_ - yy) / feather + 0.5).clamp(0, 1)
    alpha = alpha * opening

    # Parting lips: a rim of lip colour on each side of the opening, darker towards it.
    rim = torch.minimum(RIM * gap_ + 0.5, torch.full_like(gap_, rim_max)) * arch_.sqrt()
    above = ((top_ - yy) / rim.clamp(min=0.5)).clamp(min=0)  # 0 at the opening .. 1 at the rim's edge
    below = ((yy - bottom_) / rim.clamp(min=0.5)).clamp(min=0)
    out = torch.where(yy < top_, above, below)  # (B, H, W)
    solid = ((1 - out) / (1 - RIM_SOLID)).clamp(0, 1)  # opaque over the inner part, then fading out
    rim_a = solid * solid * (3 - 2 * solid) * (1 - alpha / opening.clamp(min=1e-3)).clamp(0, 1) * opening
    lip = mouth.lip.to(dev)[None, :, None, None]
    rim_colour = lip * (RIM_SHADE + (1 - RIM_SHADE) * out.clamp(0, 1).sqrt())[:, None]

    # Cavity: mucosa just inside the lips, darkening towards the back; darker towards the corners.
    edge = torch.minimum(yy - top_, bottom_ - yy).clamp(min=0) / (0.9 * feather + DEPTH * gap_)
    back = (1 - torch.exp(-edge)).clamp(0, 1)
    mucosa, cavity = _paint(MUCOSA, mouth, dev), _paint(CAVITY, mouth, dev)
    colour = mucosa + (cavity - mucosa) * back[:, None]
    colour = colour * (0.55 + 0.45 * arch_.pow(0.8))[:, None]

    # Tongue: a dome rising from the lower lip, lit on its front, once the jaw is open enough.
    open_ = ((gap_ - TONGUE_FROM * width) / (0.12 * width)).clamp(0, 1)
    dome = bottom_ - (0.42 * gap_) * arch_.pow(0.5)
    tongue_a = ((yy - dome) / feather + 0.5).clamp(0, 1) * open_ * (arch_ > 0.05)
    lit = 0.65 + 0.35 * ((yy - dome) / (0.42 * gap_).clamp(min=1)).clamp(0, 1)
    tongue = _paint(TONGUE, mouth, dev) * (lit * (0.6 + 0.4 * arch_))[:, None]
    colour = colour + (tongue - colour) * tongue_a[:, None]

    # Upper teeth hang from the upper lip; only their tips show in a small opening.
    visible = torch.minimum(UPPER_TEETH * width * arch, TEETH_SHARE * gap) * (1 - ROUND_TEETH * rnd_)
    visible = visible[:, None]  # (B, 1, W)
    # the teeth fade out towards the corners, where a real mouth shows the dark of the cheeks
    upper_a = ((top_ + visible - yy) / feather + 0.5).clamp(0, 1) * _centre(arch_)
    tooth_colour = _paint(TEETH, mouth, dev)
    teeth = tooth_colour * _teeth_shade(across, arch_, yy, top_, visible)[:, None]
    tooth_colour = tooth_colour[0, :, 0, 0]
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
    colour = colour + (lower_teeth - colour) * (LOWER_ALPHA * lower_a)[:, None]

    roi = frames[:, :, y0:y1, x0:x1]
    roi = roi + (rim_colour - roi) * rim_a[:, None]
    a = alpha[:, None]
    frames[:, :, y0:y1, x0:x1] = roi + (colour.clamp(0, 1) - roi) * a


def _paint(c: tuple[float, float, float], mouth: MouthRig, dev: torch.device) -> torch.Tensor:
    """A painted colour (1, 3, 1, 1) in the photo's light: its brightness, colour cast and chroma."""
    rgb = torch.tensor(c, device=dev)
    grey = rgb.mean()
    rgb = (grey + (rgb - grey) * mouth.chroma) * mouth.tint.to(dev) * mouth.brightness
    return rgb[None, :, None, None]


def _centre(arch: torch.Tensor) -> torch.Tensor:
    """1 across the front teeth, fading to 0 before the mouth corners (smoothstep on the arch)."""
    t = ((arch - TEETH_FADE[0]) / (TEETH_FADE[1] - TEETH_FADE[0])).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _smooth_columns(y: torch.Tensor, k: int) -> torch.Tensor:
    """Round off the kinks of the 11-point lip polylines (B, W) with a k-column moving average."""
    padded = F.pad(y[:, None], (k // 2, k // 2), mode="replicate")
    return F.avg_pool1d(padded, k, stride=1)[:, 0]


def _seams(across: torch.Tensor) -> torch.Tensor:
    """A faint dark line between neighbouring teeth, whose width shrinks along the dental arch."""
    angle = torch.asin(across.clamp(-0.999, 0.999)) / TOOTH_ANGLE + 0.5
    return 1 - 0.22 * torch.exp(-((angle - angle.round()) ** 2) / 0.01)


def _teeth_shade(
    across: torch.Tensor, arch: torch.Tensor, yy: torch.Tensor, top: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """Shading (B, H, W) of synthetic upper teeth: lit at the centre, darker round the arch, in the
    upper lip's shadow at the top and a little translucent at the tips."""
    shade = (0.55 + 0.45 * arch.pow(0.7)) * _seams(across)[:, None]
    under_lip = 0.72 + 0.28 * ((yy - top) / (0.45 * visible).clamp(min=1)).clamp(0, 1)  # lip's shadow
    tips = 1 - 0.22 * ((yy - top) / visible.clamp(min=1)).clamp(0, 1) ** 3  # translucent tips
    return shade * under_lip * tips


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
