"""Chat models: the OpenAI-compatible client against a local fake server, llama.cpp for real."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.config import load_settings
from pipeline.llm.base import ChatMessage
from pipeline.llm.factory import build_chat_model
from pipeline.llm.openai_compat import OpenAICompatibleChat


class FakeOpenAIServer:
    """`POST /v1/chat/completions` streaming server-sent events, on 127.0.0.1."""

    def __init__(self, pieces: list[str], status: int = 200) -> None:
        self.pieces, self.status = pieces, status
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
                self.end_headers()
                events = [{"choices": [{"delta": {"role": "assistant"}}]}]
                events += [{"choices": [{"delta": {"content": p}}]} for p in fake.pieces]
                for event in events:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.write(b"data: {not json\n\n: keep-alive comment\n\ndata: [DONE]\n\n")

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
def test_embedded_llamacpp_model_answers(models_installed, question: str, persona: str, expected: str):
    model = _embedded_model(models_installed)
    system = getattr(models_installed.llm, persona)
    pieces = list(
        model.stream(
            [ChatMessage("system", system), ChatMessage("user", question)], max_tokens=60, temperature=0.0
        )
    )
    assert expected in "".join(pieces)


_MODEL = {}


def _embedded_model(settings):
    if "m" not in _MODEL:
        _MODEL["m"] = build_chat_model(settings)
    return _MODEL["m"]
