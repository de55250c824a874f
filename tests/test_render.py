"""The warp renderer, end to end with the real FaceMesh model and torch (no mocks)."""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import load_settings
from pipeline.errors import FaceTooSmall, NoFaceFound, UnreadableImage
from pipeline.render import topology as T
from pipeline.render.emphasis import emphasis_controls
from pipeline.render.factory import avatar_cache_dir, build_renderer
from pipeline.render.landmarks import FaceTurnedAway, decode_image, shared_detector
from pipeline.render.motion import blink_curve, head_sway
from pipeline.render.variants import frame_size, square_avatar
from pipeline.render.visemes import LEAD_S, REST, VISEMES, mouth_controls, phoneme_targets, visemes_of
from pipeline.render.warp import (
    BLINK_COL,
    BROW_COL,
    JAW_COL,
    N_CONTROLS,
    NOD_COL,
    ROT_COL,
    SHIFT_X_COL,
    SHIFT_Y_COL,
    WIDE_COL,
    WarpAvatar,
    WarpRenderer,
    basis_weights,
    render_frames,
)
from pipeline.types import Audio, PhonemeTiming, Speech
from tests.helpers import eye_openness, mouth_openness

AVATAR = Path(__file__).resolve().parent.parent / "assets" / "avatar.jpg"
HOPPER = AVATAR.parent / "grace_hopper.jpg"  # 512 x 600: a portrait-format picture
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
def test_teeth_come_from_the_photo_only_when_it_shows_them(renderer: WarpRenderer, avatar: WarpAvatar):
    assert avatar.rig.mouth.teeth is not None  # a smile that shows the teeth: theirs are used
    # Thin, pale lips once read as an open mouth full of skin-coloured "teeth": a closed mouth gets
    # synthetic teeth instead.
    closed = renderer.prepare(HOPPER.read_bytes(), SIZE).rig.mouth
    assert closed.teeth is None


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
    # A face tracker re-detecting the rendered frames sees the lids shut as well.
    picks = np.concatenate([np.flatnonzero(open_)[:: max(1, open_.sum() // 6)][:6], np.flatnonzero(closed)])
    ratio = eye_openness(frames[picks])
    n_open = min(6, len(picks) - closed.sum())
    assert ratio[n_open:].max() < 0.4 * ratio[:n_open].min()


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


def _emphasised_speech() -> Speech:
    """1 s of silence, then 2.4 s of syllables (4 per second) with one much louder, stressed one."""
    t = np.arange(round(2.4 * SR)) / SR
    tone = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 2 * t), 0, None)  # 4 bumps per second
    gain = np.where((t > 1.0) & (t < 1.25), 1.0, 0.25)  # the syllable at 1.0-1.25 s is stressed
    voiced = (0.3 * tone * syllables * gain).astype(np.float32)
    samples = np.concatenate([np.zeros(SR, np.float32), voiced])
    return Speech("emphasis", "en", Audio(samples, SR))


def test_emphasis_nods_and_raises_brows_on_stressed_syllables(renderer: WarpRenderer):
    speech = _emphasised_speech()
    n = round(speech.duration * FPS)
    c = renderer.controls(speech, fps=FPS, start_time=5.0, n_frames=n)
    nod, brow = c[:, NOD_COL], c[:, BROW_COL]
    assert nod.max() > 0.5 and brow.max() > 0.5  # a full-strength beat on the loud syllable
    peak = 1.0 + 1.125  # speech-relative time of the stressed syllable's loudness peak
    assert abs(np.argmax(nod) / FPS - peak) < 0.3 and abs(np.argmax(brow) / FPS - peak) < 0.4
    assert nod[: round(0.7 * FPS)].max() == 0 and brow[: round(0.7 * FPS)].max() == 0  # silence
    # Exactly 0 at both ends of the sentence, so sentence-by-sentence rendering cannot jump.
    assert nod[0] == nod[-1] == brow[0] == brow[-1] == 0
    fine = emphasis_controls(speech, np.array([0.0, speech.duration - 1e-6]))
    assert np.array_equal(fine, np.zeros((2, 2)))
    assert (
        renderer.controls(_speech(2.0), fps=FPS, start_time=0.0, n_frames=50)[:, [NOD_COL, BROW_COL]].max()
        == 0
    )


def test_brow_raise_moves_the_brows_and_the_nod_the_head(avatar: WarpAvatar):
    controls = torch.zeros(3, N_CONTROLS)
    controls[1, BROW_COL] = 1.0
    controls[2, NOD_COL] = 1.0
    rest, brows, nod = render_frames(avatar.rig, controls).astype(np.float32)
    pts = avatar.rig.points
    brow_box = _box(pts, T.BROW_LINES, pad=3)
    mouth_box = _box(pts, T.LIP_UPPER_OUTER + T.LIP_LOWER_OUTER, pad=2)
    assert np.abs(brows[brow_box] - rest[brow_box]).mean() > 4
    assert np.abs(brows[mouth_box] - rest[mouth_box]).mean() < 0.5  # only the brows move
    # The brows move up: the rest pose's row profile over the brow columns, shifted up, fits best.
    rows = slice(brow_box[0].start - 8, brow_box[0].stop + 8)
    profile = lambda img: img[rows, brow_box[1]].mean((1, 2))  # noqa: E731
    before, after = profile(rest), profile(brows)
    misfit = {k: np.abs(before[8 + k : len(before) - 8 + k] - after[8:-8]).mean() for k in range(-6, 7)}
    assert min(misfit, key=misfit.get) >= 2  # px at 256: pixel rows k below moved up to here
    assert np.abs(nod[mouth_box] - rest[mouth_box]).mean() > 3  # the whole head dips
    corner = SIZE // 8
    assert (nod[:corner, :corner] == rest[:corner, :corner]).all()  # the background does not


# ---------------------------------------------------------------- whole-photo frame
@pytest.fixture(scope="module")
def photo_avatar() -> WarpAvatar:
    return WarpRenderer(device="cpu", frame="photo").prepare(HOPPER.read_bytes(), SIZE)


def test_photo_frame_is_the_whole_picture_with_the_face_animated(photo_avatar: WarpAvatar):
    a = photo_avatar
    assert (a.width, a.height, a.size) == (218, 256, 256)  # 512 x 600 scaled to a longer side of 256
    assert a.width % 2 == 0 and a.height % 2 == 0 and frame_size(a) == (218, 256)
    renderer = WarpRenderer(device="cpu", frame="photo")
    speech = _speech(0.4, 0.8)
    batches = list(renderer.render(a, speech, fps=FPS, start_time=0.0, n_frames=30))
    frames = np.concatenate(batches)
    assert frames.shape == (30, 256, 218, 3)
    picture = np.asarray(Image.open(HOPPER).convert("RGB").resize((218, 256), Image.LANCZOS))
    # Outside the animated crop the frame is the picture itself, byte for byte ...
    assert a.backdrop is not None
    oy, ox = a.backdrop.origin
    y0, y1, x0, x1 = a.rig.roi
    outside = np.ones((256, 218), bool)
    outside[oy + y0 : oy + y1, ox + x0 : ox + x1] = False
    assert (frames[:, outside] == picture[outside]).all()
    # ... and inside it the mouth moves with the voice.
    rows, cols = _box(a.rig.points + np.array([ox, oy]), T.LIP_UPPER_OUTER + T.LIP_LOWER_OUTER, pad=3)
    assert np.abs(frames[25, rows, cols].astype(int) - frames[3, rows, cols].astype(int)).mean() > 8
    # The feathered seam: at rest, the pasted crop meets the picture without a step at its edges.
    rest = render_frames(a.rig, torch.zeros(1, N_CONTROLS), a.backdrop)[0].astype(int)
    assert np.abs(rest[outside] - picture[outside]).max() == 0
    band = slice(oy + y0, oy + y1)
    edge_step = np.abs(rest[band, ox + x0] - rest[band, ox + x0 - 1]).mean() if ox + x0 > 0 else 0.0
    picture_step = np.abs(picture[band, ox + x0].astype(int) - picture[band, ox + x0 - 1]).mean()
    assert edge_step < picture_step + 3


def test_photo_avatar_keeps_a_square_variant_for_video_notes(photo_avatar: WarpAvatar):
    square = square_avatar(photo_avatar)
    assert frame_size(square) == (SIZE, SIZE) and square.frame == "square"
    assert square_avatar(square) is square
    r = WarpRenderer(device="cpu")
    assert r.prepare(HOPPER.read_bytes(), SIZE).key == square.key  # the same square avatar
    assert r.prepare(HOPPER.read_bytes(), SIZE, frame="photo").key.endswith("-photo")
    with pytest.raises(ValueError, match="frame"):
        WarpRenderer(device="cpu", frame="circle")


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


@pytest.mark.parametrize("fmt", ["WEBP", "HEIF"])
def test_webp_and_heic_photos(renderer: WarpRenderer, photo: bytes, avatar: WarpAvatar, fmt: str):
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo)).save(buf, format=fmt, quality=90)
    prepared = renderer.prepare(buf.getvalue(), SIZE)
    assert np.abs(prepared.rig.points - avatar.rig.points).max() < 3


