"""The renderer plug-in seam: registry, per-backend settings, capabilities, lifecycle, sessions, forget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from memory.store import MemoryStore
from pipeline.assembler import ReplyAssembler
from pipeline.config import BackendSettings, Settings, load_settings
from pipeline.errors import ConfigError
from pipeline.render import registry
from pipeline.render.base import AvatarRenderer, Capabilities
from pipeline.render.factory import build_renderer, renders_on_gpu
from pipeline.render.registry import Backend, avatar_cache_dir, get_backend
from pipeline.render.shared_batches import SharedBatchRenderer
from pipeline.render.warp import WarpRenderer, landmark_cache_files, render_frames
from pipeline.types import Speech, StageTimings, VoiceSettings
from tests.helpers import probe_mp4
from tests.test_render import AVATAR, FPS, HOPPER, SEED, SIZE, _speech


# ---------------------------------------------------------------------------- a backend of the tests' own
class FakeSettings(BackendSettings):
    checkpoint: Path = Path("checkpoints/fake/fake.pth")
    size: int = 96


class _Avatar:
    def __init__(self, key: str, size: int) -> None:
        self.key, self.size, self.width, self.height = key, size, size, size


class _WholeUtteranceSession:
    def __init__(self, avatar: _Avatar, fps: int) -> None:
        self.avatar, self.fps, self.owed, self.fed = avatar, fps, 0, []

    def feed(self, speech: Speech, *, start_time: float, n_frames: int) -> Iterator[np.ndarray]:
        self.fed.append((speech.text, start_time, n_frames))
        self.owed += n_frames
        return iter(())

    def finish(self) -> Iterator[np.ndarray]:
        # frame i is grey level i, so order and count can be read back from the video
        for i in range(0, self.owed, 10):
            n = min(10, self.owed - i)
            levels = np.minimum(np.arange(i, i + n) * 4, 255).astype(np.uint8)
            yield np.broadcast_to(levels[:, None, None, None], (n, 64, 64, 3)).copy()


class FakeRenderer:
    """A whole-utterance, non-batchable renderer with a cache on disk, like SadTalker will be."""

    name = "fake"

    def __init__(self, settings: Settings) -> None:
        self.own = settings.render.backend_settings("fake")
        self.cache_dir = avatar_cache_dir(settings) / "fake"
        self.loaded = self.closed = False
        self.cached: dict[str, bytes] = {}
        self.sessions: list[_WholeUtteranceSession] = []

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(device="cpu", batchable=False, streaming=False, whole_utterance=True)

    def load(self) -> None:
        self.loaded = True

    def close(self) -> None:
        self.closed = True

    def forget(self, image: bytes) -> None:
        self.cached.pop(_fake_key(image), None)
        _fake_forget_cached_in(self.cache_dir, image)

    def prepare(self, image: bytes, size: int) -> _Avatar:
        self.cached[_fake_key(image)] = image
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        (self.cache_dir / f"{_fake_key(image)}.box").write_bytes(b"face box")
        return _Avatar(_fake_key(image), 64)

    def session(self, avatar: _Avatar, *, fps: int) -> _WholeUtteranceSession:
        self.sessions.append(_WholeUtteranceSession(avatar, fps))
        return self.sessions[-1]


def _fake_key(image: bytes) -> str:
    import hashlib

    return hashlib.sha256(image).hexdigest()


def _fake_forget_cached_in(folder: Path, image: bytes) -> None:
    (folder / f"{_fake_key(image)}.box").unlink(missing_ok=True)


@pytest.fixture
def fake_backend() -> Iterator[Backend]:
    backend = registry.register(
        Backend(
            "fake",
            build=FakeRenderer,
            settings=FakeSettings,
            forget_cached=lambda s, image: _fake_forget_cached_in(avatar_cache_dir(s) / "fake", image),
        )
    )
    yield backend
    registry.unregister("fake")


def _settings(tmp_path: Path, **env: str) -> Settings:
    environ = {"TALKTWIN_PATHS__DATA_DIR": str(tmp_path), "TALKTWIN_RENDER__DEVICE": "cpu"}
    return load_settings(environ=environ | {f"TALKTWIN_RENDER__{k.upper()}": v for k, v in env.items()})


# ---------------------------------------------------------------------------- registry and settings
def test_warp_is_registered_and_the_default():
    assert "warp" in registry.backend_names()
    assert load_settings(environ={}).render.backend == "warp"
    with pytest.raises(ConfigError, match=r"unknown renderer 'nope'; known renderers: .*warp"):
        get_backend("nope")


def test_a_registered_backend_brings_its_settings_section(fake_backend: Backend, tmp_path: Path):
    s = _settings(tmp_path, backend="fake", fake__checkpoint="/models/mine.pth")
    assert s.render.backend_settings() == FakeSettings(checkpoint=Path("/models/mine.pth"), size=96)
    assert s.render.warp.seed == SEED  # the other backends' sections are still there
    with pytest.raises(ConfigError, match=r"render\.fake\.chekpoint"):
        _settings(tmp_path, fake__chekpoint="x")
    with pytest.raises(ConfigError, match=r"render\.fake\.size"):
        _settings(tmp_path, fake__size="big")
    renderer = build_renderer(s)
    assert isinstance(renderer, FakeRenderer) and renderer.loaded  # built, then loaded
    assert isinstance(renderer, AvatarRenderer)
    assert renderer.own.checkpoint == Path("/models/mine.pth")


def test_names_must_be_unique_and_not_a_render_key(fake_backend: Backend):
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(Backend("fake", build=FakeRenderer))
    with pytest.raises(ValueError, match="clashes"):
        registry.register(Backend("size", build=FakeRenderer))


# ---------------------------------------------------------------------------- capabilities and batching
def test_capabilities_decide_gpu_and_shared_batches(fake_backend: Backend, tmp_path: Path):
    warp = build_renderer(_settings(tmp_path))
    assert isinstance(warp, WarpRenderer)
    assert warp.capabilities == Capabilities("cpu", batchable=True, streaming=True, whole_utterance=False)
    assert not renders_on_gpu(warp)
    shared = build_renderer(_settings(tmp_path, share_batches="on"))
    assert isinstance(shared, SharedBatchRenderer) and shared.capabilities == warp.capabilities
    shared.close()
    fake = build_renderer(_settings(tmp_path, backend="fake"))  # "auto": never shared when not batchable
    assert isinstance(fake, FakeRenderer)
    with pytest.raises(ConfigError, match=r"render\.share_batches: the fake renderer cannot share"):
        build_renderer(_settings(tmp_path, backend="fake", share_batches="on"))
    with pytest.raises(ValueError, match="cannot draw shared batches"):
        SharedBatchRenderer(fake)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- sessions
@pytest.fixture(scope="module")
def warp() -> WarpRenderer:
    return WarpRenderer(device="cpu", batch=8, seed=SEED)


def _direct(renderer: WarpRenderer, avatar, sentences: list[tuple[Speech, float, int]]) -> np.ndarray:
    """Today's path, by hand: the controls, cut in batches, each drawn by render_frames."""
    frames = []
    for speech, start, n in sentences:
        controls = renderer.control_tensor(speech, fps=FPS, start_time=start, n_frames=n)
        for i in range(0, n, renderer.batch):
            frames.append(render_frames(avatar.rig, controls[i : i + renderer.batch], avatar.backdrop))
    return np.concatenate(frames)


