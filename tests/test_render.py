"""The warp renderer, end to end with the real FaceMesh model and torch (no mocks)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_settings
from pipeline.errors import FaceTooSmall, NoFaceFound, UnreadableImage
from pipeline.render import topology as T
from pipeline.render.factory import avatar_cache_dir, build_renderer
from pipeline.render.landmarks import decode_image
from pipeline.render.motion import blink_curve, head_sway
from pipeline.render.visemes import LEAD_S, REST, VISEMES, mouth_controls, phoneme_targets, visemes_of
from pipeline.render.warp import BLINK_COL, JAW_COL, WarpAvatar, WarpRenderer
from pipeline.types import Audio, PhonemeTiming, Speech

AVATAR = Path(__file__).resolve().parent.parent / "assets" / "avatar.jpg"
SIZE = 256
FPS = 25
SR = 16000
SEED = 7


def _speech(silent_s: float, voiced_s: float = 0.0, phonemes: tuple[PhonemeTiming, ...] = ()) -> Speech:
    """`silent_s` of silence, then `voiced_s` of a loud vowel-like harmonic tone (150 Hz, 11 partials)."""
    silence = np.zeros(round(silent_s * SR), np.float32)
    t = np.arange(round(voiced_s * SR)) / SR
    vowel = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 12)) * 0.3
    samples = np.concatenate([silence, np.asarray(vowel, np.float32).reshape(-1)])
    return Speech("test", "en", Audio(samples.astype(np.float32), SR), phonemes=phonemes)


def _render(renderer: WarpRenderer, avatar: WarpAvatar, speech: Speech, n: int, start: float = 0.0):
    batches = list(renderer.render(avatar, speech, fps=FPS, start_time=start, n_frames=n))
    return batches, (np.concatenate(batches) if batches else np.zeros((0, SIZE, SIZE, 3), np.uint8))


def _box(points: np.ndarray, idx: tuple[int, ...], pad: float) -> tuple[slice, slice]:
    """Rows/columns around the landmarks `idx`, grown by `pad` px."""
    p = points[list(idx)]
    (x0, y0), (x1, y1) = p.min(0) - pad, p.max(0) + pad
    return slice(int(y0), math.ceil(y1)), slice(int(x0), math.ceil(x1))


@pytest.fixture(scope="module")
def photo() -> bytes:
    return AVATAR.read_bytes()


@pytest.fixture(scope="module")
def renderer() -> WarpRenderer:
    return WarpRenderer(device="cpu", batch=16, seed=SEED)


@pytest.fixture(scope="module")
def avatar(renderer: WarpRenderer, photo: bytes) -> WarpAvatar:
    return renderer.prepare(photo, SIZE)


# ---------------------------------------------------------------- frame counts, batches, determinism
@pytest.mark.parametrize(("duration", "fps"), [(1.0, 25), (0.52, 30), (1.3, 24), (0.04, 25)])
def test_frame_count_shape_and_batches(renderer: WarpRenderer, avatar: WarpAvatar, duration: float, fps: int):
    n = math.ceil(duration * fps)
    speech = _speech(duration / 2, duration / 2)
    batches = list(renderer.render(avatar, speech, fps=fps, start_time=0.0, n_frames=n))
    assert sum(len(b) for b in batches) == n
    for i, b in enumerate(batches):
        assert b.dtype == np.uint8
        assert b.shape[1:] == (SIZE, SIZE, 3)
        assert len(b) == (16 if i < len(batches) - 1 else n - 16 * (len(batches) - 1))


def test_zero_frames_and_frames_past_the_audio(renderer: WarpRenderer, avatar: WarpAvatar):
    assert list(renderer.render(avatar, _speech(0.5), fps=FPS, start_time=0.0, n_frames=0)) == []
    _, frames = _render(renderer, avatar, _speech(0.2, 0.2), 30)  # the pipeline may pad a sentence
    assert frames.shape == (30, SIZE, SIZE, 3)


def test_batches_concatenate_to_the_same_video(photo: bytes, avatar: WarpAvatar, renderer: WarpRenderer):
    speech = _speech(0.5, 0.7)
    _, big = _render(renderer, avatar, speech, 30)
    small_renderer = WarpRenderer(device="cpu", batch=7, seed=SEED)
    batches, small = _render(small_renderer, small_renderer.prepare(photo, SIZE), speech, 30)
    assert [len(b) for b in batches] == [7, 7, 7, 7, 2]
    assert np.abs(big.astype(int) - small.astype(int)).max() <= 1  # float summation order only


def test_deterministic(photo: bytes, avatar: WarpAvatar, renderer: WarpRenderer):
    speech = _speech(0.8, 1.2)
    _, a = _render(renderer, avatar, speech, 50, start=3.0)
    other = WarpRenderer(device="cpu", batch=16, seed=SEED)
    _, b = _render(other, other.prepare(photo, SIZE), speech, 50, start=3.0)
    assert np.array_equal(a, b)
    c = WarpRenderer(device="cpu", seed=SEED + 1).controls(speech, fps=FPS, start_time=3.0, n_frames=300)
    assert not np.array_equal(c, renderer.controls(speech, fps=FPS, start_time=3.0, n_frames=300))


def test_prepare_is_cached_in_memory_and_landmarks_on_disk(photo: bytes, tmp_path: Path):
    r = WarpRenderer(device="cpu", cache_dir=tmp_path)
    first = r.prepare(photo, SIZE)
    assert r.prepare(photo, SIZE) is first
    assert first.key.endswith(f"-{SIZE}") and first.size == SIZE
    assert r.prepare(photo, 128).key != first.key
    cached = list(tmp_path.glob("landmarks-*.npy"))
    assert len(cached) == 1
    # A fresh renderer reads the landmarks back and builds the same rig.
    again = WarpRenderer(device="cpu", cache_dir=tmp_path).prepare(photo, SIZE)
    assert np.allclose(again.rig.points, first.rig.points)


# ---------------------------------------------------------------- what moves and what does not
def test_mouth_moves_with_voice_and_background_stays(renderer: WarpRenderer, avatar: WarpAvatar):
    speech = _speech(1.0, 1.0)  # 25 silent frames, then 25 voiced
    controls = renderer.controls(speech, fps=FPS, start_time=0.0, n_frames=50)
    assert controls[:24, JAW_COL].max() == 0 and controls[30:, JAW_COL].min() > 0.5
    _, frames = _render(renderer, avatar, speech, 50)
    rows, cols = _box(avatar.rig.points, T.LIP_UPPER_OUTER + T.LIP_LOWER_OUTER, pad=4)
    mouth = frames[:, rows, cols].astype(np.float32)
    silent_change = np.abs(mouth[5] - mouth[15]).mean()  # only head sway differs
    voiced_change = np.abs(mouth[40] - mouth[15]).mean()
    assert voiced_change > 15 and voiced_change > 4 * silent_change
    # The voiced mouth is open: the painted cavity makes it much darker than the closed one.
    assert mouth[35:].mean() < mouth[:20].mean() - 10
    corner = SIZE // 8
    for ys, xs in [(slice(0, corner), slice(0, corner)), (slice(0, corner), slice(-corner, None))]:
        assert (frames[:, ys, xs] == frames[:1, ys, xs]).all()
    assert (frames[:, -corner:, :corner] == avatar.rig.still[-corner:, :corner]).all()


def _dark_eye_fraction(frames: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Per frame: share of dark (iris/pupil/lash) pixels inside both rest-pose eye openings."""
    fractions = []
    for outline in (T.RIGHT_EYE_OUTLINE, T.LEFT_EYE_OUTLINE):
        rows, cols = _box(points, outline, pad=0)
        luma = frames[:, rows, cols].astype(np.float32).mean(-1)
        fractions.append((luma < 0.45 * np.median(frames[0].mean(-1))).mean((1, 2)))
    return np.mean(fractions, 0)


