"""Shared fixtures. Two tiers: hermetic (default) and `real_models` (Whisper, Qwen, Piper for real)."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime
import pytest

from pipeline.config import PROJECT_ROOT, Settings, load_settings

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")
# Piper draws fresh noise for every reading, so one sentence sounds a little different each time, and
# about one reading in 50-100 is misheard by Whisper ("capital city of friends"). With onnxruntime's
# random seed fixed, a Piper voice reads the same sequence of sentences the same way on every run.
onnxruntime.set_seed(20261202)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Default settings with a private data directory."""
    return load_settings(environ={"TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data")})


@pytest.fixture
def small_settings(tmp_path: Path) -> Settings:
    """Settings for bot tests: a private data directory and 256 px video, which renders fast."""
    return load_settings(
        environ={"TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data"), "TALKTWIN_RENDER__SIZE": "256"}
    )


@pytest.fixture(scope="session")
def session_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("data")
    return load_settings(environ={"TALKTWIN_PATHS__DATA_DIR": str(data)})


@pytest.fixture(scope="session")
def avatar_bytes() -> bytes:
    return (PROJECT_ROOT / "assets" / "avatar.jpg").read_bytes()


@pytest.fixture(scope="session")
def models_installed(session_settings: Settings) -> Settings:
    """Skip-free guard: the real tier needs `run_bots.py models install` to have run (the Makefile does)."""
    from pipeline.model_store import ModelStore

    store = ModelStore(session_settings.resolve(session_settings.paths.checkpoints_dir))
    missing = [name for name, ok, _, _ in store.describe() if not ok]
    if missing:
        pytest.fail(f"default models missing: {missing}; run `python run_bots.py models install`")
    return session_settings


@pytest.fixture(scope="session")
def embedded_chat(models_installed: Settings):
    """The default embedded chat model (its own server process), started once for the real tier."""
    from pipeline.llm.factory import build_chat_model

    chat = build_chat_model(models_installed)
    yield chat
    chat.close()


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory):
    """Real TTS and renderer at 256 px: slow to build and stateless, so shared by a test module."""
    from pipeline.render.factory import build_renderer
    from pipeline.tts.factory import build_synthesizer

    s = load_settings(
        environ={
            "TALKTWIN_RENDER__SIZE": "256",
            "TALKTWIN_PATHS__DATA_DIR": str(tmp_path_factory.mktemp("d")),
        }
    )
    return build_synthesizer(s), build_renderer(s)


@pytest.fixture(scope="session")
def redis_server():
    """A private redis-server (Debian's, installed by `make test`) on a free 127.0.0.1 port."""
    from tests.redis_server import RedisServer

    with RedisServer() as server:
        yield server
