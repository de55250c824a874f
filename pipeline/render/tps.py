"""Thin-plate-spline displacement fields: dense, smooth warps from a few moved landmarks.

A field is solved once per photo and reused for every frame, so solving costs nothing per frame; it is
solved on a coarse grid (FIELD_GRID px) and upsampled because the warps are smooth anyway and the
dense evaluation is O(pixels x control points).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FIELD_GRID = 128  # solve/evaluate the spline on this many px per side, then upsample
REGULARISATION = 1e-4  # a little smoothing so that near-coincident control points do not explode
_EVAL_CHUNK = 65536  # grid points per distance-matrix chunk (bounds memory at large grids)


def _kernel(d: torch.Tensor) -> torch.Tensor:
    """The 2-D thin-plate radial basis U(r) = r^2 log r (0 at r = 0)."""
    return d.square() * torch.log(d + 1e-12)


def tps_backward_field(src: np.ndarray, dst: np.ndarray, size: int, grid: int = FIELD_GRID) -> torch.Tensor:
    """Backward offsets (size, size, 2) in px such that output pixel p samples the input at p + field[p].

    `src` (N, 2) are landmark positions in the photo and `dst` (N, 2) where they should appear, in px
    of a size x size frame. Backward mapping is what grid_sample needs; interpolating the offsets
    src - dst at dst is exact at the control points and a close approximation between them for the
    small motions of a face.
    """
    return tps_backward_fields([(src, dst)], size, grid)[0]


def tps_backward_fields(
    pairs: list[tuple[np.ndarray, np.ndarray]], size: int, grid: int = FIELD_GRID
) -> torch.Tensor:
    """Several fields at once (len(pairs), size, size, 2), as tps_backward_field gives each.

    Fields that share control points (the anchors that stay put) share their kernel columns: the
    radial basis is evaluated once per distinct point on the grid, which is where the time goes.
    """
    # Work in units of the frame side so that the system is equally well conditioned at any size.
    centres, weights, affines = [], [], []
    for src, dst in pairs:
        c = torch.as_tensor(dst / size, dtype=torch.float64)
        v = torch.as_tensor((src - dst) / size, dtype=torch.float64)
        n = c.shape[0]
        p = torch.cat([torch.ones(n, 1, dtype=torch.float64), c], 1)
        a = torch.zeros(n + 3, n + 3, dtype=torch.float64)
        a[:n, :n] = _kernel(torch.cdist(c, c)) + REGULARISATION * torch.eye(n, dtype=torch.float64)
        a[:n, n:] = p
        a[n:, :n] = p.T
        b = torch.zeros(n + 3, 2, dtype=torch.float64)
        b[:n] = v
        w = torch.linalg.solve(a, b)
        centres.append(c)
        weights.append(w[:n])
        affines.append(w[n:])
    union, where = torch.unique(torch.cat(centres), dim=0, return_inverse=True)
    k = len(pairs)
    stacked = torch.zeros(union.shape[0], 2 * k, dtype=torch.float64)  # kernel weights per distinct point
    offset = 0
    for f, w in enumerate(weights):
        idx = where[offset : offset + w.shape[0]]
        stacked[:, 2 * f : 2 * f + 2].index_add_(0, idx, w)
        offset += w.shape[0]
    affine = torch.cat(affines, 1)  # (3, 2k)

    # Coarse pixel i stands for the output position its centre covers (the align_corners=False rule).
    step = size / grid
    axis = ((torch.arange(grid, dtype=torch.float64) + 0.5) * step - 0.5) / size
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    g = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    out = torch.empty(g.shape[0], 2 * k, dtype=torch.float64)
    for i in range(0, g.shape[0], _EVAL_CHUNK):
        gg = g[i : i + _EVAL_CHUNK]
        ones = torch.ones(gg.shape[0], 1, dtype=torch.float64)
        out[i : i + _EVAL_CHUNK] = (
            _kernel(torch.cdist(gg, union)) @ stacked + torch.cat([ones, gg], 1) @ affine
        )
    fields = (out.reshape(grid, grid, k, 2).permute(2, 0, 1, 3) * size).float()  # output px
    if grid != size:
        fields = F.interpolate(
            fields.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", align_corners=False
        ).permute(0, 2, 3, 1)
    return fields.contiguous()