def test_blinks_close_the_eyes(renderer: WarpRenderer, avatar: WarpAvatar):
    n = 8 * FPS
    speech = _speech(8.0)
    blink = renderer.controls(speech, fps=FPS, start_time=0.0, n_frames=n)[:, BLINK_COL]
    closed, open_ = blink > 0.95, blink < 0.01
    assert closed.sum() >= 2 and open_.sum() > n / 2  # a few blinks, eyes open most of the time
    _, frames = _render(renderer, avatar, speech, n)
    dark = _dark_eye_fraction(frames, avatar.rig.points)
    # Open eyes show a dark iris; closed ones only lid skin and a thin lash line.
    assert dark[open_].min() > 0.08
    assert dark[closed].max() < 0.5 * dark[open_].min()


def test_blink_and_sway_continue_across_sentences(renderer: WarpRenderer, avatar: WarpAvatar):
    whole = _speech(2.0)
    halves = _speech(1.0)
    _, one = _render(renderer, avatar, whole, 2 * FPS)
    _, first = _render(renderer, avatar, halves, FPS, start=0.0)
    _, second = _render(renderer, avatar, halves, FPS, start=1.0)
    two = np.concatenate([first, second])
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1
    # And the idle motion really moves across that window (otherwise this proves nothing).
    assert np.abs(one[0].astype(int) - one[-1].astype(int)).mean() > 0.5


def test_motion_is_a_function_of_absolute_time():
    t = np.arange(0, 30, 0.01)
    whole = blink_curve(t, SEED)
    part = blink_curve(t[1500:], SEED)
    assert np.array_equal(whole[1500:], part)
    assert whole.max() == 1.0 and whole.min() == 0.0
    assert np.allclose(head_sway(t, SEED)[1500:], head_sway(t[1500:], SEED))
    assert np.abs(head_sway(t, SEED)[:, 0]).max() < math.radians(2)


