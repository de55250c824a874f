"""A frame sheet of the hard-photo set: one row per photo (tests/render_sheet.py draws the two portraits).

    .venv/bin/python -m tests.data.hard_photos.sheet [out.png] [photo ...]

Columns: the whole square crop at rest, the mouth zoomed at rest, open "a", rounded "o" and "u", an
"e", and the whole crop at the deepest nod with the head swayed to its extreme (where a crop edge
that cuts through the head would smear).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from pipeline.render import topology as T
from pipeline.render.warp import (
    JAW_COL,
    N_CONTROLS,
    NOD_COL,
    ROT_COL,
    SHIFT_Y_COL,
    WIDE_COL,
    WarpRenderer,
    render_frames,
)

HERE = Path(__file__).resolve().parent
PHOTOS = [HERE / f"{n}.jpg" for n in ("small", "tilted", "grayscale", "smiling", "group", "combo")]
MOUTH = [
    ("rest", {}),
    ("open 'a'", {JAW_COL: 1.0, WIDE_COL: 0.16}),
    ("round 'o'", {JAW_COL: 0.6, WIDE_COL: -0.8}),
    ("round 'u'", {JAW_COL: 0.3, WIDE_COL: -0.8}),
    ("'i'", {JAW_COL: 0.4, WIDE_COL: 0.72}),
]
NOD = ("nod + sway, whole crop", {NOD_COL: 1.0, ROT_COL: math.radians(1.8), SHIFT_Y_COL: 0.008, JAW_COL: 0.5})
SIZE, TILE = 512, 220


def _controls(poses: list[tuple[str, dict[int, float]]]) -> torch.Tensor:
    controls = torch.zeros(len(poses), N_CONTROLS)
    for i, (_, pose) in enumerate(poses):
        for col, v in pose.items():
            controls[i, col] = v
    return controls


def sheet(out: Path, photos: list[Path]) -> None:
    renderer = WarpRenderer(device="cpu")
    rows = []
    for photo in photos:
        avatar = renderer.prepare(photo.read_bytes(), SIZE)
        frames = render_frames(avatar.rig, _controls([*MOUTH, NOD]))
        pts = avatar.rig.points[list(T.LIP_UPPER_OUTER + T.LIP_LOWER_OUTER)]
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        side = 1.5 * max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        tiles = [Image.fromarray(frames[0]).resize((TILE, TILE), Image.LANCZOS)]
        tiles += [Image.fromarray(f).resize((TILE, TILE), Image.LANCZOS, box=box) for f in frames[:-1]]
        tiles.append(Image.fromarray(frames[-1]).resize((TILE, TILE), Image.LANCZOS))
        rows.append((photo.stem, tiles))
    names = ["rest, whole crop", *(f"mouth: {n}" for n, _ in MOUTH), NOD[0]]
    img = Image.new("RGB", (TILE * len(names), 24 + (TILE + 16) * len(rows)), "white")
    draw = ImageDraw.Draw(img)
    for i, name in enumerate(names):
        draw.text((i * TILE + 6, 6), name, fill="black")
    for r, (stem, tiles) in enumerate(rows):
        top = 24 + r * (TILE + 16)
        draw.text((6, top + 2), stem, fill="black")
        for i, t in enumerate(tiles):
            img.paste(t, (i * TILE, top + 16))
    img.save(out)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("hard_photos_sheet.png")
    sheet(target, [Path(p) for p in sys.argv[2:]] or PHOTOS)
