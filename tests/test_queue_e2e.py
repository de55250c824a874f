"""Queue mode end to end, every part a real process: `python run_bots.py` (the bots, no model) talks
to the fake Telegram Bot API in this process, two `python run_bots.py worker` make the replies over a
private Redis, and one worker is killed -9 (its whole process group: a machine gone) mid-reply.

Three users send six messages, voice notes (spoken by Piper, heard by the workers' Whisper) and
texts mixed. The killed worker's job comes back after `queue.redelivery_after_s` and the other
worker answers it: every message is answered exactly once and the bots' process never notices.

The chat model is a local OpenAI-compatible fake, one per worker (so a request tells which worker's
pool child is mid-reply); the one of the worker to be killed holds its first request open.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import redis

from bots.queue.celery_app import QUEUE
from bots.queue.worker import DELIVERIES_KEY
from bots.texts import t
from pipeline.config import PROJECT_ROOT, load_settings
from tests.fakes.telegram_server import TOKEN, FakeBotApi, message_update, user
from tests.helpers import voice_note
from tests.redis_server import RedisServer
from tests.test_llm import FakeOpenAIServer

pytestmark = pytest.mark.real_models  # the workers' Whisper hears the voice notes

ANSWER = ["Hello", " from", " a", " worker."]
# A job is held unacknowledged at most 5.3 s here (a voice note, both workers busy); twice that and
# more, so no job in work is handed out a second time. Kombu looks every 10 s: back in 12-22 s.
REDELIVERY_AFTER_S = 12
STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*"
RECEIVED = re.compile(STAMP + r"Task talktwin\.reply\[([^\]]+)\] received", re.M)
SUCCEEDED = re.compile(STAMP + r"Task talktwin\.reply\[([^\]]+)\] succeeded in", re.M)
LOADED = "models loaded, taking replies"  # a worker's pool child is ready (Celery's "ready." is earlier)


class HoldingChatServer(FakeOpenAIServer):
    """Holds its first request open after the response headers until `release` is set: the worker
    that sent it is then certainly mid-reply. The held request is never answered."""

    def __init__(self, pieces: list[str]) -> None:
        super().__init__(pieces)
        self.release = threading.Event()
        handler = self.server.RequestHandlerClass
        original = handler._chunk  # type: ignore[attr-defined]
        lock = threading.Lock()
        first = [True]

        def held_chunk(this, data: bytes) -> None:
            if not hasattr(this, "held"):
                with lock:
                    this.held, first[0] = first[0], False
                if this.held:
                    self.release.wait(120)
            if not this.held:
                original(this, data)

        handler._chunk = held_chunk  # type: ignore[attr-defined]


class Process:
    """A `python run_bots.py ...` in its own process group, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(PROJECT_ROOT / "run_bots.py"), *args],
                cwd=PROJECT_ROOT,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, marker: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while marker not in self.text():
            assert self.proc.poll() is None, f"{self.log.name} exited:\n{self.text()}"
            assert time.monotonic() < end, f"no {marker!r} in {self.log.name}:\n{self.text()}"
            time.sleep(0.2)

    def kill_group(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_times(pattern: re.Pattern[str], log: str) -> dict[str, float]:
    """Task id -> when the worker logged the line (its clock is this machine's)."""
    return {
        m.group(2): datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for m in pattern.finditer(log)
    }


def _answers(server: FakeBotApi, chat_id: int) -> list:
    return server.find("sendVideoNote", chat_id) + server.find("sendVideo", chat_id)


def test_two_workers_one_killed_every_message_answered_once(
    redis_server: RedisServer, models_installed, tmp_path
):
    started = time.monotonic()
    env = {
        "TALKTWIN_QUEUE__BROKER_URL": redis_server.url,
        "TALKTWIN_QUEUE__REDELIVERY_AFTER_S": str(REDELIVERY_AFTER_S),
        "TALKTWIN_QUEUE__WORKER_CONCURRENCY": "1",
        "TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data"),
        "TALKTWIN_RENDER__SIZE": "256",
        "TALKTWIN_LLM__BACKEND": "openai",
        "TALKTWIN_LLM__MODEL": "fake",
        "TALKTWIN_TTS__BACKEND": "piper",
        "TALKTWIN_MEMORY__SUMMARIZE": "false",
    }
    from pipeline.tts.factory import build_synthesizer

    piper = build_synthesizer(load_settings(environ=env))
    voices = {
        text: voice_note(piper, text, "en", tmp_path)
        for text in (
            "What is the capital city of France?",
            "Can you tell me a short story?",
            "Which books do you like to read?",
        )
    }
    api = FakeBotApi().start()
    llm_a, llm_b = HoldingChatServer(ANSWER), FakeOpenAIServer(ANSWER)
    bots = worker_a = worker_b = None
    with llm_a, llm_b:
        try:
            bots = Process(
                [],
                {
                    **env,
                    "TALKTWIN_LLM__BASE_URL": llm_b.base_url,  # unused: the bots' side loads no model
                    "TELEGRAM_BOT_TOKEN": TOKEN,
                    "TELEGRAM_API_BASE_URL": api.base_url,
                    "TELEGRAM_FILE_BASE_URL": api.file_base_url,
                    "TALKTWIN_HTTP_PORT": str(_free_port()),
                },
                tmp_path / "bots.log",
            )
            worker_a = Process(
                ["worker"], {**env, "TALKTWIN_LLM__BASE_URL": llm_a.base_url}, tmp_path / "a.log"
            )
            worker_b = Process(
                ["worker"], {**env, "TALKTWIN_LLM__BASE_URL": llm_b.base_url}, tmp_path / "b.log"
            )
            bots.wait_for_line("TalkTwin is running", 60)
            worker_a.wait_for_line(LOADED, 120)
            worker_b.wait_for_line(LOADED, 120)
            ready = time.monotonic()

            people = {201: user(201, name="Ada"), 202: user(202, name="Ben"), 203: user(203, name="Cy")}

            def voice(text: str) -> dict:
                data = voices[text]
                return {"voice": {"file_id": api.add_file(data), "file_unique_id": text[:8], "duration": 3}}

            messages = [  # each user's two in the order sent
                (201, voice("What is the capital city of France?")),
                (202, {"text": "Hello, how are you today?"}),
                (203, voice("Which books do you like to read?")),
                (201, {"text": "And what about Italy?"}),
                (202, voice("Can you tell me a short story?")),
                (203, {"text": "Thank you, goodbye."}),
            ]
            asked: dict[int, list[int]] = {chat: [] for chat in people}
            for chat, content in messages:
                update = message_update(people[chat], **content)
                asked[chat].append(update["message"]["message_id"])
                api.push(update)

            # worker A's pool child is mid-reply (its chat request is held open): the machine dies
            end = time.monotonic() + 120
            while not llm_a.requests:
                assert time.monotonic() < end, "worker A never took a job"
                time.sleep(0.05)
            (killed,) = list(_log_times(RECEIVED, worker_a.text()))[-1:]
            worker_a.kill_group()
            killed_at = time.monotonic()
            llm_a.release.set()

            # its job comes back after the redelivery time, and worker B answers it
            end = time.monotonic() + REDELIVERY_AFTER_S + 60
            while killed not in _log_times(RECEIVED, worker_b.text()):
                assert time.monotonic() < end, f"job {killed} never came back:\n{worker_b.text()}"
                time.sleep(0.1)
            redelivered_after = time.monotonic() - killed_at

            end = time.monotonic() + 120
            while sum(len(_answers(api, chat)) for chat in people) < len(messages):
                assert bots.proc.poll() is None, bots.text()
                assert time.monotonic() < end, f"answers so far: {[c.method for c in api.calls]}"
                time.sleep(0.2)
            answered = time.monotonic()

            # nothing is still queued, held or in work that could answer a second time
            broker = redis.Redis.from_url(redis_server.url)
            end = time.monotonic() + 30
            while broker.llen(QUEUE) or broker.hlen("unacked"):
                assert time.monotonic() < end, "jobs left in Redis"
                time.sleep(0.2)
            time.sleep(2)

            for chat, ids in asked.items():
                replies = _answers(api, chat)
                assert sorted(int(c.params["reply_parameters"]["message_id"]) for c in replies) == sorted(ids)
                assert set(api.texts(chat)) <= {t("queued", "en"), t("working", "en")}  # no "sorry"
            assert len(llm_a.requests) == 1  # the killed attempt
            assert len(llm_b.requests) == len(messages)  # every reply made once, the killed one included
            b_log = worker_b.text()
            received, succeeded = _log_times(RECEIVED, b_log), _log_times(SUCCEEDED, b_log)
            assert killed in succeeded and int(broker.get(DELIVERIES_KEY.format(killed))) == 2
            # how long worker B held each job unacknowledged: below the redelivery time, or a job in
            # work would have been handed out a second time
            held = {task: succeeded[task] - received[task] for task in succeeded}
            assert len(held) == len(messages) and max(held.values()) < REDELIVERY_AFTER_S, held
            came_back = received[killed] - _log_times(RECEIVED, worker_a.text())[killed]
            heard = " ".join(str(body["messages"][-1]["content"]) for _, body in llm_b.requests).lower()
            assert "capital" in heard and "books" in heard and "story" in heard  # Whisper heard them

            # the bots' process never restarted and never failed
            assert bots.proc.poll() is None and bots.text().count("TalkTwin is running") == 1
            for log in (bots.text(), b_log):
                assert "Traceback" not in log and "database is locked" not in log, log
            print(
                f"\nready after {ready - started:.1f} s; the killed job came back {came_back:.1f} s after "
                f"its first delivery, {redelivered_after:.1f} s after the kill; all answered "
                f"{answered - ready:.1f} s after the first message; worker B held its jobs "
                f"{sorted(round(s, 1) for s in held.values())} s"
            )
            bots.proc.send_signal(signal.SIGTERM)
            assert bots.proc.wait(60) == 0, bots.text()  # a clean stop
        finally:
            for proc in (bots, worker_a, worker_b):
                if proc is not None:
                    proc.kill_group()
            llm_a.release.set()
            api.stop()
