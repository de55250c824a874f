"""ModelProcessExecutor: embedded mode with the models in a child process of their own.

The service holding the platform connections loads no model. A native crash in any model (the
speech recogniser, a voice, the renderer) kills only the child: the reply in work is written once
more by a fresh child, and a reply that kills two children gets a clear sorry. The child is
started with spawn (nothing forked from a process with threads or CUDA) and reached over one pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import secrets
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from bots.core import model_worker
from bots.core.reply_job import ReplyJob, ReplyOutcome
from pipeline.cancel import CancelToken
from pipeline.config import Settings
from pipeline.context import KnowledgeSearch
from pipeline.errors import ConfigError, WorkerCrashed, error_for_code

log = logging.getLogger(__name__)
ATTEMPTS = 2  # a reply that kills the models' process twice is given up
START_TIMEOUT_S = 900  # loading every model on a slow disk


class _Crashed(Exception):
    """The child died before answering."""


class ModelProcessExecutor:
    """Runs reply jobs in the models' process; restarts it when it dies."""

    def __init__(self, settings: Settings, knowledge: KnowledgeSearch | None) -> None:
        self.settings = settings
        self.knowledge = knowledge
        self.info: dict[str, Any] = {}
        self.starts = 0
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # one start at a time
        self._send_lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._pending: dict[str, Future] = {}
        self._searches = ThreadPoolExecutor(2, thread_name_prefix="knowledge")

    # ------------------------------------------------------------------ the child
    def start(self) -> None:
        """Start the child and wait until its models are loaded (blocking); no-op when it runs."""
        with self._lock:
            if self._process is not None and self._process.is_alive() and self._conn is not None:
                return
            ours, theirs = self._context.Pipe()
            process = self._context.Process(
                target=model_worker.serve,
                args=(self.settings.model_dump(), theirs),
                name="talktwin-models",
                daemon=True,
            )
            process.start()
            theirs.close()
            if not ours.poll(START_TIMEOUT_S):
                process.kill()
                raise WorkerCrashed("the models' process did not start")
            try:
                kind, *message = ours.recv()
            except EOFError:
                process.join(5)
                raise WorkerCrashed(
                    f"the models' process exited while loading ({process.exitcode})"
                ) from None
            if kind == "failed":  # a bad setting or model file: the same clear error as in-process
                process.join(10)
                what, detail = message
                raise ConfigError(detail) if what == "config" else _error(detail)
            assert kind == "ready", kind
            self.info, self._process, self._conn = message[0], process, ours
            self.starts += 1
            self._reader = threading.Thread(
                target=self._read, args=(ours, process), daemon=True, name="models-pipe"
            )
            self._reader.start()
            log.info("models' process %s ready (%s)", process.pid, self.info)

    def _read(self, conn: Connection, process: Any) -> None:
        while True:
            try:
                kind, *args = conn.recv()
            except (EOFError, OSError):
                break
            if kind == "done":
                key, status, payload = args
                future = self._pending.pop(key, None)
                if future is not None:
                    future.set_result((status, payload))
            elif kind == "search":
                self._searches.submit(self._search, conn, *args)
        process.join(5)
        with self._lock:
            unexpected = self._conn is conn  # close() lets go of the pipe before the child stops
            if unexpected:
                self._conn, self._process = None, None
        log.log(
            logging.ERROR if unexpected else logging.INFO,
            "the models' process %s ended (exit code %s)",
            process.pid,
            process.exitcode,
        )
        for key in [k for k, f in self._pending.items() if getattr(f, "conn", None) is conn]:
            future = self._pending.pop(key, None)
            if future is not None:
                future.set_exception(_Crashed())

    def _search(self, conn: Connection, call_id: int, user: str, query: str, k: int | None) -> None:
        assert self.knowledge is not None
        try:
            value = self.knowledge.search(user, query, k)
        except Exception:
            log.exception("knowledge search for the models' process failed")
            value = []
        self._send(conn, "answer", call_id, value)

    def _send(self, conn: Connection, *message: Any) -> None:
        with self._send_lock:
            conn.send(message)

    def _submit(self, kind: str, *args: Any) -> tuple[str, Future]:
        """Send a request that the child answers with "done"; the future fails with _Crashed if it dies."""
        self.start()
        conn = self._conn
        key = f"{kind}-{secrets.token_hex(8)}"
        future: Future = Future()
        future.conn = conn  # type: ignore[attr-defined]
        self._pending[key] = future
        try:
            assert conn is not None
            self._send(conn, kind, key, *args)
        except (OSError, AssertionError):
            self._pending.pop(key, None)
            future.set_exception(_Crashed())
        return key, future

    # ------------------------------------------------------------------ the executor
    async def run(self, job: ReplyJob, cancel: CancelToken) -> ReplyOutcome:
        for attempt in range(1, ATTEMPTS + 1):
            key, future = await asyncio.to_thread(self._submit, "job", job.to_json())
            waiting = asyncio.wrap_future(future)
            cancel_sent = False
            try:
                while not waiting.done():
                    await asyncio.wait({waiting}, timeout=0.1)
                    if cancel.cancelled and not cancel_sent and self._conn is not None:
                        cancel_sent = True
                        await asyncio.to_thread(self._send, self._conn, "cancel", key)
                status, payload = waiting.result()
            except _Crashed:
                log.error(
                    "the models' process died during job %s (attempt %d of %d)", job.id, attempt, ATTEMPTS
                )
                continue
            if status == "ok":
                return ReplyOutcome.from_json(payload)
            raise _error(payload)
        raise WorkerCrashed(f"job {job.id}: the models' process died {ATTEMPTS} times")

    def check_photo(self, image: bytes) -> None:
        """Check a new avatar where the face detector is (blocking; run off the event loop)."""
        for _ in range(ATTEMPTS):
            _, future = self._submit("check_photo", image)
            try:
                status, payload = future.result()
            except _Crashed:
                continue
            if status != "ok":
                raise _error(payload)
            return
        raise WorkerCrashed("the models' process died checking a photo")

    def live_offer(self, request: str) -> str:
        """Have the models' process answer a live conversation's WebRTC offer (blocking): the session
        then runs there, its media straight between the client and that process (bots/live)."""
        _, future = self._submit("live_offer", request)
        try:
            status, payload = future.result(timeout=120)
        except _Crashed:
            raise WorkerCrashed("the models' process died answering a live offer") from None
        if status != "ok":
            raise _error(payload)
        return payload

    def forget_photo(self, image: bytes) -> None:
        """Have the child's renderers drop what they hold about a photo (its caches on disk are the
        service's to delete)."""
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(OSError):  # it is gone, and with it what it held
                self._send(conn, "forget_photo", image)

    def close(self) -> None:
        with self._lock:
            conn, process, reader = self._conn, self._process, self._reader
            self._conn = self._process = self._reader = None
        if conn is not None:
            # Closing our end does not wake a reader blocked on it, so the child never saw EOF: ask.
            with contextlib.suppress(OSError):
                self._send(conn, "stop")
        if process is not None:
            process.join(30)
            if process.is_alive():
                process.kill()
        if reader is not None:
            reader.join(10)  # it sees the child's end; our end is closed only after that
        if conn is not None:
            conn.close()
        self._searches.shutdown(wait=False)


def _error(payload: str) -> Exception:
    value = json.loads(payload)
    return error_for_code(value["error"], value.get("detail", ""), value.get("params"))
