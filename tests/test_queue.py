"""Queue mode for real: Redis, `python -m bots.queue.worker` subprocesses, the bots' side in this
process loading no model. The chat model is a local OpenAI-compatible server (tests/test_llm.py's
fake), so the workers load Whisper, Piper and the renderer but no GGUF."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from bots.core.conversations import Conversations
from bots.core.reply_job import OutputSpec
from bots.queue.worker import DELIVERIES_KEY
from bots.runtime import Components
from pipeline.config import PROJECT_ROOT, Settings, load_settings
from pipeline.errors import WorkerCrashed
from pipeline.render.registry import avatar_cache_dir
from pipeline.render.warp import landmark_cache_files
from tests.helpers import probe_mp4
from tests.redis_server import RedisServer
from tests.test_llm import FakeOpenAIServer


class HoldingOpenAIServer(FakeOpenAIServer):
    """Holds the requests numbered in `held` (0-based, in arrival order: the worker has one pool child,
    so they come one at a time) open after the response headers until `release` is set, so a test
    can kill the worker while it is certainly mid-reply; a held request is never answered. The
    others are answered at once."""

    def __init__(self, pieces: list[str], held: set[int]) -> None:
        super().__init__(pieces)
        self.release = threading.Event()
        handler = self.server.RequestHandlerClass
        original = handler._chunk  # type: ignore[attr-defined]
        fake = self

        def held_chunk(this, data: bytes) -> None:
            if not hasattr(this, "held"):
                this.held = len(fake.requests) - 1 in held
                if this.held:
                    fake.release.wait(120)
            if not this.held:
                original(this, data)

        handler._chunk = held_chunk  # type: ignore[attr-defined]


def worker_env(env: dict[str, str], tmp: Path) -> dict[str, str]:
    """A worker as on a machine of its own: its own data folder (caches), the bots' database and
    blob folder (what deployment.md says must be shared)."""
    from memory.db import sqlite_url

    data = Path(env["TALKTWIN_PATHS__DATA_DIR"])
    return env | {
        "TALKTWIN_PATHS__DATA_DIR": str(tmp / "worker-data"),
        "TALKTWIN_QUEUE__BLOB_DIR": str(data / "blobs"),
        "TALKTWIN_MEMORY__DATABASE_URL": sqlite_url(data),
    }


def queue_settings(redis_url: str, llm_url: str, tmp: Path) -> tuple[Settings, dict[str, str]]:
    env = {
        "TALKTWIN_QUEUE__BROKER_URL": redis_url,
        "TALKTWIN_PATHS__DATA_DIR": str(tmp / "data"),
        "TALKTWIN_RENDER__SIZE": "256",
        "TALKTWIN_LLM__BACKEND": "openai",
        "TALKTWIN_LLM__BASE_URL": llm_url,
        "TALKTWIN_LLM__MODEL": "fake",
        "TALKTWIN_TTS__BACKEND": "piper",
        "TALKTWIN_MEMORY__SUMMARIZE": "false",
    }
    return load_settings(environ=env), env


class WorkerProcess:
    """One `python -m bots.queue.worker` (Celery's main process plus its pool child)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bots.queue.worker"],
                cwd=PROJECT_ROOT,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if "ready." in self.log.read_text(errors="replace"):
                return
            assert self.proc.poll() is None, self.log.read_text(errors="replace")
            time.sleep(0.2)
        raise AssertionError("worker not ready:\n" + self.log.read_text(errors="replace"))

    def pool_children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def ask(core: Conversations, user: str, text: str) -> asyncio.Future:
    async def go():
        job = await core.new_job(user, user, OutputSpec(kind="video"), text=text)
        outcome = await core.run(job)
        return outcome, core.blobs.path(outcome.media) if outcome.media else None

    return go()


def test_queue_mode_replies_on_a_worker_and_a_killed_worker_costs_one_retry(
    redis_server: RedisServer, models_installed, tmp_path: Path
):
    # requests: 0 alice; 1 bob (killed), 2 bob again; 3 and 4 carol (killed both times)
    with HoldingOpenAIServer(["Hello", " from", " a", " worker."], held={1, 3, 4}) as llm:
        settings, env = queue_settings(redis_server.url, llm.base_url, tmp_path)
        worker = WorkerProcess(worker_env(env, tmp_path), tmp_path / "worker.log")
        components = Components.load(settings)
        try:
            assert components.pipeline is None  # the bots' side loads no model
            worker.wait_ready()
            core = components.core

            async def scenario() -> None:
                # 1. a reply made on the worker, its video back through the blob store
                outcome, media = await ask(core, "http:alice", "Hi there")
                assert outcome.answer == "Hello from a worker."
                info = probe_mp4(media)
                assert info.width == info.height == 256 and info.audio_codec == "aac"

                # 2. the pool child making a reply is killed: the job is delivered again
                asked = len(llm.requests)
                running = asyncio.ensure_future(ask(core, "http:bob", "Are you there?"))
                while len(llm.requests) == asked:
                    await asyncio.sleep(0.05)
                (child,) = worker.pool_children()
                os.kill(child, signal.SIGKILL)
                outcome, media = await asyncio.wait_for(running, 180)
                assert outcome.answer == "Hello from a worker." and media is not None and media.is_file()
                assert len(llm.requests) == asked + 2  # one killed attempt, one answer

                # 3. a job that kills its worker every time is given up after two deliveries
                asked = len(llm.requests)
                running = asyncio.ensure_future(ask(core, "http:carol", "Crash me"))
                for attempt in (1, 2):
                    while len(llm.requests) < asked + attempt:
                        await asyncio.sleep(0.05)
                        assert not running.done(), running
                    for pid in worker.pool_children():
                        os.kill(pid, signal.SIGKILL)
                with pytest.raises(WorkerCrashed):
                    await asyncio.wait_for(running, 180)
                deliveries = redis.Redis.from_url(redis_server.url).keys(DELIVERIES_KEY.format("*"))
                assert deliveries

                # 4. /forget reaches the worker: what it derived from the user's photo, on its own disk
                photo = (PROJECT_ROOT / "tests" / "data" / "hard_photos" / "tilted.jpg").read_bytes()
                await asyncio.to_thread(components.executor.check_photo, photo)  # prepared there
                worker_settings = load_settings(environ=worker_env(env, tmp_path))
                cached = landmark_cache_files(avatar_cache_dir(worker_settings), photo)
                assert cached and not landmark_cache_files(avatar_cache_dir(settings), photo)
                components.memory.set_avatar("http:dave", photo)
                await core.forget("http:dave")
                for _ in range(100):
                    if not any(path.exists() for path in cached):
                        break
                    await asyncio.sleep(0.1)
                assert not any(path.exists() for path in cached)

            asyncio.run(scenario())
        finally:
            llm.release.set()
            components.close()
            worker.stop()