# ---------------------------------------------------------------- visemes and audio controls
def test_viseme_table_parses_ipa():
    assert visemes_of("ˈaɪ") == [VISEMES["a"], VISEMES["ɪ"]]  # diphthong: two shapes
    assert visemes_of("tʃ") == [VISEMES["tʃ"]]  # affricate: one articulation
    assert visemes_of("tɕʰ") == [VISEMES["tɕ"]]  # Mandarin q: aspiration ignored
    assert visemes_of("i˧˥") == [VISEMES["i"]]  # tone letters ignored
    assert visemes_of("y") == [VISEMES["u"]]  # ü is rounded
    assert visemes_of("_") == [] and visemes_of(" ") == [] and visemes_of(",") == []
    assert VISEMES["m"].open == 0 and VISEMES["o"].wide < 0 < VISEMES["i"].wide


def test_bilabial_closes_between_vowels():
    ph = (PhonemeTiming("a", 0.1, 0.3), PhonemeTiming("m", 0.3, 0.38), PhonemeTiming("a", 0.38, 0.6))
    times = np.arange(0, 0.8, 0.005)
    targets = phoneme_targets(ph, 0.8, times)
    at = lambda t: targets[np.argmin(np.abs(times - t)), 0]  # noqa: E731
    assert at(0.2 - LEAD_S) > 0.65 and at(0.49 - LEAD_S) > 0.65
    assert at(0.34 - LEAD_S) < 0.2  # lips close for m, a little before it sounds
    assert targets[-1, 0] == pytest.approx(REST.open, abs=0.05)


def test_mouth_controls_from_phonemes_and_from_audio():
    ph = (PhonemeTiming("u", 0.5, 0.8), PhonemeTiming("i", 0.8, 1.1))
    speech = _speech(0.4, 0.8, phonemes=ph)
    times = np.arange(30) / FPS
    c = mouth_controls(speech, times)
    assert c[:8, 0].max() < 0.05  # silence before the first phoneme
    assert c[int(0.62 * FPS), 1] < 0 < c[int(0.95 * FPS), 1]  # rounded u, then spread i
    plain = mouth_controls(_speech(0.4, 0.8), times)  # no phonemes: loudness drives the jaw
    assert plain[:8, 0].max() == 0 and plain[15:, 0].min() > 0.5
    assert mouth_controls(_speech(1.0), times)[:, 0].max() == 0  # pure silence stays closed


# ---------------------------------------------------------------- photos that cannot be used
def _jpeg(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92, **kwargs)
    return buf.getvalue()


def test_not_an_image(renderer: WarpRenderer, photo: bytes):
    with pytest.raises(UnreadableImage):
        renderer.prepare(b"this is not a picture", SIZE)
    with pytest.raises(UnreadableImage):
        renderer.prepare(photo[: len(photo) // 3], SIZE)  # truncated JPEG


@pytest.mark.parametrize("kind", ["flat", "noise"])
def test_no_face(renderer: WarpRenderer, kind: str):
    rng = np.random.default_rng(0)
    if kind == "flat":
        img = Image.new("RGB", (640, 480), (120, 130, 140))
    else:
        img = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    with pytest.raises(NoFaceFound):
        renderer.prepare(_jpeg(img), SIZE)


def test_face_too_small(renderer: WarpRenderer, photo: bytes, avatar: WarpAvatar):
    original = Image.open(io.BytesIO(photo)).convert("RGB")
    face_w = 92  # the avatar's face is about 92 px wide in the 512 px photo
    side = round(512 * 58 / face_w)  # -> a face about 58 px wide
    canvas = Image.new("RGB", (1280, 1024), (200, 200, 200))
    canvas.paste(original.resize((side, side), Image.LANCZOS), (700, 400))
    with pytest.raises(FaceTooSmall):
        renderer.prepare(_jpeg(canvas), SIZE)


def test_exif_rotated_photo(renderer: WarpRenderer, photo: bytes, avatar: WarpAvatar):
    upright = Image.open(io.BytesIO(photo)).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # pixels lie on their side ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... and the Orientation tag says "rotate 90° clockwise to display"
    data = _jpeg(stored, exif=exif.tobytes())
    decoded = decode_image(data)
    assert decoded.shape == (512, 512, 3)
    assert np.abs(decoded.astype(int) - np.asarray(upright, dtype=int)).mean() < 4  # upright again
    rotated = renderer.prepare(data, SIZE)
    assert np.abs(rotated.rig.points - avatar.rig.points).max() < 4  # same face, same place


def test_build_renderer_from_settings(tmp_path: Path):
    settings = load_settings(
        environ={"TALKTWIN_PATHS__DATA_DIR": str(tmp_path), "TALKTWIN_RENDER__BATCH": "4"}
    )
    r = build_renderer(settings)
    assert isinstance(r, WarpRenderer)
    assert r.batch == 4 and r.seed == settings.render.seed
    assert r.device.type in ("cpu", "cuda")
    assert avatar_cache_dir(settings) == tmp_path / "cache" / "avatars"
