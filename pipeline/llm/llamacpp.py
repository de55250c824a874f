"""The embedded chat model: a GGUF file served by llama.cpp in a child process on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import ChatModelCrashed, ModelMissing
from pipeline.llm.base import ChatMessage, ChatStream
from pipeline.llm.openai_compat import OpenAICompatibleChat
from pipeline.llm.server_process import ServerProcess, ServerStartFailed

log = logging.getLogger(__name__)


class LlamaCppChat:
    """Runs a GGUF chat model (with the chat template stored in the file) outside this process.

    The model lives in `pipeline.llm.llama_server`, spoken to over its OpenAI-compatible API, so a
    crash in llama.cpp's native code costs the answer in progress, never the bots: the failed answer
    raises ChatModelCrashed (the pipeline retries it once) and the next call starts a new server,
    which takes about a second. Threads default to one per core: decoding is bound by memory
    bandwidth, and more threads than cores only add contention.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        context_tokens: int = 2048,
        threads: int = 0,
        timeout_s: float = 60,
        log_path: Path | None = None,
    ) -> None:
        if not model_path.is_file():
            raise ModelMissing(f"GGUF model not found at {model_path}", name=str(model_path))
        if not _cpu_has_avx2():
            raise RuntimeError(
                "the embedded chat model needs a CPU with AVX2 (x86-64 since 2013); on this machine use "
                "an OpenAI-compatible server instead: TALKTWIN_LLM__BACKEND=openai TALKTWIN_LLM__BASE_URL=..."
            )
        self.model_path = model_path
        self.server = ServerProcess(
            "pipeline.llm.llama_server",
            [
                "--model",
                str(model_path),
                "--context-tokens",
                str(context_tokens),
                "--threads",
                str(threads or (os.cpu_count() or 1)),
            ],
            log_path=log_path,
        )
        self.timeout_s = timeout_s
        self._client: OpenAICompatibleChat | None = None
        self._lock = threading.Lock()  # the reply and the memory summariser may ask at once
        self._connect()  # load the model now, not on the first user's message
        log.info(
            "llama.cpp model %s (ctx %d) in process %s", model_path.name, context_tokens, self.server.pid
        )

    def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float) -> ChatStream:
        client = self._connect()
        try:
            return (yield from client.stream(messages, max_tokens=max_tokens, temperature=temperature))
        except ChatModelCrashed:
            # a server that is still running but failed the request is hung: replace it too
            self.server.kill()
            raise

    def close(self) -> None:
        self.server.close()
        if self._client is not None:
            self._client.client.close()

    def _connect(self) -> OpenAICompatibleChat:
        with self._lock:
            try:
                base_url = self.server.ensure_running()
            except ServerStartFailed as e:
                raise ChatModelCrashed(f"{self.model_path.name}: {e}") from e
            if self._client is None or not self._client.url.startswith(base_url + "/"):
                if self._client is not None:
                    self._client.client.close()
                self._client = OpenAICompatibleChat(
                    base_url + "/v1",
                    self.model_path.name,
                    timeout_s=self.timeout_s,
                    extra_body={"return_progress": True},  # a long prompt can be given up midway
                )
            return self._client


def _cpu_has_avx2() -> bool:
    """False only when the CPU says it lacks AVX2 (where xllamacpp would die of SIGILL at load)."""
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return True  # not Linux on x86: let the server try
    return "avx2" in flags.split()
