"""The embedded chat model: a GGUF file run in-process by llama.cpp (llama-cpp-python)."""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from pipeline.errors import ModelMissing
from pipeline.llm.base import ChatMessage

log = logging.getLogger(__name__)


class LlamaCppChat:
    """Runs a GGUF chat model with the chat template stored in the file (Qwen's ChatML here).

    One llama.cpp context serves one generation at a time, so calls are serialised with a lock;
    threads default to one per core (llama.cpp decoding is bound by memory bandwidth, and more
    threads than cores only adds contention).
    """

    def __init__(
        self, model_path: Path, *, context_tokens: int = 2048, threads: int = 0, gpu: bool = True
    ) -> None:
        if not model_path.is_file():
            raise ModelMissing(f"GGUF model not found at {model_path}", name=str(model_path))
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(model_path),
            n_ctx=context_tokens,
            n_threads=threads or (os.cpu_count() or 1),
            n_gpu_layers=-1 if gpu else 0,  # all layers on the GPU when llama.cpp was built with one
            verbose=False,
        )
        self._lock = threading.Lock()
        # free the model before interpreter teardown, when llama_cpp's own globals are already gone
        atexit.register(self.llm.close)
        log.info("llama.cpp model %s (ctx %d)", model_path.name, context_tokens)

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> Iterator[str]:
        with self._lock:
            chunks = self.llm.create_chat_completion(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=0.9,
                repeat_penalty=1.1,
                stream=True,
            )
            for chunk in chunks:
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    yield piece
