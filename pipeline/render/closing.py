"""Closing the photo's mouth for the rest pose, from the pixels rather than from FaceMesh alone.

FaceMesh is unreliable inside an open mouth: in smiling photos it puts the inner upper lip on the
teeth, so a warp driven by its inner-lip points leaves a light line of teeth between "closed" lips
(which FaceMesh itself then reads as an open mouth). Here every column between the mouth corners is
scanned for the run of non-lip pixels (teeth: pale; cavity: dark) between the outer lip contours,
which gives the real inner-lip edges. In a photo whose lips are no redder than its skin (black and
white, or faded) colour cannot tell teeth from lips; there teeth are the pixels clearly brighter than
both, and only where FaceMesh sees the mouth open (pale lips would otherwise read as teeth). The lips
are then brought together by a per-column vertical remap with a discontinuity exactly at the seam, so
no tooth pixel can be sampled into the rest pose; a smooth spline cannot do that. The teeth seen in
the photo are kept as a texture for the open mouth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.render import topology as T

NON_LIP_REDNESS = 0.75  # below this x the lip's redness a pixel is not lip (teeth, cavity)
NON_LIP_LUMA = 0.6  # below this x the lip's luma a pixel is not lip (the dark cavity)
TEETH_LUMA = 1.08  # teeth are brighter than the lips by at least this factor
# Teeth are near white (saturation ~0.16 in a warm portrait), skin is not (~0.45): a pale but
# skin-coloured pixel between the lips is lip, not an opening (thin pale lips read as "open" without it).
TEETH_MAX_SATURATION = 0.32
COLOUR_MARGIN = 0.02  # lips this much redder than the cheek skin: colour tells them from teeth
SKIN_LUMA = 0.95  # without colour, teeth are brighter than this x the cheek skin's luma ...
OPEN_FROM = 0.05  # ... and only looked for when FaceMesh's inner lips are this far apart / mouth width
GROW = 0.03  # the bright run grows down its soft edges by at most this x the mouth width
MIN_GAP = 1.5  # px: a thinner opening is just the lips' seam and is left alone
UPPER_SHARE = 0.4  # the upper lip comes down this share of the gap, the lower lip (jaw) the rest
SEAM_DARKEN = 0.78  # brightness of the line where the closed lips meet, at the mouth centre
SEAM_WIDTH = 0.012  # its half-width / mouth width (at least 0.7 px)
TEETH_TEX = (24, 96)  # rows, columns of the stored teeth texture


@dataclass(frozen=True)
class Opening:
    """The photo's mouth opening, per column `xs` (px) between the inner mouth corners."""

    xs: np.ndarray  # (W,) int columns
    upper: np.ndarray  # (W,) y of the last lip pixel above the opening (inner edge of the upper lip)
    lower: np.ndarray  # (W,) y of the first lip pixel below it
    teeth_fraction: float  # share of the opening's pixels that look like teeth

    @property
    def gap(self) -> np.ndarray:
        return np.maximum(self.lower - self.upper - 1, 0.0)


def _contour_y(points: np.ndarray, idx: tuple[int, ...], xs: np.ndarray) -> np.ndarray:
    p = points[list(idx)]
    order = np.argsort(p[:, 0])
    return np.interp(xs, p[order, 0], p[order, 1])


def _lip_colour(rgb: np.ndarray, points: np.ndarray) -> tuple[float, float]:
    """(redness, luma) of the lips, sampled inside the upper and lower lip bodies."""
    px = _lip_pixels(rgb, points)
    red, luma = _redness(px), px.mean(-1)
    return float(np.median(red)), float(np.median(luma))


