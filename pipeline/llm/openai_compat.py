"""Any OpenAI-compatible chat server: Ollama, vLLM, llama.cpp's server, DashScope (Qwen), Gemini."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence

import httpx

from pipeline.llm.base import ChatMessage

log = logging.getLogger(__name__)


class OpenAICompatibleChat:
    """Streams `POST {base_url}/chat/completions` with `stream: true` (server-sent events).

    Plain httpx rather than the openai SDK: the protocol is small, and servers that only mostly follow
    it (local ones especially) are easier to tolerate when we read the events ourselves.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str = "", timeout_s: float = 60) -> None:
        if not base_url:
            raise ValueError("llm.base_url must be set for the openai backend")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=10))

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> Iterator[str]:
        body = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
        }
        with self.client.stream("POST", self.url, json=body) as response:
            if response.status_code >= 400:
                response.read()
                raise RuntimeError(f"LLM server answered {response.status_code}: {response.text[:300]}")
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    choices = json.loads(data).get("choices") or []
                except json.JSONDecodeError:
                    log.warning("skipping a malformed event from the LLM server: %.100s", data)
                    continue
                piece = choices[0].get("delta", {}).get("content") if choices else None
                if piece:
                    yield piece
