"""Draw the renderer's frame sheet (docs/frames.png): one row per photo, one column per pose.

    .venv/bin/python -m tests.render_sheet [out.png]

Poses: rest, open vowel "a", rounded vowel "o/u", blink, and the whole frame mid-speech. Crops are
zoomed on the face so mouth and eyes can be judged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from pipeline.render.warp import BLINK_COL, JAW_COL, N_CONTROLS, WIDE_COL, WarpRenderer, render_frames

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = [ROOT / "assets" / "avatar.jpg", ROOT / "assets" / "grace_hopper.jpg"]
POSES = [
    ("rest", {}),
    ("open 'a'", {JAW_COL: 1.0, WIDE_COL: 0.16}),
    ("round 'o'", {JAW_COL: 0.6, WIDE_COL: -0.8}),
    ("blink", {BLINK_COL: 1.0}),
    ("whole frame, 'e'", {JAW_COL: 0.7, WIDE_COL: 0.3}),
]
SIZE, TILE = 512, 300


def sheet(out: Path) -> None:
    renderer = WarpRenderer(device="cpu")
    rows = []
    for photo in PHOTOS:
        avatar = renderer.prepare(photo.read_bytes(), SIZE)
        controls = torch.zeros(len(POSES), N_CONTROLS)
        for i, (_, pose) in enumerate(POSES):
            for col, v in pose.items():
                controls[i, col] = v
        frames = render_frames(avatar.rig, controls)
        pts = avatar.rig.points
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        side = 1.1 * max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        tiles = [Image.fromarray(f).resize((TILE, TILE), Image.LANCZOS, box=box) for f in frames[:-1]]
        tiles.append(Image.fromarray(frames[-1]).resize((TILE, TILE), Image.LANCZOS))
        rows.append(tiles)
    img = Image.new("RGB", (TILE * len(POSES), 24 + TILE * len(rows)), "white")
    draw = ImageDraw.Draw(img)
    for i, (name, _) in enumerate(POSES):
        draw.text((i * TILE + 8, 6), name, fill="black")
    for r, tiles in enumerate(rows):
        for i, t in enumerate(tiles):
            img.paste(t, (i * TILE, 24 + r * TILE))
    img.save(out)


if __name__ == "__main__":
    sheet(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "frames.png")
