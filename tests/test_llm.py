"""Chat models: the OpenAI-compatible client against a local fake server, llama.cpp for real."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.config import load_settings
from pipeline.errors import ChatModelCrashed
from pipeline.llm.base import ChatMessage
from pipeline.llm.factory import build_chat_model
from pipeline.llm.openai_compat import OpenAICompatibleChat


class FakeOpenAIServer:
    """`POST /v1/chat/completions` streaming server-sent events, on 127.0.0.1."""

    def __init__(
        self,
        pieces: list[str],
        status: int = 200,
        finish: str | None = None,
        die_after: int | None = None,
        progress: int = 0,
    ) -> None:
        """`finish`: the finish_reason sent with the last piece; `die_after`: drop the connection
        after that many pieces, as a server whose process crashed does; `progress`: that many
        prompt-progress events first, as llama.cpp's server sends them while it reads the prompt."""
        self.pieces, self.status, self.finish, self.die_after = pieces, status, finish, die_after
        self.progress = progress
        self.requests: list[tuple[dict, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((dict(self.headers), body))
                if self.path != "/v1/chat/completions" or fake.status != 200:
                    self.send_response(fake.status if fake.status != 200 else 404)
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "model not loaded"}}')
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                events = [{"choices": [{"delta": {"role": "assistant"}}]}]
                events += [{"choices": [{"delta": {"content": p}}]} for p in fake.pieces]
                if fake.finish:
                    events[-1]["choices"][0]["finish_reason"] = fake.finish
                for n in range(fake.progress):
                    read = {"total": 100, "cache": 0, "processed": 50 * n, "time_ms": 9 * n}
                    self._chunk(f"data: {json.dumps({'prompt_progress': read})}\n\n".encode())
                for n, event in enumerate(events):
                    if n - 1 == fake.die_after:
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)  # mid-stream, no final chunk
                        return
                    self._chunk(f"data: {json.dumps(event)}\n\n".encode())
                self._chunk(b"data: {not json\n\n: keep-alive comment\n\ndata: [DONE]\n\n")
                self._chunk(b"")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAIServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(["Hello", " from", " the", " server."]) as server:
        yield server


def test_openai_backend_streams_and_sends_the_key_from_env(fake_server: FakeOpenAIServer):
    settings = load_settings(
        environ={
            "TALKTWIN_LLM__BACKEND": "openai",
            "TALKTWIN_LLM__BASE_URL": fake_server.base_url,
            "TALKTWIN_LLM__MODEL": "qwen2.5:0.5b",
            "TALKTWIN_LLM__API_KEY_ENV": "MY_LLM_KEY",
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MY_LLM_KEY", "sk-test-123")
        model = build_chat_model(settings)
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]
    pieces = list(model.stream(messages, max_tokens=20, temperature=0.2))
    assert pieces == ["Hello", " from", " the", " server."]
    headers, body = fake_server.requests[0]
    assert headers["Authorization"] == "Bearer sk-test-123"
    assert body["model"] == "qwen2.5:0.5b" and body["stream"] is True and body["max_tokens"] == 20
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_openai_backend_reports_server_errors():
    with FakeOpenAIServer([], status=503) as server:
        model = OpenAICompatibleChat(server.base_url, "m")
        with pytest.raises(RuntimeError, match=r"503.*model not loaded"):
            list(model.stream([ChatMessage("user", "Hi")], max_tokens=5, temperature=0))


def test_openai_backend_returns_why_the_model_stopped():
    model_stream = OpenAICompatibleChat
    with FakeOpenAIServer(["Once upon", " a time the"], finish="length") as server:
        stream = model_stream(server.base_url, "m").stream(
            [ChatMessage("user", "A story")], max_tokens=4, temperature=0
        )
        assert _drain(stream) == (["Once upon", " a time the"], "length")
    with FakeOpenAIServer(["Done."], finish="stop") as server:
        stream = model_stream(server.base_url, "m").stream(
            [ChatMessage("user", "Hi")], max_tokens=9, temperature=0
        )
        assert _drain(stream) == (["Done."], "stop")


def test_a_server_that_drops_the_answer_midway_is_a_crash_not_an_answer():
    with FakeOpenAIServer(["One", " two", " three"], die_after=2) as server:
        stream = OpenAICompatibleChat(server.base_url, "m").stream(
            [ChatMessage("user", "Count")], max_tokens=9, temperature=0
        )
        pieces = []
        with pytest.raises(ChatModelCrashed):
            pieces.extend(stream)
        assert pieces == ["One", " two"]


def test_prompt_progress_reaches_the_caller_as_empty_pieces():
    """llama.cpp's server reports each batch of a long prompt it has read; the caller gets a turn per
    report (to give the answer up) and the text is unchanged."""
    with FakeOpenAIServer(["Hi", " there."], finish="stop", progress=3) as server:
        model = OpenAICompatibleChat(server.base_url, "m", extra_body={"return_progress": True})
        pieces, finish = _drain(model.stream([ChatMessage("user", "Hi")], max_tokens=9, temperature=0))
        assert pieces == ["", "", "", "Hi", " there."] and finish == "stop"
        assert server.requests[0][1]["return_progress"] is True
    with FakeOpenAIServer(["Hi"]) as server:  # other servers get nothing they did not ask for
        list(
            OpenAICompatibleChat(server.base_url, "m").stream(
                [ChatMessage("user", "Hi")], max_tokens=9, temperature=0
            )
        )
        assert "return_progress" not in server.requests[0][1]


def _drain(stream) -> tuple[list[str], str | None]:
    pieces = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as stop:
            return pieces, stop.value


def test_openai_backend_needs_a_base_url():
    with pytest.raises(ValueError, match="base_url"):
        OpenAICompatibleChat("", "m")


@pytest.mark.real_models
@pytest.mark.parametrize(
    ("question", "persona", "expected"),
    [
        ("What is the capital of France?", "persona_en", "Paris"),
        ("中国的首都是哪个城市？", "persona_zh", "北京"),
    ],
)
def test_embedded_llamacpp_model_answers(
    models_installed, embedded_chat, question: str, persona: str, expected: str
):
    model = embedded_chat
    system = getattr(models_installed.llm, persona)
    pieces = list(
        model.stream(
            [ChatMessage("system", system), ChatMessage("user", question)], max_tokens=60, temperature=0.0
        )
    )
    assert expected in "".join(pieces)


@pytest.mark.real_models
def test_the_embedded_server_reuses_a_history_whose_oldest_turns_dropped_out(embedded_chat):
    """Memory drops the oldest turns a fold at a time: the server shifts the cached rest of the
    history into place (`n_cache_reuse`) instead of reading it all again."""
    import httpx

    base = embedded_chat.server.ensure_running()
    turns = []
    for i in range(8):
        turns += [
            {"role": "user", "content": f"Tell me one thing about the number {i}, please."},
            {
                "role": "assistant",
                "content": f"The number {i} comes right after {i - 1} and right before {i + 1}.",
            },
        ]

    def read(history: list[dict]) -> dict:
        body = {"messages": [{"role": "system", "content": "You are brief."}, *history], "max_tokens": 1}
        r = httpx.post(f"{base}/v1/chat/completions", json=body | {"temperature": 0}, timeout=300)
        r.raise_for_status()
        return r.json()

    read([*turns[:12], {"role": "user", "content": "Hi"}])
    shifted = read([*turns[6:16], {"role": "user", "content": "Hi"}])  # 3 turns out, 2 new ones in
    total, read_anew = shifted["usage"]["prompt_tokens"], shifted["timings"]["prompt_n"]
    assert read_anew < total / 2, (read_anew, total)


@pytest.mark.real_models
def test_the_embedded_server_stops_reading_a_prompt_given_up(embedded_chat):
    """A summary or a priming given up (the user spoke) stops the server after the batch it is
    reading, not after the whole prompt: the next request finds only that much of it cached."""
    import httpx

    notes = " ".join(f"Note {i}: the user said they like tea number {i}, with milk." for i in range(40))
    messages = [ChatMessage("system", "Summarise the notes. " + notes), ChatMessage("user", "Go")]
    stream = embedded_chat.stream(messages, max_tokens=5, temperature=0)
    assert next(stream) == "" and next(stream) == ""  # two progress reports: a batch was read
    stream.close()

    base = embedded_chat.server.ensure_running()
    body = {
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "max_tokens": 1,
        "stream": True,
        "return_progress": True,
    }
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=300) as response:
        first = next(line for line in response.iter_lines() if line.startswith("data:"))
    progress = json.loads(first[5:])["prompt_progress"]
    # had the first request gone on, this one would have waited for it and found all but one cached
    assert progress["cache"] < progress["total"] / 2, progress


