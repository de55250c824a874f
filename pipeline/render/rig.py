"""The per-photo rig: a square face crop with a closed mouth, and displacement fields that animate it.

Everything here runs once per (photo, size) in `prepare`; rendering a frame is then just a weighted
sum of precomputed fields (the basis motions, the head motion's affine terms and the pixel grid
itself, all in grid_sample's normalised units, so one batched matrix product gives the sampling
grid), one grid_sample and the mouth interior.

The head motion fades out towards every edge of the crop: where a small or tightly cut photo puts the
head against the crop's edge, a moving head would otherwise sample beyond it and smear the edge row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipeline.render import topology as T
from pipeline.render.closing import MIN_GAP, close_mouth, find_opening, lip_colour, skin_colour, teeth_texture
from pipeline.render.tps import tps_backward_fields

CROP_SCALE = 2.3  # crop side / face size: the head plus some hair, neck and background
CROP_DROP = 0.1  # move the crop centre down by this fraction of the face height (more neck, less sky)
JAW_TRAVEL = 0.3  # full jaw opening (inner-lip gap at weight 1) / mouth width
WIDE_STRETCH = 0.16  # half-width gained at weight +1 / half-width
WIDE_FLATTEN = 0.25  # vertical lip flattening at weight +1
# Rounded lips (o, u, w, sh) at weight 1: the corners come in, the smile's upturn flattens out (a
# rounded mouth does not smile) and the lips push forward, which shows more of them.
ROUND_PULL = 0.4  # half-width lost / half-width
ROUND_FLATTEN = 0.6  # share of the seam's curve (corners above the centre in a smile) taken out
ROUND_POUT = 0.15  # lips thicken by this share, away from the line where they meet
ROUND_SKIN = 0.5  # the skin around the lips comes in this share of the lips' pull
BLINK_MEET = 0.8  # closed lids meet this far down from the upper lid towards the lower one
BROW_LIFT = 0.035  # brow rise at weight 1 / face height: a visible raise that does not reach the hairline
BROW_SKIN_SHARE = 0.45  # the skin just above the brows rises this share of the brow lift
# Motion falls off outside the face oval: full within MASK_INNER x the oval radii, none beyond MASK_OUTER.
MASK_INNER = 1.3
MASK_OUTER = 1.9
EDGE_RAMP = 0.12  # head motion fades in over this share of the crop side from each crop edge
# Skin of a typical portrait, which the painted colours (mouth interior) were chosen against.
REFERENCE_SKIN = (0.94, 0.82, 0.75)
FULL_CHROMA = 0.2  # cheek saturation at and above which painted colours keep their full colour
# Basis field order; the controls' first four columns follow it (the signed lip-shape control drives
# WIDE when positive and ROUND when negative).
JAW, WIDE, BLINK, BROW, ROUND = 0, 1, 2, 3, 4
N_BASIS = 5
# After the basis in Rig.fields: the head motion's terms (x offset from x, y and 1, then the y
# offset's), each masked; last, the pixel grid. Weights per frame: warp.render_frames.
N_HEAD = 6
N_FIELDS = N_BASIS + N_HEAD + 1

Moves = dict[int, tuple[float, float]]  # landmark index -> forward displacement (dx, dy) in px


@dataclass(frozen=True)
class MouthRig:
    """What the mouth-interior painter needs: inner-lip contours and how each basis field moves them."""

    upper: torch.Tensor  # (11, 2) inner upper lip, corner to corner, rest pose
    lower: torch.Tensor  # (11, 2) inner lower lip, corner to corner, rest pose
    upper_moves: torch.Tensor  # (N_BASIS, 11, 2) forward displacement of `upper` per unit weight
    lower_moves: torch.Tensor  # (N_BASIS, 11, 2)
    upper_follow: torch.Tensor  # (11,) how much each point follows the head motion (the head mask)
    lower_follow: torch.Tensor  # (11,)
    width: float  # mouth width (corner to corner) in px
    brightness: float  # scene brightness relative to a typical portrait, from the cheek skin
    tint: torch.Tensor  # (3,) per-channel colour cast of the photo against a typical portrait (mean 1)
    chroma: float  # 0 (black and white photo) .. 1 (full colour): how much colour painted parts get
    lip: torch.Tensor  # (3,) the photo's lip colour, RGB in [0, 1]
    teeth: torch.Tensor | None  # (4, rows, cols) RGBA: the photo's own teeth, when it shows them
    teeth_height: torch.Tensor | None  # (cols,) their visible height in the photo, px


@dataclass(frozen=True)
class EyeRig:
    """One eye's lid contours (corner to corner, left to right) and their blink-field motion."""

    upper: torch.Tensor  # (9, 2) rest pose
    lower: torch.Tensor  # (9, 2)
    upper_moves: torch.Tensor  # (N_BASIS, 9, 2) forward displacement per unit weight
    lower_moves: torch.Tensor  # (N_BASIS, 9, 2)
    upper_follow: torch.Tensor  # (9,) how much each point follows the head motion
    lower_follow: torch.Tensor  # (9,)


