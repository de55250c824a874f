"""Draw the renderer's frame sheet (docs/frames.png): one row per photo, one column per pose.

    .venv/bin/python -m tests.render_sheet [out.png]

Poses: rest, open vowel "a", rounded vowel "o/u", blink, an emphasis beat (brows raised, head nodding,
mid-"e"), and the whole-photo frame (frame="photo": the full picture with the animated face pasted
back in) mid-speech. Crops are zoomed on the face so mouth, eyes and brows can be judged; the
whole-photo column is letterboxed to keep the picture's aspect ratio. Saved with a 256-colour
palette (~4x smaller than full colour, no visible loss at this size): the sheet is checked in.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from pipeline.render.warp import (
    BLINK_COL,
    BROW_COL,
    JAW_COL,
    N_CONTROLS,
    NOD_COL,
    WIDE_COL,
    WarpRenderer,
    render_frames,
)

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = [ROOT / "assets" / "avatar.jpg", ROOT / "assets" / "grace_hopper.jpg"]
POSES = [
    ("rest", {}),
    ("open 'a'", {JAW_COL: 1.0, WIDE_COL: 0.16}),
    ("round 'o'", {JAW_COL: 0.6, WIDE_COL: -0.8}),
    ("blink", {BLINK_COL: 1.0}),
    ("emphasis: brows up, nod, 'e'", {JAW_COL: 0.7, WIDE_COL: 0.3, BROW_COL: 1.0, NOD_COL: 1.0}),
]
WHOLE = ("whole photo, 'e' + brows", {JAW_COL: 0.7, WIDE_COL: 0.3, BROW_COL: 1.0})
SIZE, TILE = 512, 240


def _controls(poses: list[tuple[str, dict[int, float]]]) -> torch.Tensor:
    controls = torch.zeros(len(poses), N_CONTROLS)
    for i, (_, pose) in enumerate(poses):
        for col, v in pose.items():
            controls[i, col] = v
    return controls


def _letterbox(frame: Image.Image) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE), "white")
    f = TILE / max(frame.size)
    fitted = frame.resize((round(frame.width * f), round(frame.height * f)), Image.LANCZOS)
    tile.paste(fitted, ((TILE - fitted.width) // 2, (TILE - fitted.height) // 2))
    return tile


def sheet(out: Path) -> None:
    renderer = WarpRenderer(device="cpu")
    rows = []
    for photo in PHOTOS:
        avatar = renderer.prepare(photo.read_bytes(), SIZE)
        frames = render_frames(avatar.rig, _controls(POSES))
        pts = avatar.rig.points
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        side = 1.1 * max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        tiles = [Image.fromarray(f).resize((TILE, TILE), Image.LANCZOS, box=box) for f in frames]
        whole = renderer.prepare(photo.read_bytes(), SIZE, frame="photo")
        frame = render_frames(whole.rig, _controls([WHOLE]), whole.backdrop)[0]
        tiles.append(_letterbox(Image.fromarray(frame)))
        rows.append(tiles)
    columns = [*POSES, WHOLE]
    img = Image.new("RGB", (TILE * len(columns), 24 + TILE * len(rows)), "white")
    draw = ImageDraw.Draw(img)
    for i, (name, _) in enumerate(columns):
        draw.text((i * TILE + 8, 6), name, fill="black")
    for r, tiles in enumerate(rows):
        for i, t in enumerate(tiles):
            img.paste(t, (i * TILE, 24 + r * TILE))
    img.quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


if __name__ == "__main__":
    sheet(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "frames.png")
