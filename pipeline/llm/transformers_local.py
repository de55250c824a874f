"""A local Hugging Face checkpoint (Qwen, Linly, ...) run with transformers: the seed's offline mode."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from pipeline.errors import ModelMissing
from pipeline.llm.base import ChatMessage


class TransformersChat:
    """Generates with `model.generate` on a background thread and streams through TextIteratorStreamer.

    Loads from a local folder only (no hub download at run time); uses the GPU in bfloat16 when one is
    present, float32 on the CPU. Needs the `transformers` extra.
    """

    def __init__(self, model_dir: Path) -> None:
        if not (model_dir / "config.json").is_file():
            raise ModelMissing(f"no Hugging Face checkpoint at {model_dir}", name=str(model_dir))
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, local_files_only=True)
        self.model.to(self.device).eval()
        self._lock = threading.Lock()

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        prompt = self.tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(
            **inputs,
            max_new_tokens=max_tokens,
            do_sample=temperature > 0,
            temperature=max(temperature, 1e-3),
            top_p=0.9,
            repetition_penalty=1.1,
            streamer=streamer,
        )
        with self._lock:
            worker = threading.Thread(target=self.model.generate, kwargs=kwargs, daemon=True)
            worker.start()
            yield from streamer
            worker.join()
