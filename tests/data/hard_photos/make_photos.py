"""Derive the hard-photo set for the warp renderer from the project's own public-domain portraits.

    .venv/bin/python -m tests.data.hard_photos.make_photos

Every picture is made from assets/avatar.jpg (Eileen Collins, smiling, thin lips, teeth showing) and
assets/grace_hopper.jpg (Grace Hopper, thin pale lips, mouth closed); see assets/README.md. The
output is deterministic (no randomness, fixed JPEG settings), so re-running it rewrites the same
files. What each picture is: README.md next to this file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parents[2] / "assets"
# Face boxes (FaceMesh oval, px) in the source photos, measured once: (x0, y0, x1, y1).
AVATAR_FACE = (179.4, 71.1, 271.2, 177.9)
HOPPER_FACE = (173.0, 132.3, 356.0, 333.6)
QUALITY = 90


def _open(name: str) -> Image.Image:
    return Image.open(ASSETS / name).convert("RGB")


def _centre(face: tuple[float, float, float, float]) -> tuple[float, float]:
    return (face[0] + face[2]) / 2, (face[1] + face[3]) / 2


def _crop_around(img: Image.Image, centre: tuple[float, float], side: float, out: int) -> Image.Image:
    cx, cy = centre
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    return img.resize((out, out), Image.LANCZOS, box=box)


def small() -> Image.Image:
    """A 160 px thumbnail cut tight around the avatar's head: the face is about 100 px wide."""
    img = _open("avatar.jpg")
    f = 100 / (AVATAR_FACE[2] - AVATAR_FACE[0])
    cx, cy = _centre(AVATAR_FACE)
    return _crop_around(img, (cx, cy + 8), 160 / f, 160)


def tilted() -> Image.Image:
    """The whole avatar photo rotated 18° (head tilted to the viewer's left), corners filled grey."""
    return _open("avatar.jpg").rotate(
        18, Image.BICUBIC, center=_centre(AVATAR_FACE), fillcolor=(196, 196, 204)
    )


def grayscale() -> Image.Image:
    """The avatar in black and white: a smile showing teeth, and no colour to tell lip from skin."""
    return ImageOps.grayscale(_open("avatar.jpg")).convert("RGB")


def smiling() -> Image.Image:
    """Grace Hopper with a closed-lip smile: her thin lips, the corners pulled up and out by a warp."""
    from pipeline.render.tps import tps_backward_field

    img = _open("grace_hopper.jpg")
    w, h = img.size
    # Mouth corners and lip midpoints in the photo (FaceMesh 61, 291, 0, 17), measured once.
    left, right = np.array([232.4, 280.6]), np.array([302.5, 277.1])
    top, bottom = np.array([267.7, 272.2]), np.array([268.0, 291.9])
    lift = np.array([[-5.0, -9.0], [5.0, -9.0], [0.0, -1.5], [0.0, -2.5]])
    src = np.array([left, right, top, bottom])
    ring = [
        (267 + 75 * np.cos(a), 282 + 55 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 16, endpoint=False)
    ]
    anchors = np.array([*ring, (0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)])
    side = max(w, h)
    field = tps_backward_field(
        np.concatenate([src, anchors]), np.concatenate([src + lift, anchors]), side, grid=side
    ).numpy()[:h, :w]
    rgb = np.asarray(img, dtype=np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    sx, sy = np.clip(xs + field[..., 0], 0, w - 1), np.clip(ys + field[..., 1], 0, h - 1)
    x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    out = (
        rgb[y0, x0] * (1 - fx) * (1 - fy)
        + rgb[y0, x1] * fx * (1 - fy)
        + rgb[y1, x0] * (1 - fx) * fy
        + rgb[y1, x1] * fx * fy
    )
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def _head(img: Image.Image, face: tuple[float, float, float, float], face_px: float) -> Image.Image:
    """The head and shoulders around `face`, scaled so the face is `face_px` wide, with a soft
    elliptic alpha so it sits on any background."""
    f = face_px / (face[2] - face[0])
    cx, cy = _centre(face)
    fw, fh = (face[2] - face[0]) * 1.7, (face[3] - face[1]) * 1.9
    box = (cx - fw / 2, cy - fh * 0.5, cx + fw / 2, cy + fh * 0.62)
    size = (round((box[2] - box[0]) * f), round((box[3] - box[1]) * f))
    head = img.resize(size, Image.LANCZOS, box=box)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((0, 0, size[0] - 1, size[1] - 1), fill=255)
    head.putalpha(mask.filter(ImageFilter.GaussianBlur(max(2, size[0] // 30))))
    return head


def group() -> Image.Image:
    """Three people side by side on a plain backdrop: Grace Hopper's face is the largest (~150 px),
    the avatar's is ~115 px, and a mirrored avatar at the back ~85 px."""
    w, h = 880, 440
    ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    sky = np.array([176, 186, 200], np.float32) * (1 - ramp) + np.array([120, 126, 140], np.float32) * ramp
    canvas = Image.fromarray(np.broadcast_to(sky, (h, w, 3)).astype(np.uint8)).convert("RGBA")
    avatar, hopper = _open("avatar.jpg"), _open("grace_hopper.jpg")
    x0, y0, x1, y1 = AVATAR_FACE
    for img, face, px, x in (
        (ImageOps.mirror(avatar), (512 - x1, y0, 512 - x0, y1), 85, 20),
        (avatar, AVATAR_FACE, 115, 620),
        (hopper, HOPPER_FACE, 150, 300),
    ):
        head = _head(img, face, px)
        canvas.alpha_composite(head, (x, h - head.height - 10))
    return canvas.convert("RGB")


def combo() -> Image.Image:
    """The case measured at r = -0.06: a 112 x 112 grayscale crop of the smiling avatar, tilted 15°."""
    img = _open("avatar.jpg").rotate(
        -15, Image.BICUBIC, center=_centre(AVATAR_FACE), fillcolor=(190, 190, 196)
    )
    cx, cy = _centre(AVATAR_FACE)
    crop = _crop_around(img, (cx, cy + 4), 150, 112)
    return ImageOps.grayscale(crop).convert("RGB")


PHOTOS = {
    "small": small,
    "tilted": tilted,
    "grayscale": grayscale,
    "smiling": smiling,
    "group": group,
    "combo": combo,
}


def main() -> None:
    for name, make in PHOTOS.items():
        path = HERE / f"{name}.jpg"
        make().save(path, format="JPEG", quality=QUALITY, optimize=True)
        print(f"{path.name}: {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