class KillsItsServer:
    """The embedded chat model, with its server process killed by SIGSEGV (what a crash in llama.cpp
    does) after the first piece of each of the next `kills` answers."""

    def __init__(self, model, kills: int = 0) -> None:
        self.model, self.kills = model, kills

    def stream(self, messages, *, max_tokens, temperature):
        pieces = self.model.stream(messages, max_tokens=max_tokens, temperature=temperature)
        yield next(pieces)
        if self.kills:
            self.kills -= 1
            os.kill(self.model.server.pid, signal.SIGSEGV)
        return (yield from pieces)


@pytest.mark.real_models
def test_a_chat_model_process_that_dies_mid_answer_leaves_the_service_answering(
    models_installed, tmp_path, stages
):
    """The real embedded model behind the real HTTP API: its process is killed mid-answer."""
    from fastapi.testclient import TestClient

    from bots.http.app import HttpOptions, create_app
    from tests.test_http import make_components

    model = build_chat_model(models_installed)
    chat = KillsItsServer(model)
    components = make_components(tmp_path, stages, TALKTWIN_LLM__MAX_TOKENS="40")
    components.pipeline.chat_model = chat
    try:
        with TestClient(create_app(components, HttpOptions())) as client:
            chat.kills = 1  # dies once: the answer is written again by a new server process
            r = client.post("/v1/reply", data={"user": "ann", "text": "Say hello.", "format": "text"})
            assert r.status_code == 200 and r.json()["answer"], r.text
            assert model.server.starts == 2
            chat.kills = 2  # dies on the retry too: a clear sorry in the user's language
            r = client.post(
                "/v1/reply",
                data={"user": "ann", "text": "你好", "format": "text"},
                headers={"Accept-Language": "zh-CN"},
            )
            assert r.status_code == 503 and r.json()["error"] == "chat_model_crashed"
            assert r.json()["message"].startswith("抱歉")
            r = client.post("/v1/reply", data={"user": "bob", "text": "What is 2 + 2?", "format": "text"})
            assert r.status_code == 200 and r.json()["answer"], r.text
            assert model.server.starts == 4  # the first, two after crashes, one for the next message
    finally:
        components.close()
        model.close()
