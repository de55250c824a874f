"""Any OpenAI-compatible chat server: Ollama, vLLM, llama.cpp's server, DashScope (Qwen), Gemini."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from pipeline.errors import ChatModelCrashed
from pipeline.llm.base import ChatMessage, ChatStream, FinishReason

log = logging.getLogger(__name__)


class OpenAICompatibleChat:
    """Streams `POST {base_url}/chat/completions` with `stream: true` (server-sent events).

    Plain httpx rather than the openai SDK: the protocol is small, and servers that only mostly follow
    it (local ones especially) are easier to tolerate when we read the events ourselves.

    `extra_body` joins every request (fields a particular server understands). llama.cpp's server,
    asked for `return_progress`, reports each batch of the prompt it has read; each report is yielded
    as an empty piece, so a caller can give the answer up while a long prompt is still being read
    (closing the stream closes the connection, and the server stops after its current batch).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "",
        timeout_s: float = 60,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if not base_url:
            raise ValueError("llm.base_url must be set for the openai backend")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.extra_body = dict(extra_body or {})
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=10))

    def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float) -> ChatStream:
        """The answer's pieces; returns the finish reason. A dropped connection, or a stream that
        ends before the server said it finished, raises ChatModelCrashed."""
        try:
            return (yield from self._events(messages, max_tokens, temperature))
        except httpx.TransportError as e:
            raise ChatModelCrashed(f"the chat model server at {self.url} failed: {e!r}") from e

    def _events(self, messages: Sequence[ChatMessage], max_tokens: int, temperature: float) -> ChatStream:
        body = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            **self.extra_body,
        }
        with self.client.stream("POST", self.url, json=body) as response:
            if response.status_code >= 400:
                response.read()
                raise RuntimeError(f"LLM server answered {response.status_code}: {response.text[:300]}")
            finish: FinishReason = None
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return finish
                try:
                    event = json.loads(data)
                except json.JSONDecodeError:
                    log.warning("skipping a malformed event from the LLM server: %.100s", data)
                    continue
                if "prompt_progress" in event:
                    yield ""  # a batch of the prompt read: the caller's turn to give up
                    continue
                choices = event.get("choices") or []
                if not choices:
                    continue
                piece = choices[0].get("delta", {}).get("content")
                if piece:
                    yield piece
                reason = choices[0].get("finish_reason")
                if reason:
                    finish = "length" if reason == "length" else "stop"
            if finish is None:
                raise ChatModelCrashed(f"the chat model server at {self.url} ended the answer unfinished")
            return finish
