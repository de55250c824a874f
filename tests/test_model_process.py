"""Embedded mode with the models in their own process: a native crash (os.abort in a renderer)
costs the reply in work one retry, never the service; a reply that crashes twice gets a clear sorry.

Real parts: the spawned models' process with Whisper, Piper and the warp renderer (inside
tests/crash_renderer.py's backend), the memory store and knowledge base in this process, the chat
model as a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bots.core.messages import Capabilities, IncomingMessage, NoWorkingIndicator
from bots.core.model_process import ModelProcessExecutor
from bots.core.reply_job import OutputSpec, ReplyOutcome
from bots.runtime import Components
from pipeline.config import load_settings
from pipeline.errors import WorkerCrashed
from tests.crash_renderer import CRASH_FILE_ENV
from tests.helpers import probe_mp4
from tests.test_llm import FakeOpenAIServer


class RecordingSink(NoWorkingIndicator):
    """A reply sink that keeps what it was sent."""

    def __init__(self) -> None:
        self.capabilities = Capabilities(max_upload_mb=50, text_limit=4096)
        self.texts: list[str] = []
        self.media: list[tuple[ReplyOutcome, bytes]] = []

    async def send_text(self, text: str) -> None:
        self.texts.append(text)

    async def send_media(self, outcome: ReplyOutcome, media: Path, spec: OutputSpec, lang: str) -> None:
        self.media.append((outcome, media.read_bytes()))


@pytest.fixture
def crash_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    plan = tmp_path / "crash-plan"
    monkeypatch.setenv(CRASH_FILE_ENV, str(plan))  # the spawned child inherits it
    return plan


def test_a_native_crash_in_the_models_process_costs_one_retry_not_the_service(
    models_installed, crash_plan: Path, tmp_path: Path
):
    with FakeOpenAIServer(["Still", " here."]) as llm:
        settings = load_settings(
            environ={
                "TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data"),
                "TALKTWIN_RENDER__SIZE": "256",
                "TALKTWIN_RENDER__PLUGINS": "tests.crash_renderer",
                "TALKTWIN_RENDER__BACKEND": "crash_test",
                "TALKTWIN_LLM__BACKEND": "openai",
                "TALKTWIN_LLM__BASE_URL": llm.base_url,
                "TALKTWIN_LLM__MODEL": "fake",
                "TALKTWIN_TTS__BACKEND": "piper",
                "TALKTWIN_MEMORY__SUMMARIZE": "false",
            }
        )
        assert settings.reply.models_process  # the default
        components = Components.load(settings)
        executor = components.executor
        assert isinstance(executor, ModelProcessExecutor) and components.pipeline is None
        core = components.core

        def message(n: int, text: str, user: str = "telegram:7", locale: str = "en") -> IncomingMessage:
            return IncomingMessage("telegram", "7", str(n), user, user, text=text, locale=locale)

        async def scenario() -> None:
            sink = RecordingSink()
            await core.handle(message(1, "Hello?"), sink)
            assert [o.answer for o, _ in sink.media] == ["Still here."] and executor.starts == 1

            crash_plan.write_text("once")  # the next reply aborts its process once
            sink = RecordingSink()
            await core.handle(message(2, "Are you alive?"), sink)
            assert [o.answer for o, _ in sink.media] == ["Still here."], sink.texts
            assert executor.starts == 2  # a fresh models' process wrote it again

            crash_plan.write_text("always")
            sink = RecordingSink()
            await core.handle(message(3, "Crash, please."), sink)
            assert sink.media == [] and sink.texts == [WorkerCrashed().user_message("en")]
            zh = RecordingSink()
            await core.handle(message(4, "再崩溃一次。", user="telegram:8", locale="zh-hans"), zh)
            assert zh.texts == [WorkerCrashed().user_message("zh")]

            crash_plan.write_text("")
            sink = RecordingSink()
            await core.handle(message(5, "And now?"), sink)
            ((outcome, video),) = sink.media
            assert outcome.answer == "Still here."
            (tmp_path / "answer.mp4").write_bytes(video)
            assert probe_mp4(tmp_path / "answer.mp4").audio_codec == "aac"
            assert await asyncio.to_thread(core.jobs.unfinished, "telegram") == []

        try:
            asyncio.run(scenario())
        finally:
            components.close()
