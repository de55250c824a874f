"""A simple in-process conversation history (lost on restart)."""

from __future__ import annotations

import threading
from collections import defaultdict, deque

from pipeline.context import ReplyContext
from pipeline.llm.base import ChatMessage


class InProcessHistory:
    """Keeps the last `turns` exchanges per conversation key, in memory, isolated per key."""

    def __init__(self, turns: int = 6) -> None:
        self.turns = turns
        self._turns: dict[str, deque[tuple[str, str]]] = defaultdict(lambda: deque(maxlen=max(turns, 1)))
        self._lock = threading.Lock()

    def context_for(self, conversation: str, user: str, text: str) -> ReplyContext:
        if self.turns == 0:
            return ReplyContext()
        with self._lock:
            pairs = list(self._turns.get(conversation, ()))
        history = []
        for user_text, answer in pairs:
            history += [ChatMessage("user", user_text), ChatMessage("assistant", answer)]
        return ReplyContext(history=tuple(history))

    def record_turn(self, conversation: str, user: str, user_text: str, answer: str) -> None:
        with self._lock:
            self._turns[conversation].append((user_text, answer))

    def reset(self, conversation: str) -> None:
        with self._lock:
            self._turns.pop(conversation, None)
