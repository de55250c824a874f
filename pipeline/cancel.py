"""Stopping a reply: the user cancels it, the reply runs past its time limit, or one stage does.

The pipeline checks its token between recognised segments, sentences and render batches (a model
call in progress finishes its current piece first), so stopping takes at most a moment and leaves no
output behind. Stage limits catch one stuck stage (a hung TTS server, a renderer on an overloaded
machine) long before the whole reply's limit would.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Iterator

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

    def __init__(self, detail: str = "", stage: str = "reply") -> None:
        super().__init__(detail)
        self.stage = stage  # "reply" for the whole reply's limit, else the stage that overran


class CancelToken:
    """Set from any thread; checked by the reply's worker thread."""

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._deadline: float | None = None
        self._budgets: dict[str, float] = {}
        self._spent: defaultdict[str, float] = defaultdict(float)
        self._running: dict[str, float] = {}  # stage -> when its current stretch began
        self._lock = threading.Lock()  # the speak/render thread and the model's thread both time stages

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def limit(self, seconds: float) -> None:
        """Give the reply at most `seconds` from now (a tighter earlier limit stays)."""
        deadline = time.monotonic() + seconds
        self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)

    def limit_stage(self, stage: str, seconds: float) -> None:
        """Let `stage` spend at most `seconds` in total over this reply."""
        self._budgets[stage] = seconds

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Count the time spent inside the block against `name`'s limit (checks see it as it runs)."""
        with self._lock:
            self._running[name] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._spent[name] += time.monotonic() - self._running.pop(name)

    def spent(self, stage: str) -> float:
        with self._lock:
            began = self._running.get(stage)
            return self._spent[stage] + (time.monotonic() - began if began is not None else 0.0)

    def check(self) -> None:
        if self._cancelled.is_set():
            raise Cancelled("cancelled by the user")
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise TookTooLong("reply time limit reached")
        for stage, budget in self._budgets.items():
            if self.spent(stage) > budget:
                raise TookTooLong(f"{stage} took over {budget:g} s", stage=stage)