SENTENCES = [(_speech(0.2, 0.7), 0.0, 23), (_speech(0.1, 0.5), 0.92, 15), (_speech(0.0, 0.3), 1.52, 8)]


def test_warp_session_frames_are_byte_identical_to_the_direct_call(warp: WarpRenderer):
    avatar = warp.prepare(AVATAR.read_bytes(), SIZE)
    session = warp.session(avatar, fps=FPS)
    got = []
    for speech, start, n in SENTENCES:
        batches = list(session.feed(speech, start_time=start, n_frames=n))
        assert [len(b) for b in batches] == [min(8, n - i) for i in range(0, n, 8)]  # streamed per batch
        got.extend(batches)
    assert list(session.finish()) == []  # a per-sentence renderer owes nothing at the end
    assert np.array_equal(np.concatenate(got), _direct(warp, avatar, SENTENCES))


def test_shared_batch_session_gives_the_same_frames(warp: WarpRenderer):
    shared = SharedBatchRenderer(warp)
    try:
        avatar = shared.prepare(HOPPER.read_bytes(), SIZE)
        session = shared.session(avatar, fps=FPS)
        got = [
            f for speech, start, n in SENTENCES for f in session.feed(speech, start_time=start, n_frames=n)
        ]
        want = _direct(warp, avatar, SENTENCES)
        assert np.abs(np.concatenate(got).astype(int) - want.astype(int)).max() <= 1  # summation order only
    finally:
        shared.close()


