"""Stopping a reply: the user cancels it, or it runs past its time limit.

The pipeline checks its token between sentences and render batches (a model call in progress
finishes its current piece first), so stopping takes at most a moment and leaves no output behind.
"""

from __future__ import annotations

import threading
import time

from pipeline.errors import TalkTwinError


class Cancelled(TalkTwinError):
    code = "cancelled"
    messages = {  # noqa: RUF012 - the base declares the ClassVar
        "en": "Okay, I stopped working on that.",
        "zh": "好的，我已停止处理。",
    }


class TookTooLong(TalkTwinError):
    code = "timeout"
    messages = {  # noqa: RUF012
        "en": "That took too long, so I stopped. Please try again, or ask something shorter.",
        "zh": "处理时间太长，我已停止。请再试一次，或者问一个简短一点的问题。",
    }


class CancelToken:
    """Set from any thread; checked by the reply's worker thread."""

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._deadline: float | None = None

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def limit(self, seconds: float) -> None:
        """Give the reply at most `seconds` from now (a tighter earlier limit stays)."""
        deadline = time.monotonic() + seconds
        self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)

    def check(self) -> None:
        if self._cancelled.is_set():
            raise Cancelled("cancelled by the user")
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise TookTooLong("reply time limit reached")
