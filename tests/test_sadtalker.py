"""SadTalker: our nets against the official files' manifests, strict loading of random-valued files in
the official containers, the clear error for a bad file, the audio front end, the CPU refusal, and a
reply drawn end to end (short: it costs seconds per frame on a CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import PROJECT_ROOT
from pipeline.errors import CheckpointError
from pipeline.render import sadtalker_audio as A
from pipeline.render.sadtalker_nets import (
    MappingNet,
    SadTalkerNets,
    load_lm3d,
    load_mapping,
    load_sadtalker,
    read_safetensors,
)
from tests.checkpoint_files import load_layout, write_random_checkpoint

AVATAR = PROJECT_ROOT / "assets" / "avatar.jpg"

# Five landmarks of a frontal face, in the units of the standard 3-D landmarks (x right, y up, z out).
_FIVE_3D = {30: (0.0, 0.0, 0.45), 36: (-0.42, 0.3, 0.1), 39: (-0.2, 0.3, 0.12), 42: (0.2, 0.3, 0.12)}
_FIVE_3D |= {45: (0.42, 0.3, 0.1), 48: (-0.25, -0.38, 0.2), 54: (0.25, -0.38, 0.2)}


def write_lm3d(path: Path) -> Path:
    """A similarity_Lm3D_all.mat of the authors' shape: field 'lm', float32 (68, 3). The points the
    fitting reads are a plausible frontal face; the others are spread on a circle."""
    from scipy.io import savemat

    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    lm = np.stack([0.6 * np.cos(angles), 0.6 * np.sin(angles), np.zeros(68)], 1)
    for i, p in _FIVE_3D.items():
        lm[i] = p
    savemat(str(path), {"lm": lm.astype(np.float32)})
    return path


def write_random_sadtalker_dir(folder: Path, seed: int = 5) -> Path:
    """A checkpoint_dir with random-valued files in the official containers: the safetensors file
    (exactly the published byte size), both mapping files, and the standard landmarks."""
    folder.mkdir(parents=True, exist_ok=True)
    write_random_checkpoint(
        load_layout("SadTalker_V0.0.2_256.json"), folder / "SadTalker_V0.0.2_256.safetensors", seed
    )
    write_random_checkpoint(load_layout("mapping_00229.json"), folder / "mapping_00229-model.pth.tar", seed)
    write_random_checkpoint(load_layout("mapping_00109.json"), folder / "mapping_00109-model.pth.tar", seed)
    write_lm3d(folder / "similarity_Lm3D_all.mat")
    return folder


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_sadtalker_dir(tmp_path_factory.mktemp("sadtalker") / "checkpoints")


# ---------------------------------------------------------------------------- the nets and their files
def _ours(state: dict[str, torch.Tensor]) -> dict[str, tuple[list[int], str]]:
    return {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}


def test_state_dicts_match_the_official_manifests_exactly():
    spec = load_layout("SadTalker_V0.0.2_256.json")
    ours = _ours(SadTalkerNets().state_dict())
    theirs = {k: (v["shape"], v["dtype"]) for k, v in spec["tensors"].items()}
    assert list(ours) == list(theirs)  # same names, same order, nothing extra
    assert ours == theirs  # same shapes and dtypes
    nets = SadTalkerNets()
    assert sum(p.numel() for p in nets.parameters()) == spec["params"] == 181_064_409
    for section, info in spec["sections"].items():
        assert sum(p.numel() for p in getattr(nets, section).parameters()) == info["params"], section
    for name, coeffs in (("mapping_00229.json", 70), ("mapping_00109.json", 73)):
        spec = load_layout(name)
        theirs = {k: (v["shape"], v["dtype"]) for k, v in spec["tensors"].items()}
        assert list(_ours(MappingNet(coeffs).state_dict()).items()) == list(theirs.items())
        assert sum(p.numel() for p in MappingNet(coeffs).parameters()) == spec["params"]


def test_the_official_containers_load_strictly_and_run(checkpoint_dir: Path):
    path = checkpoint_dir / "SadTalker_V0.0.2_256.safetensors"
    assert path.stat().st_size == 725_066_984  # the published file's exact size
    nets = load_sadtalker(path)
    stored = read_safetensors(path)
    for key, value in nets.state_dict().items():
        assert torch.equal(value, stored[key]), key  # every tensor landed bit-exactly
    assert not nets.training
    for name, coeffs in (("mapping_00229-model.pth.tar", 70), ("mapping_00109-model.pth.tar", 73)):
        mapping = load_mapping(checkpoint_dir / name, coeffs)
        stored_map = torch.load(checkpoint_dir / name, map_location="cpu", weights_only=True)["mapping"]
        assert all(torch.equal(v, stored_map[k]) for k, v in mapping.state_dict().items())
        out = mapping(torch.zeros(2, coeffs, 27))
        assert out["yaw"].shape == (2, 66) and out["t"].shape == (2, 3) and out["exp"].shape == (2, 45)
    five = load_lm3d(checkpoint_dir / "similarity_Lm3D_all.mat")
    assert five.shape == (5, 3) and five[0, 0] < five[2, 0] < five[1, 0]  # left eye, nose, right eye
    with torch.no_grad():
        coeffs = nets.face_3drecon(torch.rand(1, 3, 224, 224))
        assert coeffs.shape == (1, 257)
        exp = nets.audio2exp(torch.zeros(3, 1, 80, 16), torch.zeros(3, 64), torch.zeros(3, 1))
        assert exp.shape == (3, 64)
        pose = nets.audio2pose(
            torch.zeros(1, 40, 1, 80, 16), torch.zeros(1, 6), 0, torch.Generator().manual_seed(0)
        )
        assert pose.shape == (1, 40, 6) and torch.all(pose[0, 0] == 0)  # frame 0 is the reference
        kp = nets.kp_extractor(torch.rand(1, 3, 256, 256))
        assert kp.shape == (1, 15, 3) and kp.abs().max() <= 1
        volume = nets.generator.source_volume(torch.rand(1, 3, 256, 256))
        assert volume.shape == (1, 32, 16, 64, 64)
        frame = nets.generator(volume, kp + 0.01, kp)
        assert frame.shape == (1, 3, 256, 256) and torch.all((frame >= 0) & (frame <= 1))


def test_a_bad_file_gets_one_clear_error(checkpoint_dir: Path, tmp_path: Path):
    def refused(load, path: Path, *args) -> str:
        with pytest.raises(CheckpointError) as err:
            load(path, *args)
        message = err.value.user_message("en")
        assert str(path) in message and "github.com/OpenTalker/SadTalker" in message and "\n" not in message
        assert str(path) in err.value.user_message("zh") and "作者" in err.value.user_message("zh")
        return message

    nets = checkpoint_dir / "SadTalker_V0.0.2_256.safetensors"
    assert "does not exist" in refused(load_sadtalker, tmp_path / "SadTalker_V0.0.2_256.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    with nets.open("rb") as f:
        truncated.write_bytes(f.read(50_000_000))
    message = refused(load_sadtalker, truncated)
    assert "cannot be read" in message and "cut short" in message and "1305 tensors" in message
    text = tmp_path / "notes.safetensors"
    text.write_text("not a checkpoint")
    assert "cannot be read" in refused(load_sadtalker, text)
    torch_file = tmp_path / "torch.safetensors"  # a torch.save file under the safetensors name
    torch.save({"a": torch.zeros(2)}, torch_file)
    assert "cannot be read" in refused(load_sadtalker, torch_file)
    other = tmp_path / "other.safetensors"
    write_random_checkpoint(
        {"container": "safetensors", "tensors": {"x.weight": {"shape": [2, 2], "dtype": "float32"}}}, other
    )
    assert "1305 tensors missing" in refused(load_sadtalker, other) and "1 unexpected" in refused(
        load_sadtalker, other
    )

    mapping = checkpoint_dir / "mapping_00229-model.pth.tar"
    assert "does not exist" in refused(load_mapping, tmp_path / "mapping.pth.tar", 70)
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(mapping.read_bytes()[:1_000_000])
    assert "cannot be read" in refused(load_mapping, cut, 70)
    # the full-mode file where the crop-mode one belongs: one tensor of another shape
    wrong = refused(load_mapping, checkpoint_dir / "mapping_00109-model.pth.tar", 70)
    assert "1 of another shape (e.g. first.0.weight (1024, 73, 7) instead of (1024, 70, 7))" in wrong
    plain = tmp_path / "plain.pth.tar"
    torch.save(MappingNet(70).state_dict(), plain)
    assert "no 'mapping' entry" in refused(load_mapping, plain, 70)

    assert "does not exist" in refused(load_lm3d, tmp_path / "similarity_Lm3D_all.mat")
    bad_mat = tmp_path / "bad.mat"
    bad_mat.write_text("nope")
    assert "cannot be read as a .mat" in refused(load_lm3d, bad_mat)


# ---------------------------------------------------------------------------- audio
def test_sadtalker_mel_pads_with_zeros_and_windows_start_two_frames_early():
    from pipeline.render import wav2lip_audio as W

    rng = np.random.default_rng(1)
    wav = (rng.standard_normal(6400) * 0.1).astype(np.float32)
    ours, reflect = A.mel_spectrogram(wav), W.mel_spectrogram(wav)
    assert ours.shape == reflect.shape == (80, 33)
    assert np.allclose(ours[:, 3:-3], reflect[:, 3:-3], atol=1e-5)  # same away from the edges
    assert not np.allclose(ours[:, 0], reflect[:, 0], atol=1e-3)  # zero padding, not reflect
    mel = np.tile(np.arange(100, dtype=np.float32), (80, 1))
    windows = A.mel_windows(mel, 30)
    assert windows.shape == (30, 1, 80, 16)
    assert list(windows[:4, 0, 0, 0].astype(int)) == [0, 0, 0, 3]  # int(3.2 * (i - 2)), clamped at 0
    assert list(windows[0, 0, 0, :8].astype(int)) == [0, 0, 0, 0, 0, 0, 0, 1]  # start -6
    assert windows[29, 0, 0, -1] == 99  # clamped at the end
    blinks = A.blinks(200, np.random.default_rng(0))
    assert blinks.shape == (200, 1) and blinks.max() == 1.0
    assert np.allclose(np.unique(blinks), [0, 0.5, 0.9, 1.0])
    assert not A.blinks(20, np.random.default_rng(0)).any()


# ---------------------------------------------------------------------------- the backend
def _settings(tmp_path: Path, checkpoint_dir: Path, **env: str):
    from pipeline.config import load_settings

    return load_settings(
        environ={
            "TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data"),
            "TALKTWIN_RENDER__BACKEND": "sadtalker",
            "TALKTWIN_RENDER__SADTALKER__CHECKPOINT_DIR": str(checkpoint_dir),
            "TALKTWIN_RENDER__DEVICE": "cpu",
            "TALKTWIN_RENDER__SIZE": "256",
            **env,
        }
    )


def test_settings_and_a_missing_file_stops_the_start(checkpoint_dir: Path, tmp_path: Path):
    from pipeline.config import load_settings
    from pipeline.render.factory import build_renderer

    default = load_settings(environ={}).render.backend_settings("sadtalker")
    assert (default.checkpoint_dir, default.size, default.preprocess) == (
        Path("checkpoints/sadtalker"),
        256,
        "crop",
    )
    settings = _settings(tmp_path, tmp_path / "mine", TALKTWIN_RENDER__SADTALKER__PREPROCESS="full")
    assert settings.render.backend_settings().preprocess == "full"
    with pytest.raises(CheckpointError, match=r"similarity_Lm3D_all\.mat: the file does not exist"):
        build_renderer(settings)  # no fallback to another renderer
    partial = tmp_path / "partial"
    partial.mkdir()
    write_lm3d(partial / "similarity_Lm3D_all.mat")
    with pytest.raises(CheckpointError, match=r"mapping_00109-model\.pth\.tar: the file does not exist"):
        build_renderer(_settings(tmp_path, partial, TALKTWIN_RENDER__SADTALKER__PREPROCESS="full"))


@pytest.fixture(scope="module")
def renderer(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from pipeline.render.factory import build_renderer

    tmp = tmp_path_factory.mktemp("st")
    return build_renderer(_settings(tmp, checkpoint_dir, TALKTWIN_RENDER__SADTALKER__MAX_CPU_SECONDS="2"))


def test_a_whole_utterance_session_draws_at_finish_and_refuses_long_answers_on_cpu(renderer):
    from pipeline.render.sadtalker import AnswerTooLongForCPU, SadTalkerRenderer
    from tests.test_render import _speech

    assert isinstance(renderer, SadTalkerRenderer)
    assert renderer.capabilities.whole_utterance and not renderer.capabilities.batchable
    avatar = renderer.prepare(AVATAR.read_bytes(), 128)
    assert (avatar.width, avatar.height) == (128, 128) and avatar.coeffs.shape == (73,)
    session = renderer.session(avatar, fps=10)
    assert list(session.feed(_speech(0.2, 0.6), start_time=0.0, n_frames=2)) == []  # nothing until finish
    frames = list(session.finish())
    assert sum(len(f) for f in frames) == 2 and frames[0].shape[1:] == (128, 128, 3)
    assert frames[0].dtype == np.uint8

    long = renderer.session(avatar, fps=25)
    list(long.feed(_speech(0.2, 0.6), start_time=0.0, n_frames=40))
    with pytest.raises(AnswerTooLongForCPU) as err:
        list(long.feed(_speech(0.2, 0.6), start_time=1.6, n_frames=20))
    assert "2.4 s" in err.value.user_message("en") and "limited to 2 s" in err.value.user_message("en")
    assert "上限为 2 秒" in err.value.user_message("zh")


def test_forget_drops_the_photo(renderer, tmp_path: Path, checkpoint_dir: Path):
    from memory.store import MemoryStore

    photo = AVATAR.read_bytes()
    renderer.prepare(photo, 128)
    assert renderer._avatars
    settings = _settings(tmp_path, checkpoint_dir)
    store = MemoryStore.from_settings(settings)
    store.set_avatar("test:st", photo)
    store.forget("test:st")  # reaches every live renderer through the registry
    assert not renderer._avatars
    store.close()


def test_models_list_checks_the_sadtalker_files(checkpoint_dir: Path, tmp_path: Path):
    def models_list(**env: str) -> subprocess.CompletedProcess:
        cli = [sys.executable, str(PROJECT_ROOT / "run_bots.py"), "models", "list"]
        return subprocess.run(cli, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)

    good = models_list(TALKTWIN_RENDER__SADTALKER__CHECKPOINT_DIR=str(checkpoint_dir))
    assert good.returncode == 0 and good.stdout.count("✓ sadtalker") == 3, good.stdout
    assert str(checkpoint_dir / "SadTalker_V0.0.2_256.safetensors") in good.stdout
    missing = models_list(
        TALKTWIN_RENDER__SADTALKER__CHECKPOINT_DIR=str(tmp_path), TALKTWIN_RENDER__BACKEND="sadtalker"
    )
    assert missing.returncode == 1 and missing.stdout.count("✗ sadtalker") == 3
    assert "the file does not exist (configured renderer)" in missing.stdout


@pytest.mark.real_models
def test_cli_reply_with_sadtalker(checkpoint_dir: Path, tmp_path: Path):
    """`run_bots.py reply` with TALKTWIN_RENDER__BACKEND=sadtalker and the (random) checkpoint folder,
    a tiny answer at 10 fps: a valid H.264 + AAC mp4 of the speech's length and the configured size."""
    from tests.helpers import probe_mp4
    from tests.test_llm import FakeOpenAIServer

    env = {
        **os.environ,
        "TALKTWIN_RENDER__BACKEND": "sadtalker",
        "TALKTWIN_RENDER__SADTALKER__CHECKPOINT_DIR": str(checkpoint_dir),
        "TALKTWIN_RENDER__SADTALKER__MAX_CPU_SECONDS": "30",
        "TALKTWIN_RENDER__SIZE": "256",
        "TALKTWIN_RENDER__FPS": "10",
        "TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data"),
        "TALKTWIN_LLM__BACKEND": "openai",  # a local server's one-word answer: the frames are the test
        "TALKTWIN_LLM__MODEL": "fake",
        "TALKTWIN_TTS__BACKEND": "piper",
        "TALKTWIN_REPLY__TIMEOUT_S": "1500",  # seconds per frame on a CPU: far past the defaults
        "TALKTWIN_REPLY__RENDER_TIMEOUT_S": "1500",
    }
    out = tmp_path / "reply.mp4"
    cli = [
        sys.executable,
        str(PROJECT_ROOT / "run_bots.py"),
        "reply",
        "--text",
        "Say hi.",
        "--format",
        "video",
    ]
    # "Uh." is ~0.3 s of Piper speech: 4-5 frames with the sentence pause, where "Hi." (~0.48 s) made 6
    with FakeOpenAIServer(["Uh."]) as llm:
        env["TALKTWIN_LLM__BASE_URL"] = llm.base_url
        done = subprocess.run([*cli, "-o", str(out)], env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr
    info = probe_mp4(out)
    assert (info.video_codec, info.audio_codec, info.width, info.height) == ("h264", "aac", 256, 256)
    assert abs(len(info.frames) / 10 - info.audio_duration) < 0.15
