"""Wav2Lip: our generator against the official file's manifest, strict loading of a random-valued file
in the official container, the clear error for a bad file, and the authors' mel front end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import PROJECT_ROOT
from pipeline.errors import CheckpointError
from pipeline.render import wav2lip_audio as A
from pipeline.render.wav2lip_net import Wav2LipNet, load_wav2lip
from tests.checkpoint_files import load_layout, write_random_checkpoint


def _manifest(name: str) -> dict:
    return load_layout(name)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """wav2lip_gan.pth with random values in the official container (torch.save dict, legacy
    serialization, `module.` keys), from the layout in tests/data/checkpoint_layouts."""
    out = tmp_path_factory.mktemp("w2l") / "wav2lip_gan.pth"
    return write_random_checkpoint(load_layout("wav2lip_gan.json"), out, seed=3)


# ---------------------------------------------------------------------------- the network and its file
@pytest.mark.parametrize("manifest", ["wav2lip_gan.json", "wav2lip.json"])
def test_state_dict_matches_the_official_manifest_exactly(manifest: str):
    spec = _manifest(manifest)
    ours = {
        spec["key_prefix"] + k: (list(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in Wav2LipNet().state_dict().items()
    }
    theirs = {k: (v["shape"], v["dtype"]) for k, v in spec["tensors"].items()}
    assert list(ours) == list(theirs)  # same names, same order, nothing extra
    assert ours == theirs  # same shapes and dtypes
    params = sum(p.numel() for p in Wav2LipNet().parameters())
    assert params == spec["params"] == 36_298_035


def test_the_official_container_loads_strictly_and_runs(random_checkpoint: Path):
    net = load_wav2lip(random_checkpoint)
    stored = torch.load(random_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in net.state_dict().items():
        assert torch.equal(value, stored["module." + key]), key  # every tensor landed bit-exactly
    assert not net.training
    with torch.no_grad():
        out = net(torch.zeros(2, 1, 80, 16), torch.rand(2, 6, 96, 96))
    assert out.shape == (2, 3, 96, 96) and torch.all((out > 0) & (out < 1))


def test_a_bad_file_gets_one_clear_error(random_checkpoint: Path, tmp_path: Path):
    def refused(path: Path) -> str:
        with pytest.raises(CheckpointError) as err:
            load_wav2lip(path)
        message = err.value.user_message("en")
        assert str(path) in message and "352 tensors" in message and "github.com/Rudrabha/Wav2Lip" in message
        assert str(path) in err.value.user_message("zh") and "作者" in err.value.user_message("zh")
        assert "\n" not in message
        return message

    assert "does not exist" in refused(tmp_path / "missing.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(random_checkpoint.read_bytes()[:40_000_000])
    assert "cannot be read" in refused(truncated)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    assert "cannot be read" in refused(text)
    other = tmp_path / "other.pth"  # a real torch file of another model
    torch.save({"state_dict": {"module.conv.weight": torch.zeros(3, 3)}}, other)
    assert "352 tensors missing" in refused(other) and "1 unexpected" in refused(other)
    plain = tmp_path / "plain.pth"
    torch.save(Wav2LipNet().state_dict(), plain)  # tensors without the authors' container
    assert "no 'state_dict'" in refused(plain)
    reshaped = tmp_path / "reshaped.pth"
    state = Wav2LipNet().state_dict()
    state["output_block.1.weight"] = torch.zeros(3, 32, 3, 3)
    torch.save({"state_dict": state}, reshaped)
    assert (
        "1 of another shape (e.g. output_block.1.weight (3, 32, 3, 3) instead of (3, 32, 1, 1))"
        in refused(reshaped)
    )


# ---------------------------------------------------------------------------- the mel front end
def test_slaney_mel_scale_and_filters():
    assert A.hz_to_mel(1000.0) == pytest.approx(15.0)
    assert A.hz_to_mel(200.0) == pytest.approx(3.0)
    assert A.hz_to_mel(6400.0) == pytest.approx(42.0)  # 27 steps of log(6.4)/27 above 1 kHz
    hz = np.array([55.0, 700.0, 1000.0, 3000.0, 7600.0])
    assert np.allclose(A.mel_to_hz(A.hz_to_mel(hz)), hz)
    fb = A.mel_filters()
    assert fb.shape == (80, 401) and fb.min() >= 0
    bin_hz = A.SAMPLE_RATE / A.N_FFT  # 20 Hz
    areas = fb.sum(axis=1) * bin_hz
    assert np.allclose(areas[40:], 1.0, atol=0.02)  # area normalised, where bands span many bins
    peaks = np.argmax(fb, axis=1) * bin_hz
    assert np.all(np.diff(peaks) >= 0) and 60 <= peaks[0] <= 100 and 7000 < peaks[-1] < 7600
    assert fb[:, int(7700 / bin_hz) :].max() == 0 and fb[:, : int(50 / bin_hz)].max() == 0


def test_mel_spectrogram_shape_range_and_pitch():
    sr = A.SAMPLE_RATE
    t = np.arange(sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    mel = A.mel_spectrogram(tone)
    assert mel.shape == (80, 1 + sr // 200) and mel.dtype == np.float32
    assert mel.min() >= -4 and mel.max() <= 4
    centre = A.mel_filters()[:, 50]  # the bands that weigh the 1 kHz bin
    assert abs(int(np.argmax(mel[:, 40])) - int(np.argmax(centre))) <= 1
    assert np.all(A.mel_spectrogram(np.zeros(sr // 2, np.float32)) == -4)  # silence: the floor
    assert A.mel_spectrogram(np.zeros(1234, np.float32)).shape == (80, 1 + 1234 // 200)
    with pytest.raises(ValueError, match="NaN"):
        A.mel_spectrogram(np.array([0.0, np.nan], np.float32))


def test_mel_spectrogram_follows_the_formula():
    """One frame by hand: pre-emphasis, reflect padding, periodic Hann, |rfft|, mel, dB, normalise."""
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal(3000) * 0.1).astype(np.float64)
    emphasised = np.concatenate([wav[:1], wav[1:] - 0.97 * wav[:-1]])
    padded = np.pad(emphasised, 400, mode="reflect")
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(800) / 800)
    frame = 7
    spectrum = np.abs(np.fft.rfft(padded[frame * 200 : frame * 200 + 800] * hann))
    db = 20 * np.log10(np.maximum(A.mel_filters().astype(np.float64) @ spectrum, 1e-5)) - 20
    want = np.clip(8 * (db + 100) / 100 - 4, -4, 4)
    assert np.allclose(A.mel_spectrogram(wav.astype(np.float32))[:, frame], want, atol=2e-4)


def test_mel_windows_per_video_frame():
    mel = np.tile(np.arange(100, dtype=np.float32), (80, 1))  # column j holds j
    windows = A.mel_windows(mel, fps=25, n_frames=30)
    assert windows.shape == (30, 1, 80, 16)
    starts = windows[:, 0, 0, 0].astype(int)
    assert list(starts[:6]) == [0, 3, 6, 9, 12, 16]  # int(i * 3.2)
    assert starts[-1] == 100 - 16  # past the end: the last 16 mel frames
    later = A.mel_windows(mel, fps=25, n_frames=2, first_frame=10)
    assert list(later[:, 0, 0, 0].astype(int)) == [32, 35]
    short = A.mel_windows(np.zeros((80, 5), np.float32), fps=25, n_frames=2)
    assert short.shape == (2, 1, 80, 16) and short[0, 0, 0, -1] == -4


# ---------------------------------------------------------------------------- the backend
def _settings(tmp_path: Path, checkpoint: Path, **env: str):
    from pipeline.config import load_settings

    return load_settings(
        environ={
            "TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data"),
            "TALKTWIN_RENDER__BACKEND": "wav2lip",
            "TALKTWIN_RENDER__WAV2LIP__CHECKPOINT": str(checkpoint),
            "TALKTWIN_RENDER__DEVICE": "cpu",
            "TALKTWIN_RENDER__SIZE": "256",
            **env,
        }
    )


def test_wav2lip_settings_and_a_missing_checkpoint_stops_the_start(tmp_path: Path):
    from pipeline.config import load_settings
    from pipeline.render.factory import build_renderer

    default = load_settings(environ={})
    assert default.render.wav2lip.checkpoint == Path("checkpoints/wav2lip/wav2lip_gan.pth")
    settings = _settings(tmp_path, tmp_path / "mine.pth")
    assert settings.render.backend_settings().checkpoint == tmp_path / "mine.pth"
    with pytest.raises(CheckpointError, match=r"mine\.pth: the file does not exist"):
        build_renderer(settings)  # no fallback to another renderer


def test_a_reply_rendered_by_wav2lip(random_checkpoint: Path, tmp_path: Path):
    """End to end through the pipeline (scripted answer, real voice and encoder): a valid H.264 + AAC
    mp4 of the speech's length, the mouth region drawn by the generator, the rest of the face still."""
    from memory.history import InProcessHistory
    from pipeline.orchestrator import ReplyPipeline, ReplyRequest
    from pipeline.render.factory import build_renderer
    from pipeline.render.wav2lip import Wav2LipRenderer
    from pipeline.tts.factory import build_synthesizer
    from tests.helpers import NoRecognizer, ScriptedChat, probe_mp4

    settings = _settings(tmp_path, random_checkpoint, TALKTWIN_TTS__BACKEND="piper")
    renderer = build_renderer(settings)
    assert isinstance(renderer, Wav2LipRenderer) and renderer.capabilities.batchable
    pipeline = ReplyPipeline(
        settings,
        recognizer=NoRecognizer(),
        chat_model=ScriptedChat("Hello there. This is a test."),
        synthesizer=build_synthesizer(settings),
        renderer=renderer,
        context=InProcessHistory(),
    )
    result = pipeline.reply(ReplyRequest("test:w2l", text="Hi", format="video"), tmp_path / "reply.mp4")
    info = probe_mp4(result.media_path)
    assert (info.video_codec, info.audio_codec, info.width, info.height) == ("h264", "aac", 256, 256)
    assert len(info.frames) == round(result.duration * 25)
    assert abs(info.audio_duration - result.duration) < 0.1
    avatar = renderer.prepare((PROJECT_ROOT / "assets" / "avatar.jpg").read_bytes(), 256)
    y0, y1, x0, x1 = avatar.box
    still = avatar.warp.rig.still.astype(int)
    mouth = slice(y0 + (y1 - y0) * 2 // 3, y1 - 4), slice(x0 + (x1 - x0) // 3, x1 - (x1 - x0) // 3)
    changed = np.abs(info.frames[:, mouth[0], mouth[1]].astype(int) - still[mouth]).mean()
    unchanged = np.abs(info.frames[:, : y0 // 2].astype(int) - still[: y0 // 2]).mean()
    assert changed > 8 > 3 > unchanged  # the random generator's mouth is pasted; the hair is the photo


def test_wav2lip_shares_batches_and_forgets(random_checkpoint: Path, tmp_path: Path):
    from memory.store import MemoryStore
    from pipeline.render.factory import build_renderer
    from pipeline.render.shared_batches import SharedBatchRenderer
    from pipeline.render.warp import landmark_cache_files
    from tests.test_render import _speech

    settings = _settings(tmp_path, random_checkpoint, TALKTWIN_RENDER__SHARE_BATCHES="on")
    shared = build_renderer(settings)
    assert isinstance(shared, SharedBatchRenderer)
    inner = shared.inner
    photo = (PROJECT_ROOT / "assets" / "grace_hopper.jpg").read_bytes()
    avatar = shared.prepare(photo, 256)
    speech = _speech(0.2, 0.6)
    together = np.concatenate(list(shared.session(avatar, fps=25).feed(speech, start_time=0.5, n_frames=20)))
    alone = np.concatenate(list(inner.session(avatar, fps=25).feed(speech, start_time=0.5, n_frames=20)))
    assert together.shape == (20, 256, 256, 3) and np.abs(together.astype(int) - alone.astype(int)).max() <= 1

    store = MemoryStore.from_settings(settings)
    store.set_avatar("test:w", photo)
    store.forget("test:w")
    assert not inner._avatars and not inner.warp._avatars  # the prepared photo, in memory ...
    assert not landmark_cache_files(tmp_path / "data" / "cache" / "avatars", photo)  # ... and on disk
    store.close()
    shared.close()


@pytest.mark.real_models
def test_cli_reply_with_wav2lip_and_a_bad_checkpoint(random_checkpoint: Path, tmp_path: Path):
    """`run_bots.py reply` with TALKTWIN_RENDER__BACKEND=wav2lip: a video of the answer with the user's
    (here random) checkpoint; one clear line and exit code 1 for a truncated one."""
    import os

    from tests.helpers import probe_mp4
    from tests.test_llm import FakeOpenAIServer

    env = {
        **os.environ,
        "TALKTWIN_RENDER__BACKEND": "wav2lip",
        "TALKTWIN_RENDER__WAV2LIP__CHECKPOINT": str(random_checkpoint),
        "TALKTWIN_RENDER__SIZE": "256",
        "TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data"),
        "TALKTWIN_LLM__BACKEND": "openai",  # a local server's short answer: the frames are the test
        "TALKTWIN_LLM__MODEL": "fake",
        "TALKTWIN_TTS__BACKEND": "piper",
    }
    out = tmp_path / "reply.mp4"
    cli = [
        sys.executable,
        str(PROJECT_ROOT / "run_bots.py"),
        "reply",
        "--text",
        "Say hello.",
        "--format",
        "video",
    ]
    with FakeOpenAIServer(["Hello! Nice", " to meet you."]) as llm:
        env["TALKTWIN_LLM__BASE_URL"] = llm.base_url
        done = subprocess.run([*cli, "-o", str(out)], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        info = probe_mp4(out)
        assert (info.video_codec, info.audio_codec, info.width, info.height) == ("h264", "aac", 256, 256)
        assert abs(len(info.frames) / 25 - info.audio_duration) < 0.1

        truncated = tmp_path / "wav2lip_gan.pth"
        truncated.write_bytes(random_checkpoint.read_bytes()[:1_000_000])
        env["TALKTWIN_RENDER__WAV2LIP__CHECKPOINT"] = str(truncated)
        failed = subprocess.run(
            [*cli, "-o", str(tmp_path / "x.mp4")], env=env, capture_output=True, text=True, timeout=600
        )
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: Cannot use the model file {truncated}: it cannot be read")
    assert "github.com/Rudrabha/Wav2Lip" in last and not (tmp_path / "x.mp4").exists()


def test_models_list_checks_the_renderer_checkpoints(random_checkpoint: Path, tmp_path: Path):
    import os

    def models_list(**env: str) -> subprocess.CompletedProcess:
        cli = [sys.executable, str(PROJECT_ROOT / "run_bots.py"), "models", "list"]
        return subprocess.run(cli, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)

    good = models_list(TALKTWIN_RENDER__WAV2LIP__CHECKPOINT=str(random_checkpoint))
    assert good.returncode == 0 and "✓ wav2lip" in good.stdout and str(random_checkpoint) in good.stdout
    broken = tmp_path / "wav2lip_gan.pth"
    broken.write_bytes(random_checkpoint.read_bytes()[:100_000])
    unused = models_list(TALKTWIN_RENDER__WAV2LIP__CHECKPOINT=str(broken))
    assert unused.returncode == 0 and "✗ wav2lip" in unused.stdout and "cannot be read" in unused.stdout
    used = models_list(TALKTWIN_RENDER__WAV2LIP__CHECKPOINT=str(broken), TALKTWIN_RENDER__BACKEND="wav2lip")
    assert used.returncode == 1 and "(configured renderer)" in used.stdout


@pytest.mark.real_models
def test_the_service_refuses_to_start_with_a_missing_checkpoint(tmp_path: Path):
    """`make run` with backend = wav2lip and no file: one clear line and exit code 1, not a traceback
    and not a service that quietly renders with warp."""
    import os

    env = {
        **os.environ,
        "TALKTWIN_RENDER__BACKEND": "wav2lip",
        "TALKTWIN_RENDER__WAV2LIP__CHECKPOINT": str(tmp_path / "wav2lip_gan.pth"),
        "TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data"),
        "TALKTWIN_HTTP_PORT": "7979",
    }
    for name in ("TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run_bots.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: Cannot use the model file {tmp_path / 'wav2lip_gan.pth'}: the file does not"
    )
