"""Per-user admission on the Discord side: a cooldown between replies and a cap on jobs in flight.

The shared ReplyService still queues the CPU work and applies its own rate limit; this gate adds what
Discord users expect of a bot (a short cooldown, one reply at a time) without changing the service
that the other adapters share.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


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