def lip_colour(rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Median RGB (3,) in [0, 1] of the lips (the same samples as _lip_colour)."""
    return np.median(_lip_pixels(rgb, points), 0)


def _lip_pixels(rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 3) pixels in [0, 1] sampled inside the upper and lower lip bodies."""
    samples = []
    for outer, inner, t in ((0, 13, 0.35), (37, 82, 0.35), (267, 312, 0.35), (17, 14, 0.45), (84, 87, 0.45)):
        for s in (t - 0.1, t, t + 0.1):
            x, y = np.round(points[outer] + s * (points[inner] - points[outer])).astype(int)
            if 0 <= y < rgb.shape[0] and 0 <= x < rgb.shape[1]:
                samples.append(rgb[y, x])
    if not samples:
        return np.array([[0.6, 0.35, 0.35]])
    return np.array(samples, dtype=np.float64) / 255


def _redness(px: np.ndarray) -> np.ndarray:
    return (px[..., 0] - px[..., 1]) / (px.sum(-1) + 1e-6)


def _saturation(px: np.ndarray) -> np.ndarray:
    top = px.max(-1)
    return (top - px.min(-1)) / np.maximum(top, 1e-6)


def skin_colour(rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Median RGB (3,) in [0, 1] of a patch of plain cheek skin."""
    x, y = np.round(points[T.CHEEK_SKIN]).astype(int)
    r = max(2, rgb.shape[0] // 100)
    patch = rgb[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1].reshape(-1, 3)
    return np.median(patch, 0) / 255 if patch.size else np.array([0.8, 0.6, 0.5])


def find_opening(rgb: np.ndarray, points: np.ndarray) -> Opening:
    """Scan the mouth column by column for the non-lip run between the outer lip contours."""
    h = rgb.shape[0]
    left, right = sorted((float(points[61, 0]), float(points[291, 0])))
    xs = np.arange(int(np.ceil(left)), int(np.floor(right)) + 1)
    outer_up = _contour_y(points, T.LIP_UPPER_OUTER, xs)
    outer_lo = _contour_y(points, T.MOUTH_CORNERS_OUTER + T.LIP_LOWER_OUTER, xs)
    inner_mid = (
        _contour_y(points, T.LIP_UPPER_INNER, xs)
        + _contour_y(points, T.MOUTH_CORNERS_INNER + T.LIP_LOWER_INNER, xs)
    ) / 2
    lip_red, lip_luma = _lip_colour(rgb, points)
    skin = skin_colour(rgb, points)
    by_colour = lip_red > float(_redness(skin)) + COLOUR_MARGIN
    width = float(np.linalg.norm(points[61] - points[291]))
    seen_open = (
        float(points[T.LIP_BOTTOM_CENTRE_INNER, 1] - points[T.LIP_TOP_CENTRE_INNER, 1]) > OPEN_FROM * width
    )
    bright = max(TEETH_LUMA * lip_luma, SKIN_LUMA * float(skin.mean()))
    upper = np.round(inner_mid).astype(np.float64)
    lower = upper + 1
    teeth = total = 0
    for k, x in enumerate(xs):
        y0, y1 = int(np.ceil(outer_up[k])) + 1, int(np.floor(outer_lo[k]))
        y0, y1 = max(0, y0), min(h, y1)
        if y1 - y0 < 2:
            continue
        px = rgb[y0:y1, x].astype(np.float64) / 255
        luma = px.mean(-1)
        if by_colour:
            pale = (_redness(px) < NON_LIP_REDNESS * lip_red) & (_saturation(px) < TEETH_MAX_SATURATION)
        else:
            pale = (luma > bright) & seen_open
        non_lip = pale | (luma < NON_LIP_LUMA * lip_luma)
        # close one-pixel holes (a dark line between teeth rows, a highlight on the lower teeth)
        filled = non_lip.copy()
        filled[1:-1] |= non_lip[:-2] & non_lip[2:]
        run = _run_near(filled, inner_mid[k] - y0)
        if run is None:
            continue
        r0, r1 = run
        if not by_colour and pale[r0 : r1 + 1].any():
            # Without colour the teeth's edges fade into the lips (soft, or a small photo scaled
            # up): grow the bright run down its slopes to halfway between the teeth and the lips.
            low = (float(luma[r0 : r1 + 1].max()) + float(luma.min())) / 2
            reach = max(2, round(GROW * width))
            for _ in range(reach):
                if r0 > 0 and luma[r0 - 1] > low:
                    r0 -= 1
                if r1 < len(luma) - 1 and luma[r1 + 1] > low:
                    r1 += 1
        upper[k], lower[k] = y0 + r0 - 1, y0 + r1 + 2  # one more row: soft edges
        teeth += int((luma[r0 : r1 + 1] > TEETH_LUMA * lip_luma).sum())
        total += r1 - r0 + 1
    upper, lower = _tidy(upper, lower)
    return Opening(xs, upper, lower, teeth / total if total else 0.0)


def _run_near(mask: np.ndarray, centre: float) -> tuple[int, int] | None:
    """The run of True in `mask` that contains, or else lies nearest to, index `centre`."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return None
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]])
    dist = np.maximum(starts - centre, 0) + np.maximum(centre - ends, 0)
    k = int(np.argmin(dist))
    if dist[k] > 0.25 * len(mask) + 1:
        return None
    return int(starts[k]), int(ends[k])


