"""ReplyService: the async front of the pipeline that every bot adapter shares.

Adapters run on an asyncio loop that must never block, while a reply is seconds of CPU work. The
service runs that work on one worker thread (the CPU is the bottleneck: two replies at once only
make both slower), keeps one job per user at a time with a short bounded queue behind it, and
rate-limits each user, so one busy user cannot flood the bot.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from bots.core.priority import lower_this_thread
from bots.metrics import Metrics
from pipeline.cancel import Cancelled, CancelToken, TookTooLong
from pipeline.errors import TalkTwinError

T = TypeVar("T")


class Admission(enum.Enum):
    RUN_NOW = "run_now"
    QUEUED = "queued"  # accepted; runs after the user's job in work
    BUSY = "busy"  # the user's queue is full
    FULL = "full"  # the whole service's queue is full; retry after the returned seconds
    RATE_LIMITED = "rate_limited"


@dataclass
class _UserState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: int = 0  # admitted jobs not finished yet, the running one included
    recent: deque[float] = field(default_factory=deque)  # admission times within the rate window
    tokens: list[CancelToken] = field(default_factory=list)  # of the user's jobs waiting or running


class ReplyService:
    """Admission control and a worker thread for per-user jobs; one instance per process."""

    def __init__(
        self,
        *,
        max_pending: int = 3,
        max_queue: int = 50,
        rate_limit: int = 12,
        rate_window_s: float = 60.0,
        workers: int = 1,
        nice: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_pending = max_pending
        self.max_queue = max_queue
        self.workers = workers
        self._job_seconds = 6.0  # running average of a job's duration, for "try again in N s"
        self.rate_limit = rate_limit
        self.rate_window_s = rate_window_s
        self._clock = clock
        self._users: dict[str, _UserState] = {}
        self._guard = threading.Lock()
        # `nice`: replies below the live sessions on the CPU (bots/core/priority.py)
        self._executor = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="reply-worker",
            initializer=lower_this_thread,
            initargs=(nice,),
        )
        self.metrics = Metrics()
        self.metrics.track_queue(self.queue_depth)

    def queue_depth(self) -> int:
        """Jobs admitted and not finished yet, across users."""
        with self._guard:
            return sum(state.pending for state in self._users.values())

    def admit(self, user: str) -> tuple[Admission, float]:
        """Decide whether `user` may start a job now; returns the verdict and, when rate-limited,
        the seconds until they may try again. An admitted job must then be run with `run()`."""
        now = self._clock()
        with self._guard:
            state = self._users.setdefault(user, _UserState())
            while state.recent and now - state.recent[0] >= self.rate_window_s:
                state.recent.popleft()
            if len(state.recent) >= self.rate_limit:
                self.metrics.count("rate_limited")
                return Admission.RATE_LIMITED, self.rate_window_s - (now - state.recent[0])
            if state.pending >= self.max_pending:
                self.metrics.count("busy")
                return Admission.BUSY, 0.0
            queued = sum(s.pending for s in self._users.values())
            if queued >= self.max_queue:
                self.metrics.count("full")
                return Admission.FULL, queued * self._job_seconds / self.workers
            state.recent.append(now)
            state.pending += 1
            return (Admission.QUEUED if state.pending > 1 else Admission.RUN_NOW), 0.0

    async def run(
        self, user: str, fn: Callable[..., T], *args: object, token: CancelToken | None = None
    ) -> T:
        """Run an admitted job on the worker thread, after the user's earlier jobs.

        With a `token`, `cancel(user)` can stop the job while it waits or runs.
        """
        loop = asyncio.get_running_loop()
        return await self.run_job(
            user, lambda: loop.run_in_executor(self._executor, lambda: fn(*args)), token
        )

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The worker threads that run replies in this process."""
        return self._executor

    async def run_job(
        self, user: str, start: Callable[[], Awaitable[T]], token: CancelToken | None = None
    ) -> T:
        """Await an admitted job's work (`start()`, wherever it runs) after the user's earlier jobs,
        counting its outcome and timings. With a `token`, `cancel(user)` can stop it."""
        state = self._users[user]
        outcome = "failed"
        if token is not None:
            state.tokens.append(token)
        try:
            async with state.lock:
                started = time.monotonic()
                result = await start()
                self._job_seconds = 0.8 * self._job_seconds + 0.2 * (time.monotonic() - started)
            outcome = "ok"
            timings = getattr(result, "timings", None)
            if timings is not None:
                self.metrics.observe_stages(timings if isinstance(timings, dict) else timings.seconds)
            return result
        except Cancelled:
            outcome = "cancelled"
            raise
        except TookTooLong as e:
            outcome = f"timeout_{e.stage}"  # which stage overran, or the reply as a whole
            raise
        except TalkTwinError:
            outcome = "user_error"
            raise
        finally:
            self.metrics.count(outcome)
            with self._guard:
                state.pending -= 1
                if token is not None:
                    state.tokens.remove(token)

    def release(self, user: str) -> None:
        """Give back an admission that will not be run (what was needed for it failed)."""
        with self._guard:
            self._users[user].pending -= 1

    def cancel(self, user: str) -> bool:
        """Stop every job of `user` that is waiting or running; False when there is none."""
        with self._guard:
            tokens = list(self._users[user].tokens) if user in self._users else []
        for token in tokens:
            token.cancel()
        return bool(tokens)

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run quick blocking work (a face check, a file parse) off the loop, outside the job queue."""
        return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
