"""The language-model stage: a chat model that streams its answer as text pieces."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

# Why the model stopped writing: "stop" = it finished its answer, "length" = it hit max_tokens (the
# last sentence is unfinished), None = the backend does not say.
FinishReason = Literal["stop", "length"] | None

ChatStream = Generator[str, None, FinishReason]


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


class ChatModel(Protocol):
    """Streams the assistant's next message, piece by piece, as the model writes it.

    The generator's return value (`finish = yield from model.stream(...)`) says why it stopped, so
    the pipeline never speaks a sentence the model was cut off in. A backend whose server or process
    dies mid-answer raises `ChatModelCrashed`; the pipeline retries the answer once.
    """

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> ChatStream: ...