def _tidy(upper: np.ndarray, lower: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smooth the edges along the mouth without letting any opening pixel back in, taper the corners."""
    # A lip highlight can read as teeth in a column or two: clip outliers to the local median first.
    k = 9
    windows = lambda a: np.lib.stride_tricks.sliding_window_view(np.pad(a, k // 2, mode="edge"), k)  # noqa: E731
    upper = np.maximum(upper, np.median(windows(upper), -1) - 1)
    lower = np.minimum(lower, np.median(windows(lower), -1) + 1)
    # Box-filtering a running minimum (maximum) gives a smooth edge that never crosses the raw one:
    # smooth, so the stretched lips show no steps; conservative, so no tooth pixel is sampled.
    box = lambda a: np.convolve(np.pad(a, k // 2, mode="edge"), np.ones(k) / k, mode="valid")  # noqa: E731
    up = box(windows(upper).min(-1))
    lo = box(windows(lower).max(-1))
    mid = (up + lo) / 2
    n = len(up)
    across = np.abs(np.linspace(-1, 1, n)) if n > 1 else np.zeros(n)
    taper = np.clip((1 - across) / 0.08, 0, 1)  # the opening ends at the corners
    half = (lo - up) / 2 * taper + 0.5 * (1 - taper)
    return mid - half, mid + half


def close_mouth(
    image: torch.Tensor, points: np.ndarray, opening: Opening
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Close the opening: (image (1, 3, S, S), moved landmarks, seam y per opening column).

    Per column, the band from above the upper lip down to the seam samples the band above the
    opening, and the band from the seam to the chin samples the band below it: the lips meet and
    what lay between them is gone. Columns beyond the corners are untouched.
    """
    size = image.shape[-1]
    xs, up, lo = opening.xs, opening.upper, opening.lower
    seam = _smooth_line(up + UPPER_SHARE * (lo - up))  # the lips meet along a smooth line
    seam = np.clip(seam, up + 0.5, lo - 0.5) if len(seam) else seam
    top = _contour_y(points, T.LIP_UPPER_OUTER, xs)
    top = top - np.maximum(0.8 * (top - float(points[2, 1])), 2.0)  # up to near the nose
    bottom = _contour_y(points, T.MOUTH_CORNERS_OUTER + T.LIP_LOWER_OUTER, xs)
    bottom = bottom + 0.6 * np.maximum(float(points[T.CHIN_BOTTOM, 1]) - bottom, 2.0)

    ys = np.arange(size, dtype=np.float64)[:, None]
    src = np.broadcast_to(ys, (size, len(xs))).copy()
    above = (ys >= top) & (ys < seam)
    below = (ys >= seam) & (ys <= bottom)
    src_up = top + (ys - top) * (up - top) / np.maximum(seam - top, 1e-6)
    src_lo = lo + (ys - seam) * (bottom - lo) / np.maximum(bottom - seam, 1e-6)
    src = np.where(above, src_up, np.where(below, src_lo, src))
    grid_y = np.broadcast_to(ys, (size, size)).copy()
    inside = (xs >= 0) & (xs < size)
    grid_y[:, xs[inside]] = src[:, inside]
    grid_x = np.broadcast_to(np.arange(size, dtype=np.float64)[None], (size, size))
    grid = torch.from_numpy(np.stack([grid_x, grid_y], -1)).float()[None] * (2.0 / (size - 1)) - 1
    closed = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
    closed = _darken_seam(closed, xs, seam, float(np.linalg.norm(points[61] - points[291])))

    moved = points.copy()
    for idx in (T.LIP_UPPER_OUTER, T.LIP_LOWER_OUTER, T.LIP_UPPER_INNER, T.LIP_LOWER_INNER, T.CHIN):
        for i in idx:
            moved[i, 1] = _forward_y(points[i], xs, top, up, seam, lo, bottom)
    for i in T.LIP_UPPER_INNER[1:-1] + T.LIP_LOWER_INNER:  # the inner lips now meet at the seam
        moved[i, 1] = float(np.interp(points[i, 0], xs, seam))
    return closed.clamp(0, 1), moved, seam


def _smooth_line(y: np.ndarray, passes: int = 3, k: int = 9) -> np.ndarray:
    for _ in range(passes):
        y = np.convolve(np.pad(y, k // 2, mode="edge"), np.ones(k) / k, mode="valid")
    return y


def _forward_y(
    p: np.ndarray, xs: np.ndarray, top: np.ndarray, up: np.ndarray, seam: np.ndarray, lo, bottom
) -> float:
    """Where the remap takes a landmark (the inverse of the backward map, column by column)."""
    x, y = float(p[0]), float(p[1])
    if x < xs[0] or x > xs[-1]:
        return y
    t, u, s, l_, b = (float(np.interp(x, xs, a)) for a in (top, up, seam, lo, bottom))
    if t <= y <= u:
        return t + (y - t) * (s - t) / max(u - t, 1e-6)
    if l_ <= y <= b:
        return s + (y - l_) * (b - s) / max(b - l_, 1e-6)
    if u < y < l_:
        return s
    return y


def _darken_seam(image: torch.Tensor, xs: np.ndarray, seam: np.ndarray, mouth_width: float) -> torch.Tensor:
    """A soft shadow line where the lips meet (a closed mouth has one), fading towards the corners."""
    size = image.shape[-1]
    ys = torch.arange(size, dtype=torch.float32)[:, None]
    across = np.linspace(-1, 1, len(xs)) if len(xs) > 1 else np.zeros(len(xs))
    depth = torch.from_numpy((1 - SEAM_DARKEN) * (1 - across**2) ** 0.5).float()
    line = torch.from_numpy(seam).float()[None]
    width = max(0.7, size / 512, SEAM_WIDTH * mouth_width)  # a face scaled up gets a wider line
    shade = 1 - depth[None] * torch.exp(-(((ys - line) / width) ** 2))
    inside = (xs >= 0) & (xs < size)
    out = image.clone()
    cols = torch.from_numpy(xs[inside])
    out[..., cols] = image[..., cols] * shade[:, torch.from_numpy(inside)]
    return out


def teeth_texture(
    image: torch.Tensor, opening: Opening, width: float, span: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The photo's visible teeth as a (4, rows, cols) RGBA texture and its height (cols,) px, or None.

    None when the photo shows no teeth. Columns span the opening corner to corner; rows run from
    the upper lip's edge down to the lower lip's. Sampled before the mouth is closed.
    """
    if opening.teeth_fraction < 0.4 or float(np.median(opening.gap)) < max(MIN_GAP, 0.04 * width):
        return None
    size = image.shape[-1]
    rows, cols = TEETH_TEX
    x = np.linspace(min(span), max(span), cols)
    up = np.interp(x, opening.xs, opening.upper) + 1.5  # skip the lip's soft edge
    lo = np.interp(x, opening.xs, opening.lower) - 1.5
    v = np.linspace(0, 1, rows)[:, None]
    y = up[None] + v * (lo - up)[None]
    grid = np.stack([np.broadcast_to(x[None], y.shape), y], -1)
    g = torch.from_numpy(grid).float()[None] * (2.0 / (size - 1)) - 1
    texture = F.grid_sample(image, g, mode="bilinear", padding_mode="border", align_corners=True)[0]
    # Alpha channel: how tooth-like each column is (the smile's dark corners are not teeth).
    luma = texture.mean(0).mean(0)
    t = ((luma / luma.max().clamp(min=1e-6) - 0.6) / 0.25).clamp(0, 1)
    alpha = (t * t * (3 - 2 * t))[None, None].expand(1, rows, cols)
    rgba = torch.cat([texture, alpha], 0)
    return rgba.contiguous(), torch.from_numpy(np.maximum(lo - up, 0.0)).float()