class _ToneTTS:
    def synthesize(self, text: str, language: str, voice: VoiceSettings) -> Speech:
        from pipeline.types import Audio

        t = np.arange(8000) / 16000
        return Speech(text, language, Audio((0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32), 16000))


def test_a_whole_utterance_renderer_draws_at_finish(fake_backend: Backend, tmp_path: Path):
    renderer = build_renderer(_settings(tmp_path, backend="fake"))
    assert isinstance(renderer, FakeRenderer)
    avatar = renderer.prepare(AVATAR.read_bytes(), SIZE)
    assembler = ReplyAssembler(
        fmt="video",
        language="en",
        voice=VoiceSettings(),
        synthesizer=_ToneTTS(),
        renderer=renderer,
        avatar=avatar,
        out_path=tmp_path / "reply.mp4",
        fps=FPS,
        max_seconds=30,
        writer_options={},
        subtitles=None,
        timings=StageTimings(),
    )
    assembler.add("One.")
    assembler.add("Two.")
    (session,) = renderer.sessions
    assert [text for text, _, _ in session.fed] == ["One.", "Two."]
    assert session.fed[0][1] == 0.0 and session.fed[1][1] == pytest.approx(0.62, abs=0.01)  # clip time
    info = probe_mp4(assembler.finish())
    assert len(info.frames) == session.owed == sum(n for _, _, n in session.fed)
    levels = info.frames[:, 32, 32].mean(axis=1)
    assert np.all(np.diff(levels[:60]) > 0)  # in order: every frame reached the encoder once


# ---------------------------------------------------------------------------- forget
def test_forget_drops_every_backends_caches_of_the_photo(fake_backend: Backend, tmp_path: Path):
    settings = _settings(tmp_path)
    warp = build_renderer(settings)
    assert isinstance(warp, WarpRenderer)
    fake = FakeRenderer(settings)  # configured earlier: its files on disk, no longer loaded
    photo, other = HOPPER.read_bytes(), AVATAR.read_bytes()
    for image in (photo, other):
        warp.prepare(image, SIZE)
        warp.prepare(image, 384)
        fake.prepare(image, SIZE)
    cache = avatar_cache_dir(settings)
    assert landmark_cache_files(cache, photo) and (cache / "fake" / f"{_fake_key(photo)}.box").exists()

    store = MemoryStore.from_settings(settings)
    store.set_avatar("test:1", photo)
    store.set_avatar("test:2", photo)
    store.forget("test:1")
    assert landmark_cache_files(cache, photo)  # another user still has this photo
    store.forget("test:2")
    assert not landmark_cache_files(cache, photo)
    assert not (cache / "fake" / f"{_fake_key(photo)}.box").exists()  # through its forget_cached
    assert not any(key.startswith(_fake_key(photo)[:32]) for key in warp._avatars)  # and from memory
    assert landmark_cache_files(cache, other) and (cache / "fake" / f"{_fake_key(other)}.box").exists()
    assert sum(key.startswith(_fake_key(other)[:32]) for key in warp._avatars) == 2
    store.close()


def test_a_setting_only_the_build_can_judge_is_one_line_from_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from bots import cli

    def build_fails(settings, args):
        raise ConfigError("render.share_batches: the fake renderer cannot share batches; use auto or off")

    monkeypatch.setattr(cli, "reply_command", build_fails)
    assert cli.main(["reply", "--text", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "config error: render.share_batches: the fake renderer cannot share batches; use auto or off"
    ]
