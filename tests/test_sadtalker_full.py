"""SadTalker's "full" mode with `still`: the whole photo is the frame, the drawn face is pasted back
into its box with a feathered edge, the head keeps the photo's pose, and round videos get the face
crop. Random-valued checkpoints in the official containers (tests/test_sadtalker.py writes them)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.test_render import _speech
from tests.test_sadtalker import AVATAR, _settings, write_random_sadtalker_dir


@pytest.fixture(scope="module")
def full_renderer(tmp_path_factory: pytest.TempPathFactory):
    from pipeline.render.factory import build_renderer

    tmp = tmp_path_factory.mktemp("st-full")
    checkpoints = write_random_sadtalker_dir(tmp / "checkpoints")
    env = {
        "TALKTWIN_RENDER__SADTALKER__PREPROCESS": "full",
        "TALKTWIN_RENDER__SADTALKER__STILL": "true",
        "TALKTWIN_RENDER__SADTALKER__MAX_CPU_SECONDS": "5",
    }
    return build_renderer(_settings(tmp, checkpoints, **env))


def wide_photo() -> bytes:
    """The avatar with the scene around it: a 3:2 photo, the face off-centre."""
    face = Image.open(AVATAR).convert("RGB")
    canvas = Image.new("RGB", (face.width * 3 // 2, face.height), (40, 90, 60))
    canvas.paste(face, (face.width // 4, 0))
    out = io.BytesIO()
    canvas.save(out, "PNG")
    return out.getvalue()


def test_full_mode_pastes_the_face_into_the_whole_photo_and_keeps_its_pose(full_renderer):
    avatar = full_renderer.prepare(wide_photo(), 128)
    width, height = avatar.width, avatar.height
    assert width == 128 and abs(height - 128 * 2 / 3) <= 3 and avatar.coeffs.shape == (73,)
    assert avatar.square is not None and (avatar.square.width, avatar.square.height) == (128, 128)
    y0, y1, x0, x1 = avatar.box
    assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width and (x1 - x0) < width

    session = full_renderer.session(avatar, fps=10)
    assert list(session.feed(_speech(0.2, 0.6), start_time=0.0, n_frames=2)) == []
    frames = np.concatenate(list(session.finish()))
    assert frames.shape == (2, height, width, 3) and frames.dtype == np.uint8
    outside = np.ones((height, width), bool)
    outside[y0:y1, x0:x1] = False
    for frame in frames:  # the scene is the photo's, to the pixel; the face box is drawn
        assert np.array_equal(frame[outside], avatar.picture[outside])
        assert np.abs(frame[y0:y1, x0:x1].astype(int) - avatar.picture[y0:y1, x0:x1]).mean() > 1
    # the feathered edge: the box's border rows are mostly the photo, its centre mostly the drawing
    assert avatar.mask[0].mean() < 0.2 and avatar.mask[(y1 - y0) // 2, (x1 - x0) // 2] > 0.9

    coefficients = full_renderer.coefficients(avatar, np.zeros(3200, np.float32))  # 0.2 s at 16 kHz
    assert np.array_equal(coefficients[:, 64:], np.repeat(avatar.coeffs[None, 64:73], len(coefficients), 0))
