"""What a consumer of a prepared avatar may ask beyond the Protocol: frame size and a square variant.

`PreparedAvatar` (base.py) promises only `size`, the side of square frames. Renderers with a
whole-photo mode add `width`/`height` (non-square frames) and `square` (the same photo prepared as a
square face crop). These helpers read them with square fallbacks, so the assembler and the encoder
work with any renderer.
"""

from __future__ import annotations

from pipeline.render.base import PreparedAvatar


def frame_size(avatar: PreparedAvatar) -> tuple[int, int]:
    """(width, height) of the frames rendered for `avatar`."""
    return int(getattr(avatar, "width", avatar.size)), int(getattr(avatar, "height", avatar.size))


def square_avatar(avatar: PreparedAvatar) -> PreparedAvatar:
    """The square face-crop variant of `avatar` (itself when it is one).

    A round video is a circle cut from a square one, centred on the face, so a reply asked for with
    square frames uses the square face crop, whatever `render.frame` says. Raises ValueError for a
    non-square avatar that has no square variant.
    """
    square = getattr(avatar, "square", None)
    if square is not None:
        return square
    width, height = frame_size(avatar)
    if width != height:
        raise ValueError(f"{width}x{height} avatar has no square variant")
    return avatar