def test_two_faces_use_the_larger_and_say_so(
    renderer: WarpRenderer, photo: bytes, caplog: pytest.LogCaptureFixture
):
    head = Image.open(io.BytesIO(photo)).convert("RGB").crop((125, 25, 325, 225))  # the face, tight
    alone = Image.new("RGB", (1000, 600), (200, 200, 205))
    alone.paste(head.resize((500, 500), Image.LANCZOS), (0, 50))
    group = alone.copy()
    group.paste(head.resize((300, 300), Image.LANCZOS), (640, 150))  # a second, smaller face
    with caplog.at_level(logging.WARNING, logger="pipeline.render.landmarks"):
        chosen = renderer.prepare(_jpeg(group), SIZE)
    assert "found 2 faces, using the largest" in caplog.text
    # The crop is centred on the large face: the same landmarks as with that face alone.
    assert np.abs(chosen.rig.points - renderer.prepare(_jpeg(alone), SIZE).rig.points).max() < 4


def test_photo_on_its_side_without_exif_is_turned_upright(
    renderer: WarpRenderer, photo: bytes, avatar: WarpAvatar, caplog: pytest.LogCaptureFixture
):
    sideways = Image.open(io.BytesIO(photo)).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    with caplog.at_level(logging.WARNING, logger="pipeline.render.landmarks"):
        turned = renderer.prepare(_jpeg(sideways), SIZE)
    assert "lies on its side" in caplog.text
    assert np.abs(turned.rig.points - avatar.rig.points).max() < 4


