"""The models' own process in embedded mode: the pipeline lives here, not beside the bots.

`ModelProcessExecutor` (model_process.py) starts this with multiprocessing's spawn and speaks to it
over one pipe. Requests: ("job", key, job_json), ("cancel", key), ("check_photo", key, image),
("forget_photo", image), ("answer", call_id, value), ("live_offer", key, request_json) (a live
session then runs here, bots/live). Messages back: ("ready", info), ("done", key, "ok" | "error",
payload), ("search", call_id, user, query, k). Knowledge stays with the service (it owns the vector
store); a reply's retrieval calls back over the pipe. When the service goes, the pipe closes and this
process exits; were the service killed, the kernel kills it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from bots.core.blobs import blob_store
from bots.core.execution import execute, load_pipeline
from bots.core.priority import lower_this_thread
from bots.core.reply_job import ReplyJob
from pipeline.cancel import CancelToken
from pipeline.config import settings_from_dump
from pipeline.errors import ConfigError, InternalFailure, TalkTwinError

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def error_payload(error: Exception) -> str:
    if not isinstance(error, TalkTwinError):
        error = InternalFailure(repr(error))
    params = {k: v for k, v in error.params.items() if isinstance(v, (str, int, float, bool))}
    return json.dumps({"error": error.code, "detail": str(error), "params": params})


class _Link:
    """The pipe, shared by the reader and the job threads."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._send_lock = threading.Lock()
        self._calls: dict[int, Future] = {}
        self._next = 0
        self._lock = threading.Lock()

    def send(self, *message: Any) -> None:
        with self._send_lock:
            self.conn.send(message)

    def call(self, kind: str, *args: Any) -> Any:
        with self._lock:
            self._next += 1
            call_id, future = self._next, Future()
            self._calls[call_id] = future
        self.send(kind, call_id, *args)
        return future.result(timeout=60)

    def answered(self, call_id: int, value: Any) -> None:
        with self._lock:
            future = self._calls.pop(call_id, None)
        if future is not None:
            future.set_result(value)


class RemoteKnowledge:
    """The service's knowledge base, searched over the pipe."""

    def __init__(self, link: _Link) -> None:
        self.link = link

    def search(self, user: str, query: str, k: int | None = None) -> list:
        return self.link.call("search", user, query, k)


def serve(settings_dump: dict[str, Any], conn: Connection) -> None:
    """Load every model, say ready, then make replies until the pipe closes."""
    settings = settings_from_dump(settings_dump)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the service's to handle
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipeline.render.factory import renders_on_gpu
    from pipeline.render.registry import forget_photo

    link = _Link(conn)
    tokens: dict[str, CancelToken] = {}
    handlers: dict[str, Any] = {}  # filled once the models are loaded; the service waits for "ready"
    reader = threading.Thread(target=_read, args=(link, tokens, handlers), daemon=True)
    reader.start()  # answers to knowledge searches arrive while the models load (a warm-up reply)
    knowledge = RemoteKnowledge(link) if settings.knowledge.enabled else None
    try:
        pipeline, _ = load_pipeline(settings, knowledge)
        pipeline.warm_up()
    except ConfigError as e:  # said by the service as it would say it without this process
        link.send("failed", "config", str(e))
        os._exit(1)
    except TalkTwinError as e:  # a model file missing or unusable
        link.send("failed", "error", error_payload(e))
        os._exit(1)
    gpu = renders_on_gpu(pipeline.renderer)
    workers = settings.reply.workers or (4 if gpu else 1)
    blobs = blob_store(settings)
    # below the live sessions' threads: a live conversation comes first (bots/core/priority.py)
    replies = ThreadPoolExecutor(
        workers, thread_name_prefix="reply", initializer=lower_this_thread, initargs=(settings.reply.nice,)
    )
    checks = ThreadPoolExecutor(1, thread_name_prefix="photo")

    def run(key: str, job_json: str) -> None:
        try:
            outcome = execute(pipeline, blobs, ReplyJob.from_json(job_json), tokens[key])
            link.send("done", key, "ok", outcome.to_json())
        except Exception as e:
            if not isinstance(e, TalkTwinError):
                log.exception("job %s failed", key)
            link.send("done", key, "error", error_payload(e))
        finally:
            tokens.pop(key, None)

    def check(key: str, image: bytes) -> None:
        try:
            pipeline.prepare_avatar(image)
            link.send("done", key, "ok", "{}")
        except Exception as e:
            link.send("done", key, "error", error_payload(e))

    def start_job(key: str, job_json: str) -> None:
        tokens[key] = CancelToken()
        replies.submit(run, key, job_json)

    def live_offer(key: str, request: str) -> None:
        from bots.live import child_offer  # live sessions run here: only signalling crosses the pipe

        try:
            link.send("done", key, "ok", child_offer(pipeline, request))
        except Exception as e:
            log.exception("live offer failed")
            link.send("done", key, "error", error_payload(e))

    offers = ThreadPoolExecutor(2, thread_name_prefix="live-offer")
    handlers.update(
        job=start_job,
        check_photo=lambda key, image: checks.submit(check, key, image),
        forget_photo=lambda image: checks.submit(forget_photo, image),
        live_offer=lambda key, request: offers.submit(live_offer, key, request),
    )
    link.send(
        "ready", {"device": pipeline.renderer.capabilities.device, "workers": workers, "pid": os.getpid()}
    )
    reader.join()


def _read(link: _Link, tokens: dict[str, CancelToken], handlers: dict[str, Any]) -> None:
    while True:
        try:
            message = link.conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the service closed the pipe or died: nothing left to answer
        kind, *args = message
        if kind == "stop":  # the service is stopping, with no reply left in work
            os._exit(0)
        if kind == "answer":
            link.answered(*args)
        elif kind == "cancel":
            token = tokens.get(args[0])
            if token is not None:
                token.cancel()
        elif kind in handlers:
            handlers[kind](*args)
        else:
            log.warning("unknown request %r", kind)
