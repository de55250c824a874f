"""What the pipeline knows about a user when it answers: earlier turns and retrieved knowledge.

The orchestrator asks a ConversationContext for it before each reply and reports the finished turn
afterwards. `memory/` provides the implementations (an in-process history; the persistent MemoryStore
with summaries and the knowledge base) and the application passes one in: the pipeline builds no
store of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pipeline.llm.base import ChatMessage


@dataclass(frozen=True)
class ReplyContext:
    history: tuple[ChatMessage, ...] = ()
    # Retrieved passages as (source name, text); quoted to the model as data, never as instructions.
    knowledge: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = field(default=())  # facts about the user worth keeping in view


class ConversationContext(Protocol):
    """Keys: `user` names a person on a platform ("telegram:42"): their profile and knowledge documents
    follow them everywhere. `conversation` names one memory thread: the user's private chat
    ("telegram:42"), or the user within a group ("telegram:-100123:42").
    """

    def context_for(self, conversation: str, user: str, text: str) -> ReplyContext:
        """The context for answering `text` from `user` in `conversation`."""
        ...

    def record_turn(self, conversation: str, user: str, user_text: str, answer: str) -> None: ...


@runtime_checkable
class QuietTimeSummaries(Protocol):
    """A context that folds older turns into a summary written by the chat model. A live conversation
    holds these back and writes them itself in the user's quiet moments: a question must never wait
    for a summary, which takes the chat model for seconds and changes the start of the prompt."""

    def hold_summaries(self, conversation: str) -> None:
        """Write no summary of `conversation` in the background until it is released."""
        ...

    def release_summaries(self, conversation: str) -> None:
        """Back to background summaries (one starts now if the thread is long)."""
        ...

    def needs_summary(self, conversation: str) -> bool: ...

    def summarize_now(self, conversation: str, stop: Callable[[], bool] | None = None) -> bool:
        """Fold older turns into the summary now; gives up, writing nothing, as soon as `stop()`."""
        ...


class KnowledgeSearch(Protocol):
    """The part of a knowledge base a reply needs: the user's passages relevant to a question."""

    def search(self, user: str, query: str, k: int | None = None) -> list: ...


class NoContext:
    """No memory at all: every question is answered on its own. For a pipeline built without a
    context (benchmarks, one-off scripts); the application always passes one."""

    def context_for(self, conversation: str, user: str, text: str) -> ReplyContext:
        return ReplyContext()

    def record_turn(self, conversation: str, user: str, user_text: str, answer: str) -> None:
        """Nothing is kept."""