@dataclass(frozen=True)
class Rig:
    size: int
    image: torch.Tensor  # (1, 3, S, S) float in [0, 1]: the crop, mouth closed
    still: np.ndarray  # (S, S, 3) uint8: the same image, for everything outside the moving region
    points: np.ndarray  # (478, 2) landmarks in frame px, rest pose
    roi: tuple[int, int, int, int]  # y0, y1, x0, x1: the only region that ever moves
    # (N_FIELDS, h, w, 2) over the region, in grid_sample units (x 2 / (S - 1)): backward offsets per
    # unit basis weight, the masked head-motion terms, then the pixel grid itself (minus 1)
    fields: torch.Tensor
    pivot: torch.Tensor  # (2,) the head turns about this point (roughly the top of the neck)
    mouth: MouthRig
    eyes: tuple[EyeRig, ...]
    prewarped: bool  # whether the photo's open mouth was closed for the rest pose


def crop_box(points: np.ndarray, height: int, width: int) -> tuple[float, float, float]:
    """(left, top, side) of the square face crop in a height x width picture, kept inside it."""
    oval = points[list(T.FACE_OVAL)]
    (x0, y0), (x1, y1) = oval.min(0), oval.max(0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + CROP_DROP * (y1 - y0)
    side = float(min(CROP_SCALE * max(x1 - x0, y1 - y0), height, width))
    left = float(np.clip(cx - side / 2, 0, width - side))
    top = float(np.clip(cy - side / 2, 0, height - side))
    return left, top, side


def crop_face(rgb: np.ndarray, points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A size x size crop centred on the face, and the landmarks moved into it."""
    left, top, side = crop_box(points, *rgb.shape[:2])
    resample = Image.LANCZOS if side > size else Image.BICUBIC
    crop = Image.fromarray(rgb).resize((size, size), resample, box=(left, top, left + side, top + side))
    f = size / side
    return np.array(crop, dtype=np.uint8), ((points - [left, top]) * f).astype(np.float64)


def _ellipse_radius(pixels: torch.Tensor, points: np.ndarray) -> torch.Tensor:
    """Normalised elliptic distance of each pixel from the face oval (1 on the oval, roughly)."""
    oval = points[list(T.FACE_OVAL)]
    centre = (oval.min(0) + oval.max(0)) / 2
    radii = (oval.max(0) - oval.min(0)) / 2
    dx = (pixels[..., 0] - float(centre[0])) / float(radii[0])
    dy = (pixels[..., 1] - float(centre[1])) / float(radii[1])
    return torch.sqrt(dx.square() + dy.square())


def _falloff(radius: torch.Tensor) -> torch.Tensor:
    """1 inside MASK_INNER, a smoothstep down to exactly 0 at MASK_OUTER."""
    t = ((MASK_OUTER - radius) / (MASK_OUTER - MASK_INNER)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _edge_ramp(size: int) -> torch.Tensor:
    """(S, S): 0 on the crop's edge, a smoothstep up to 1 at EDGE_RAMP x the side inside it."""
    axis = torch.arange(size, dtype=torch.float32)
    to_edge = torch.minimum(axis, size - 1 - axis)
    t = (to_edge / max(1.0, EDGE_RAMP * size)).clamp(0, 1)
    ramp = t * t * (3 - 2 * t)
    return torch.minimum(ramp[:, None], ramp[None, :])


def _anchors(points: np.ndarray, size: int, fixed: tuple[tuple[int, ...], ...] | None = None) -> np.ndarray:
    """Points that stay put: rings around the face, the frame border, and `fixed` landmark groups
    (by default nose, cheeks, brows and eye corners: what the mouth and the eyelids must not drag)."""
    oval = points[list(T.FACE_OVAL)]
    centre = oval.mean(0)
    t = np.linspace(0, size - 1, 9)
    zeros, far = np.zeros_like(t), np.full_like(t, size - 1)
    border = np.concatenate(
        [np.stack([t, zeros], 1), np.stack([t, far], 1), np.stack([zeros, t], 1), np.stack([far, t], 1)]
    )
    fixed = fixed if fixed is not None else (T.NOSE, T.CHEEKS, T.BROWS, T.EYE_CORNERS)
    anchors = np.concatenate(
        [centre + 1.35 * (oval - centre), centre + 1.8 * (oval - centre), border]
        + [points[list(idx)] for idx in fixed]
    )
    inside = np.all((anchors > -0.2 * size) & (anchors < 1.2 * size), axis=1)
    return anchors[inside]


def _controls(points: np.ndarray, anchors: np.ndarray, moves: Moves) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) control points of one basis field: the moved landmarks, then the anchors."""
    idx = list(moves)
    d = np.array([moves[i] for i in idx], dtype=np.float64)
    return np.concatenate([points[idx], anchors]), np.concatenate([points[idx] + d, anchors])


def _basis_moves(points: np.ndarray) -> list[Moves]:
    """Forward landmark moves at unit weight for each basis field (JAW, WIDE, BLINK, BROW)."""
    width = float(np.linalg.norm(points[61] - points[291]))
    u = JAW_TRAVEL * width
    jaw: Moves = {}
    groups = [
        (T.LIP_LOWER_INNER, 0.88),
        (T.LIP_LOWER_OUTER, 0.80),
        (T.LIP_UPPER_INNER[1:-1], -0.12),
        (T.LIP_UPPER_OUTER[1:-1], -0.06),
        (T.MOUTH_CORNERS_OUTER + T.MOUTH_CORNERS_INNER, 0.30),  # corners drop a little with the jaw
        (T.CHIN, 0.70),
        (T.JAW_MID, 0.50),
        (T.JAW_HIGH, 0.25),
    ]
    for idx, share in groups:
        for i in idx:
            jaw[i] = (0.0, share * u)

    centre = (points[61] + points[291]) / 2
    # Lips flatten or round about the line where they meet (not about the corners, which sit higher
    # in a smile): the inner lips stay together, so rounding never opens a closed mouth.
    seam = points[list(T.LIP_UPPER_INNER)]
    order = np.argsort(seam[:, 0])
    wide: Moves = {}
    lips = T.LIP_UPPER_OUTER + T.LIP_LOWER_OUTER + T.LIP_UPPER_INNER + T.LIP_LOWER_INNER
    for i in lips:
        across = (points[i, 0] - centre[0]) / (width / 2)  # -1 .. 1 corner to corner
        meet = float(np.interp(points[i, 0], seam[order, 0], seam[order, 1]))
        wide[i] = (WIDE_STRETCH * width / 2 * across, -WIDE_FLATTEN * (points[i, 1] - meet))

    blink: Moves = {}
    for upper, lower in T.EYE_LIDS:
        meet = points[upper] + BLINK_MEET * (points[lower] - points[upper])
        blink[upper] = tuple(meet - points[upper])
        blink[lower] = tuple(0.9 * (meet - points[lower]))

    # Brows rise; the skin just above them follows part way and the eyelids stay put, so the painted
    # lids still fit the eyes during a raise (the forehead is anchored separately, see _brow_anchors).
    oval = points[list(T.FACE_OVAL)]
    lift = BROW_LIFT * float(oval[:, 1].max() - oval[:, 1].min())
    brow: Moves = {i: (0.0, -lift) for i in T.BROW_LINES}
    brow.update({i: (0.0, -BROW_SKIN_SHARE * lift) for i in T.BROW_SKIN})
    brow.update({i: (0.0, 0.0) for pair in T.EYE_LIDS for i in pair})
    # Rounding: about the same seam, relative to where the seam crosses the mouth's centre line.
    centre_meet = float(np.interp(centre[0], seam[order, 0], seam[order, 1]))
    round_: Moves = {}
    for i in lips:
        across = (points[i, 0] - centre[0]) / (width / 2)
        meet = float(np.interp(points[i, 0], seam[order, 0], seam[order, 1]))
        dy = ROUND_FLATTEN * (centre_meet - meet) + ROUND_POUT * (points[i, 1] - meet)
        round_[i] = (-ROUND_PULL * width / 2 * across, dy)
    for i in T.PERIORAL:
        across = float(np.clip((points[i, 0] - centre[0]) / (width / 2), -1.2, 1.2))
        meet = float(np.interp(points[i, 0], seam[order, 0], seam[order, 1]))
        dy = ROUND_FLATTEN * (centre_meet - meet)
        round_[i] = (-ROUND_SKIN * ROUND_PULL * width / 2 * across, ROUND_SKIN * dy)
    return [jaw, wide, blink, brow, round_]


def _brightness(rgb: np.ndarray, points: np.ndarray) -> float:
    """Mean cheek-skin level relative to a typical portrait (0.6), clamped to a sane range."""
    x, y = np.round(points[T.CHEEK_SKIN]).astype(int)
    r = max(2, rgb.shape[0] // 100)
    patch = rgb[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1].astype(np.float32) / 255
    level = float(patch.mean()) if patch.size else 0.6
    return float(np.clip(level / 0.6, 0.6, 1.3))


def palette(rgb: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, float]:
    """(tint (3,), chroma) of the photo, from its cheek skin: painted colours take on the photo's
    colour cast (warm, cool) and lose their colour in a black and white photo."""
    skin = skin_colour(rgb, points)
    top = float(skin.max())
    chroma = float(np.clip((top - float(skin.min())) / max(top, 1e-6) / FULL_CHROMA, 0, 1))
    ref = np.array(REFERENCE_SKIN)
    cast = (skin / max(float(skin.mean()), 1e-6)) / (ref / ref.mean())
    tint = 1 + chroma * (np.sqrt(np.clip(cast, 0.25, 4)) - 1)
    return tint / tint.mean(), chroma


def _follow(mask: torch.Tensor, points: np.ndarray) -> torch.Tensor:
    """The mask's value at each point (nearest pixel, clamped to the frame)."""
    size = mask.shape[0]
    idx = np.clip(np.round(points), 0, size - 1).astype(int)
    return mask[idx[:, 1], idx[:, 0]].clone()


def _fields(
    basis: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor, pivot: torch.Tensor, size: int
) -> torch.Tensor:
    """Rig.fields over a region of an S x S crop: basis (N_BASIS, h, w, 2) offsets in px (masked),
    pixels (h, w, 2), the head mask (h, w) and the pivot (2,)."""
    rel = (pixels - pivot) * mask[..., None]
    zero = torch.zeros_like(mask)
    head = [
        torch.stack([rel[..., 0], zero], -1),
        torch.stack([rel[..., 1], zero], -1),
        torch.stack([mask, zero], -1),
        torch.stack([zero, rel[..., 0]], -1),
        torch.stack([zero, rel[..., 1]], -1),
        torch.stack([zero, mask], -1),
    ]
    fields = torch.cat([basis, torch.stack(head), pixels[None]]) * (2.0 / (size - 1))
    fields[-1] -= 1
    return fields


def _region(mask: torch.Tensor, margin: int = 2) -> tuple[int, int, int, int]:
    """Bounding box (y0, y1, x0, x1) of the nonzero part of `mask`, plus a margin."""
    ys = torch.nonzero(mask.any(1)).flatten()
    xs = torch.nonzero(mask.any(0)).flatten()
    size = mask.shape[0]
    if len(ys) == 0:
        return 0, 1, 0, 1
    return (
        max(0, int(ys[0]) - margin),
        min(size, int(ys[-1]) + 1 + margin),
        max(0, int(xs[0]) - margin),
        min(size, int(xs[-1]) + 1 + margin),
    )


def build_rig(rgb: np.ndarray, points: np.ndarray, size: int, device: torch.device) -> Rig:
    """Crop the photo around the face, close its mouth if open, and solve the basis fields."""
    crop, pts = crop_face(rgb, points, size)
    return rig_from_crop(crop, pts, device)


def rig_from_crop(crop: np.ndarray, pts: np.ndarray, device: torch.device) -> Rig:
    """The rig of a square face crop (S, S, 3) uint8 whose landmarks `pts` are in crop px."""
    size = crop.shape[0]
    axis = torch.arange(size, dtype=torch.float32)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    pixels = torch.stack([xs, ys], -1)  # (S, S, 2)
    mask = _falloff(_ellipse_radius(pixels, pts)) * _edge_ramp(size)
    image = torch.from_numpy(crop).permute(2, 0, 1).float().div(255)[None]

    width = float(np.linalg.norm(pts[61] - pts[291]))
    opening = find_opening(crop, pts)
    teeth = teeth_texture(image, opening, width, (float(pts[78, 0]), float(pts[308, 0])))
    prewarped = bool(opening.gap.max() > MIN_GAP)
    if prewarped:
        image, pts, _ = close_mouth(image, pts, opening)
        crop = (image[0].permute(1, 2, 0) * 255 + 0.5).to(torch.uint8).numpy()

    moves = _basis_moves(pts)
    anchors = _anchors(pts, size)
    brow_anchors = _anchors(pts, size, (T.NOSE, T.CHEEKS, T.EYE_CORNERS, T.FOREHEAD))
    pairs = [_controls(pts, brow_anchors if k == BROW else anchors, m) for k, m in enumerate(moves)]
    y0, y1, x0, x1 = _region(mask > 0)
    region = (slice(y0, y1), slice(x0, x1))
    basis = tps_backward_fields(pairs, size)[:, y0:y1, x0:x1] * mask[region][None, ..., None]

    def forward(idx: tuple[int, ...]) -> torch.Tensor:
        d = [[m.get(i, (0.0, 0.0)) for i in idx] for m in moves]
        return torch.tensor(np.array(d), dtype=torch.float32, device=device)

    def follow(idx: tuple[int, ...]) -> torch.Tensor:
        return _follow(mask, pts[list(idx)]).to(device)

    tint, chroma = palette(crop, pts)

    lower_idx = T.MOUTH_CORNERS_INNER[:1] + T.LIP_LOWER_INNER + T.MOUTH_CORNERS_INNER[1:]
    mouth = MouthRig(
        upper=torch.tensor(pts[list(T.LIP_UPPER_INNER)], dtype=torch.float32, device=device),
        lower=torch.tensor(pts[list(lower_idx)], dtype=torch.float32, device=device),
        upper_moves=forward(T.LIP_UPPER_INNER),
        lower_moves=forward(lower_idx),
        upper_follow=follow(T.LIP_UPPER_INNER),
        lower_follow=follow(lower_idx),
        width=width,
        brightness=_brightness(crop, pts),
        tint=torch.tensor(tint, dtype=torch.float32, device=device),
        chroma=chroma,
        lip=torch.tensor(lip_colour(crop, pts), dtype=torch.float32, device=device),
        teeth=None if teeth is None else teeth[0].to(device),
        teeth_height=None if teeth is None else teeth[1].to(device),
    )
    eyes = []
    for corners, lids in ((T.RIGHT_EYE_CORNERS, T.RIGHT_EYE_LIDS), (T.LEFT_EYE_CORNERS, T.LEFT_EYE_LIDS)):
        upper_idx = (corners[0], *(u for u, _ in lids), corners[1])
        lower_idx = (corners[0], *(lo for _, lo in lids), corners[1])
        if pts[corners[0], 0] > pts[corners[1], 0]:  # contours must run left to right
            upper_idx, lower_idx = upper_idx[::-1], lower_idx[::-1]
        eyes.append(
            EyeRig(
                upper=torch.tensor(pts[list(upper_idx)], dtype=torch.float32, device=device),
                lower=torch.tensor(pts[list(lower_idx)], dtype=torch.float32, device=device),
                upper_moves=forward(upper_idx),
                lower_moves=forward(lower_idx),
                upper_follow=follow(upper_idx),
                lower_follow=follow(lower_idx),
            )
        )
    oval = pts[list(T.FACE_OVAL)]
    face_h = float(oval[:, 1].max() - oval[:, 1].min())
    pivot = torch.tensor(
        [float(oval[:, 0].mean()), float(pts[T.CHIN_BOTTOM, 1]) + 0.3 * face_h], dtype=torch.float32
    )
    return Rig(
        size=size,
        image=image.contiguous().to(device),
        still=np.ascontiguousarray(crop),
        points=pts,
        roi=(y0, y1, x0, x1),
        fields=_fields(basis, pixels[region], mask[region], pivot, size).contiguous().to(device),
        pivot=pivot.to(device),
        mouth=mouth,
        eyes=tuple(eyes),
        prewarped=prewarped,
    )
