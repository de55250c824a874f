"""Per-user admission on the Discord side: a cooldown between replies and a cap on jobs in flight.

The shared ReplyService still queues the CPU work and applies its own rate limit; this gate adds what
Discord users expect of a bot (a short cooldown, one reply at a time) without changing the service
that the other adapters share.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from bots.core.messages import ReplySink
from bots.core.reply_job import OutputSpec, ReplyOutcome


class Gate(enum.Enum):
    OPEN = "open"
    BUSY = "busy"  # the user already has max_pending jobs in flight
    COOLDOWN = "cooldown"  # too soon after the user's last reply started


class UserGate:
    def __init__(
        self, *, max_pending: int = 1, cooldown_s: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_pending = max_pending
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._pending: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def enter(self, user: str) -> tuple[Gate, float]:
        """The verdict for a new job of `user` and, on cooldown, the seconds left. OPEN must be
        followed by `leave(user)` when the job is over. (Single event loop: no lock needed.)"""
        if self._pending.get(user, 0) >= self.max_pending:
            return Gate.BUSY, 0.0
        now = self._clock()
        last = self._last.get(user)
        if last is not None and now - last < self.cooldown_s:
            return Gate.COOLDOWN, self.cooldown_s - (now - last)
        self._pending[user] = self._pending.get(user, 0) + 1
        self._last[user] = now
        return Gate.OPEN, 0.0

    def leave(self, user: str) -> None:
        left = self._pending.get(user, 0) - 1
        if left > 0:
            self._pending[user] = left
        else:
            self._pending.pop(user, None)


class AnsweredSink:
    """A ReplySink that calls `answered()` once the user has their answer: its media, or a line that
    ends the message (a text answer, a refusal, a failure). The gate opens then, not after the core's
    bookkeeping behind it, so a message sent right after meets the cooldown rather than "busy"."""

    def __init__(self, sink: ReplySink, answered: Callable[[], None]) -> None:
        self.sink = sink
        self.capabilities = sink.capabilities
        self._answered = answered
        self._working = False
        self._made: OutputSpec | None = None  # the reply was made; media (after a notice) to come

    async def send_text(self, text: str) -> None:
        await self.sink.send_text(text)
        if not self._working and (self._made is None or self._made.kind == "text"):
            self._answered()

    async def send_media(self, outcome: ReplyOutcome, media: Path, spec: OutputSpec, lang: str) -> None:
        await self.sink.send_media(outcome, media, spec, lang)
        self._answered()

    @contextlib.asynccontextmanager
    async def working(self, spec: OutputSpec, lang: str) -> AsyncIterator[None]:
        self._working = True
        try:
            async with self.sink.working(spec, lang):
                yield
            self._made = spec
        finally:
            self._working = False