def _yawed(img: Image.Image, k: float) -> Image.Image:
    """A profile-like view: the left half of the picture stretched by 1 + k, the right squeezed by 1 - k."""
    w = img.width
    x = np.arange(w, dtype=np.float64)
    centre = w / 2
    forward = np.where(x < centre, x * (1 + k), centre * (1 + k) + (x - centre) * (1 - k))
    source = np.clip(np.interp(x, forward, x).round().astype(int), 0, w - 1)
    return Image.fromarray(np.asarray(img)[:, source])


def test_turned_away_faces_warn_or_are_refused(renderer: WarpRenderer, caplog: pytest.LogCaptureFixture):
    hopper = Image.open(HOPPER).convert("RGB")
    squeezed = hopper.resize((hopper.width // 2, hopper.height), Image.LANCZOS)
    with caplog.at_level(logging.WARNING, logger="pipeline.render.landmarks"):
        renderer.prepare(_jpeg(squeezed), SIZE)  # still usable ...
    assert "turned from the camera" in caplog.text  # ... but the operator is told why it looks flat
    with pytest.raises(FaceTurnedAway) as err:
        renderer.prepare(_jpeg(_yawed(hopper, 0.6)), SIZE)
    assert isinstance(err.value, NoFaceFound)  # callers that know only NoFaceFound still catch it
    assert "turned away" in err.value.user_message("en") and "侧" in err.value.user_message("zh")


def test_build_renderer_from_settings(tmp_path: Path):
    settings = load_settings(
        environ={"TALKTWIN_PATHS__DATA_DIR": str(tmp_path), "TALKTWIN_RENDER__BATCH": "4"}
    )
    r = build_renderer(settings)
    assert isinstance(r, WarpRenderer)
    assert r.batch == 4 and r.seed == settings.render.warp.seed == SEED
    assert r.frame == settings.render.frame == "square"
    photo = build_renderer(load_settings(environ={"TALKTWIN_RENDER__FRAME": "photo"}))
    assert isinstance(photo, WarpRenderer) and photo.frame == "photo"
    assert r.device.type in ("cpu", "cuda")
    assert avatar_cache_dir(settings) == tmp_path / "cache" / "avatars"


def test_the_face_detector_starts_without_native_log_noise_and_stderr_still_works():
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path; "
        "from pipeline.render.landmarks import decode_image, shared_detector; "
        "face = decode_image(Path('assets/grace_hopper.jpg').read_bytes()); "
        "print(len(shared_detector().detect(face).points)); print('still here', file=sys.stderr)"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "478"
    assert done.stderr.strip() == "still here"  # mediapipe's C++ set-up warnings stay out of the logs


# ---------------------------------------------------------------- hard photos (tests/data/hard_photos)
HARD = Path(__file__).resolve().parent / "data" / "hard_photos"
HARD_SET = ("small", "tilted", "grayscale", "smiling", "group", "combo")


def _hard(name: str) -> bytes:
    return (HARD / f"{name}.jpg").read_bytes()


def _pose(**cols: float) -> torch.Tensor:
    names = {
        "jaw": JAW_COL,
        "wide": WIDE_COL,
        "nod": NOD_COL,
        "rot": ROT_COL,
        "dx": SHIFT_X_COL,
        "dy": SHIFT_Y_COL,
    }
    controls = torch.zeros(1, N_CONTROLS)
    for name, value in cols.items():
        controls[0, names[name]] = value
    return controls


def test_hard_photos_are_small_derived_files():
    for name in HARD_SET:
        path = HARD / f"{name}.jpg"
        assert path.stat().st_size <= 200_000, path


@pytest.mark.parametrize("name", ["small", "combo"])
def test_no_smear_at_the_crop_edge_when_the_head_moves(renderer: WarpRenderer, name: str):
    """A tightly cut photo puts the head against the crop's edge: nods and sway must not sample past it
    (which repeated the edge row into a stretched strip of pixels)."""
    avatar = renderer.prepare(_hard(name), SIZE)
    sway = math.radians(1.8)
    poses = [_pose(nod=1.0, rot=s * sway, dx=s * 0.012, dy=0.008) for s in (-1, 1)] + [
        _pose(nod=1.0, dy=-0.008)
    ]
    frames = render_frames(avatar.rig, torch.cat(poses)).astype(np.float32)
    still = avatar.rig.still.astype(np.float32)
    band = round(0.06 * SIZE)
    for frame in frames:
        for edge, rest in ((frame[:band], still[:band]), (frame[:, :band], still[:, :band])):
            if edge.shape[0] != band:  # the left edge: rows become columns
                edge, rest = edge.transpose(1, 0, 2), rest.transpose(1, 0, 2)
            step = np.abs(np.diff(edge, axis=0)).mean((1, 2))  # row to row change, from the edge inwards
            photo_step = np.abs(np.diff(rest, axis=0)).mean((1, 2))
            assert not ((step < 0.35 * photo_step) & (photo_step > 1)).any()  # no copied rows
            assert np.abs(edge - rest).mean() < 10
    rows, cols = _box(avatar.rig.points, T.LIP_UPPER_OUTER + T.LIP_LOWER_OUTER, pad=2)
    assert np.abs(frames[0][rows, cols] - still[rows, cols]).mean() > 3  # while the head does move


@pytest.mark.parametrize("name", ["grayscale", "combo"])
def test_black_and_white_photo_closes_the_mouth_and_paints_it_grey(renderer: WarpRenderer, name: str):
    avatar = renderer.prepare(_hard(name), SIZE)
    mouth = avatar.rig.mouth
    # Colour cannot tell the teeth from the lips here; brightness does: the smile's teeth are found,
    # closed away for the rest pose and kept for the open mouth.
    assert avatar.rig.prewarped and mouth.teeth is not None and mouth.chroma == 0
    frames = render_frames(
        avatar.rig, torch.cat([_pose(), _pose(jaw=1.0, wide=0.2), _pose(jaw=0.6, wide=-0.7)])
    )
    assert (frames.max(-1).astype(int) - frames.min(-1)).max() <= 3  # no red mouth in a grey photo
    openness = mouth_openness(frames)
    assert openness[0] < 0.03 < 0.08 < openness[1:].min()  # closed at rest, open when speaking


def test_open_mouth_reads_as_a_mouth_on_thin_lips(renderer: WarpRenderer):
    """Thin lips, no teeth in the photo: the lips part (a rim of lip colour on both sides of the
    opening), synthetic teeth hang from the upper lip, and the cavity below them is dark."""
    avatar = renderer.prepare(HOPPER.read_bytes(), SIZE)
    rig, mouth = avatar.rig, avatar.rig.mouth
    assert mouth.teeth is None
    controls = _pose(jaw=1.0, wide=0.16)
    open_ = render_frames(rig, controls)[0].astype(np.float32)
    weights = basis_weights(controls)
    upper = (mouth.upper + torch.einsum("bk,knc->bnc", weights, mouth.upper_moves))[0].numpy()
    lower = (mouth.lower + torch.einsum("bk,knc->bnc", weights, mouth.lower_moves))[0].numpy()
    x = round(float(upper[5, 0]))  # the middle of the mouth
    top, bottom = float(upper[5, 1]), float(lower[5, 1])
    column = open_[round(top) - 4 : round(bottom) + 4, x - 1 : x + 2].mean(1)  # (rows, 3)
    luma = column.mean(-1)
    assert luma[4 : 4 + round(0.3 * (bottom - top))].max() > 150  # teeth at the top of the opening
    assert luma[round(0.55 * (bottom - top)) + 4 : -6].min() < 60  # a dark cavity under them
    redness = lambda px: (px[..., 0] - px[..., 1]) / px.sum(-1)  # noqa: E731
    lip_red = float(redness(mouth.lip.numpy() * 255))
    above = open_[round(top) - 3 : round(top), x - 3 : x + 4]
    below = open_[round(bottom) : round(bottom) + 3, x - 3 : x + 4]
    for rim in (above, below):  # the lips' inner sides, in lip colour, frame the opening
        assert redness(rim).mean(1).max() > 0.85 * lip_red


@pytest.mark.parametrize("photo_name", ["avatar", "grace_hopper", "smiling"])
def test_round_vowels_are_rounder(renderer: WarpRenderer, photo_name: str):
    """'o' against 'a' at the same jaw control, as a face tracker sees them: a narrower mouth whose lips
    outline a taller shape (not a smaller smile); pursed lips ('u', 'w') narrow the closed mouth."""
    photo = (
        _hard(photo_name) if photo_name == "smiling" else (AVATAR.parent / f"{photo_name}.jpg").read_bytes()
    )
    avatar = renderer.prepare(photo, SIZE)
    controls = torch.cat([_pose(), _pose(jaw=0.6, wide=0.2), _pose(jaw=0.6, wide=-0.64), _pose(wide=-0.8)])
    rest, a, o, pursed = _redetected_lips(render_frames(avatar.rig, controls))
    assert o["width"] < 0.92 * a["width"] and pursed["width"] < 0.92 * rest["width"]
    assert o["outline"] > 1.15 * a["outline"]


def _redetected_lips(frames: np.ndarray) -> list[dict[str, float]]:
    """Per frame, as FaceMesh finds it: the mouth's width over the eyes' span, and the outer lips'
    height over the mouth's width."""
    from tests.helpers import _ratio, _redetected

    return [
        {"width": _ratio(lm, 61, 291, 33, 263), "outline": _ratio(lm, 0, 17, 61, 291)}
        for lm in _redetected(frames, video=False)
    ]


def test_group_photo_uses_the_largest_face_whatever_the_detection_order(
    renderer: WarpRenderer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    photo = _hard("group")
    rgb = decode_image(photo)
    detector = shared_detector()
    with caplog.at_level(logging.WARNING, logger="pipeline.render.landmarks"):
        chosen = detector.detect(rgb)
    assert "using the largest" in caplog.text and "centred at" in caplog.text
    # Grace Hopper's face (the widest, ~150 px) in the middle, not one of the avatars at the sides.
    x = chosen.points[list(T.FACE_OVAL)].mean(0)[0]
    assert 350 < x < 530 and chosen.width > 130
    found = detector._faces(rgb)
    assert len(found) >= 2
    monkeypatch.setattr(detector, "_faces", lambda _rgb: list(reversed(found)))
    assert np.array_equal(detector.detect(rgb).points, chosen.points)
    avatar = renderer.prepare(photo, SIZE)  # and the rig is built on that face
    assert avatar.rig.points[list(T.FACE_OVAL)][:, 0].ptp() > 0.3 * SIZE


@pytest.fixture(scope="module")
def piper_speech() -> Speech:
    """One short English sentence from the real Piper voice, and a pause."""
    from pipeline.config import PROJECT_ROOT
    from pipeline.tts.piper import PiperSynthesizer
    from pipeline.types import VoiceSettings

    piper = PiperSynthesizer(PROJECT_ROOT / "checkpoints" / "piper" / "en_US-joe-medium.onnx")
    spoken = piper.synthesize("Maybe we should meet at noon, or a bit later today.", "en", VoiceSettings())
    pause = np.zeros(round(0.5 * spoken.audio.sample_rate), np.float32)
    audio = Audio(np.concatenate([spoken.audio.samples, pause]), spoken.audio.sample_rate)
    return Speech(spoken.text, "en", audio, spoken.words, spoken.phonemes, spoken.engine)


@pytest.mark.real_models
@pytest.mark.parametrize("name", HARD_SET)
def test_hard_photos_lip_sync(renderer: WarpRenderer, piper_speech: Speech, name: str, tmp_path: Path):
    """Lip-sync on each hard photo, measured as bench/lip_sync.py does: the clip is encoded and
    decoded, FaceMesh re-detects the lips on every frame, Pearson r against the loudness."""
    from pipeline.media.video_output import VideoWriter
    from tests.helpers import lip_sync, probe_mp4

    avatar = renderer.prepare(_hard(name), SIZE)
    n = round(piper_speech.duration * FPS)
    writer = VideoWriter(tmp_path / "clip.mp4", SIZE, FPS)
    for frames in renderer.render(avatar, piper_speech, fps=FPS, start_time=0.0, n_frames=n):
        writer.write(frames)
    sync = lip_sync(probe_mp4(writer.finish(piper_speech.audio)))
    assert sync.correlation >= 0.6, f"{name}: r = {sync.correlation:.3f}"
    assert sync.rest_open < 0.5 * sync.peak_open
