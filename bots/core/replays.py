"""Requests a client may send again under a key of its own (HTTP's `Idempotency-Key`).

A platform that redelivers a message is recognised by its (chat, message id): the core records the
message as a job before any work, and skips it the second time (bots/core/conversations.py). A
request/response client has no such ids, but it may name its request itself, to retry it safely
after a timeout or a crash. That key is the job's message id; what differs is that the answer is a
response, kept with the job, which a repeated request gets back instead of a second answer. The
workflow is the core's (which attempt runs, when a job is given up); how a response looks is the
adapter's.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Literal

from bots.core.reply_job import OutputSpec
from bots.jobs import MAX_ATTEMPTS, Job, JobStore


@dataclass(frozen=True)
class Claim:
    """What to do with a keyed request: answer it as job `job_id` (with the output decided for it
    when it was first admitted, if it was), or, with `job_id` None, reply as `earlier` says."""

    job_id: int | None
    spec: OutputSpec | None = None
    earlier: Earlier | None = None


@dataclass(frozen=True)
class Earlier:
    """A request made before, job `job_id`: still being answered, lost (it crashed the service
    MAX_ATTEMPTS times: the adapter says sorry and `finish`es it with that) or done, with the
    response kept for it (`{"status": ..., "body": ...}`)."""

    job_id: int
    state: Literal["in_progress", "lost", "done"]
    response: dict[str, Any]


class KeyedRequests:
    """The job ledger's view for one platform's keyed requests, and which of them are in work here.

    `claim` records the request (or finds it) and marks it in work in one step, so two identical
    requests arriving together never both run; `release` once its response is kept (`finish`) or the
    attempt failed (the job stays open, and a retry with the same key runs it again).
    """

    def __init__(self, jobs: JobStore, platform: str) -> None:
        self.jobs = jobs
        self.platform = platform
        self._in_work: set[int] = set()
        self._lock = threading.Lock()

    def claim(self, user: str, key: str, text: str | None, audio: bytes | None) -> Claim:
        """Blocking (the ledger is a database): call it off the event loop."""
        with self._lock:
            job_id = self.jobs.accept(self.platform, user, key, user, user, text=text, audio=audio)
            if job_id is not None:
                self._in_work.add(job_id)
                return Claim(job_id)
            job = self.jobs.find(self.platform, user, key)
            assert job is not None, "accepted before, so it is in the ledger"
            if job.status != "done" and job.id not in self._in_work and job.attempts < MAX_ATTEMPTS:
                # accepted before a crash or a refusal: answer it now, as decided when first admitted
                self._in_work.add(job.id)
                return Claim(job.id, OutputSpec(**json.loads(job.spec)) if job.spec else None)
            return Claim(None, earlier=self._earlier(job))

    def _earlier(self, job: Job) -> Earlier:
        if job.status != "done" and job.id in self._in_work:
            return Earlier(job.id, "in_progress", {})
        if job.status != "done":  # it crashed the service MAX_ATTEMPTS times: given up, for good
            return Earlier(job.id, "lost", {})
        return Earlier(job.id, "done", json.loads(job.result or "{}"))

    def finish(self, job_id: int, status: int, body: dict[str, Any]) -> None:
        """Keep the response for repeats of the request (blocking); also a lost job's sorry."""
        self.jobs.finish(job_id, json.dumps({"status": status, "body": body}))

    def release(self, job_id: int | None) -> None:
        """The attempt is over (after `finish`, so that a repeat meanwhile is told "in progress")."""
        if job_id is not None:
            self._in_work.discard(job_id)
