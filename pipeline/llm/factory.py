"""Builds the configured chat model by backend name."""

from __future__ import annotations

import os

from pipeline.config import Settings
from pipeline.llm.base import ChatModel


def build_chat_model(settings: Settings) -> ChatModel:
    cfg = settings.llm
    if cfg.backend == "llamacpp":
        from pipeline.llm.llamacpp import LlamaCppChat

        return LlamaCppChat(
            settings.resolve(cfg.model),
            context_tokens=cfg.context_tokens,
            threads=cfg.threads,
            timeout_s=cfg.timeout_s,
            log_path=settings.resolve(settings.paths.data_dir) / "logs" / "chat-model.log",
        )
    if cfg.backend == "openai":
        from pipeline.llm.openai_compat import OpenAICompatibleChat

        return OpenAICompatibleChat(
            cfg.base_url, cfg.model, api_key=os.environ.get(cfg.api_key_env, ""), timeout_s=cfg.timeout_s
        )
    from pipeline.llm.transformers_local import TransformersChat

    return TransformersChat(settings.resolve(cfg.model))
