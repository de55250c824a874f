"""`run_bots.py worker`: a Celery worker that loads every model once and makes replies.

Models load in the pool's child process after it forks (never CUDA before a fork), once per child;
the child runs `bots.core.execution.execute` for each job. When a child dies mid-reply (a native
crash, a kill), Celery's main process starts a new child and the job is delivered again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_process_init

from bots.core.blobs import blob_store
from bots.core.execution import execute, load_pipeline
from bots.core.reply_job import ReplyJob
from bots.queue.celery_app import CHECK_PHOTO_TASK, FORGET_PHOTO_CHANNEL, REPLY_TASK, make_app
from pipeline.cancel import CancelToken
from pipeline.config import Settings
from pipeline.errors import TalkTwinError, WorkerCrashed

log = logging.getLogger(__name__)
CANCEL_KEY = "talktwin:cancel:{}"
DELIVERIES_KEY = "talktwin:deliveries:{}"


class _Loaded:
    """What one worker process loaded: the pipeline, the blob store, a Redis client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pipeline, _ = load_pipeline(settings)
        self.pipeline.warm_up()  # the default avatar, as in embedded mode: not on the first job's clock
        self.blobs = blob_store(settings)
        self.redis = redis.Redis.from_url(settings.queue.broker_url)
        threading.Thread(
            target=_forget_photos, args=(settings, self.redis), name="forget-photos", daemon=True
        ).start()
        # Celery's "ready." comes from its main process, before this child has loaded anything
        log.info("worker process %d: models loaded, taking replies", os.getpid())


def register_tasks(app: Celery, settings: Settings) -> Callable[[], _Loaded]:
    """Register the tasks; returns what loads the models (once per process) when first called."""
    state: dict[str, _Loaded] = {}
    lock = threading.Lock()

    def loaded() -> _Loaded:
        with lock:
            if "it" not in state:
                state["it"] = _Loaded(settings)
            return state["it"]

    @worker_process_init.connect(weak=False)
    def load_models(**_: Any) -> None:
        loaded()

    @app.task(name=REPLY_TASK, bind=True)
    def reply(task: Any, job_json: str) -> str:
        here = loaded()
        job = ReplyJob.from_json(job_json)
        deliveries = here.redis.incr(DELIVERIES_KEY.format(task.request.id))
        here.redis.expire(DELIVERIES_KEY.format(task.request.id), 86400)
        if deliveries > settings.queue.max_deliveries:
            log.error("job %s was delivered %d times without an answer; giving up", job.id, deliveries - 1)
            return _error(WorkerCrashed(f"delivered {deliveries - 1} times"))
        token = CancelToken()
        done = threading.Event()
        watcher = threading.Thread(
            target=_watch_cancel, args=(here.redis, task.request.id, token, done), daemon=True
        )
        watcher.start()
        try:
            outcome = execute(here.pipeline, here.blobs, job, token)
            return json.dumps({"outcome": json.loads(outcome.to_json())})
        except TalkTwinError as e:
            return _error(e)
        finally:
            done.set()

    @app.task(name=CHECK_PHOTO_TASK)
    def check_photo(ref: str) -> str:
        here = loaded()
        try:
            here.pipeline.prepare_avatar(here.blobs.read(ref))
        except TalkTwinError as e:
            return _error(e)
        return json.dumps({"ok": True})


def _error(error: TalkTwinError) -> str:
    params = {k: v for k, v in error.params.items() if isinstance(v, (str, int, float, bool))}
    return json.dumps({"error": error.code, "detail": str(error), "params": params})


def _forget_photos(settings: Settings, client: redis.Redis) -> None:
    """Drop what this process's renderers derived from photos users forgot, as the bots' side
    announces them (`CeleryExecutor.forget_photo`): in memory, and in this worker's data folder."""
    from pipeline.render.registry import forget_photo

    while True:
        try:
            listener = client.pubsub(ignore_subscribe_messages=True)
            listener.subscribe(FORGET_PHOTO_CHANNEL)
            for message in listener.listen():
                forget_photo(settings, message["data"])
                log.info("worker process %d: dropped a forgotten photo's caches", os.getpid())
        except Exception as e:  # Redis gone for a while: listen again when it is back
            log.warning("forgotten photos: %s; listening again in 5 s", e)
            time.sleep(5)


def _watch_cancel(client: redis.Redis, task_id: str, token: CancelToken, done: threading.Event) -> None:
    """Cancellation is a job state in Redis; the pipeline sees it through the job's CancelToken."""
    key = CANCEL_KEY.format(task_id)
    while not done.wait(0.2):
        try:
            if client.exists(key):
                token.cancel()
                return
        except redis.RedisError:
            log.warning("cannot reach Redis to look for a cancel of %s", task_id)


def run_worker(settings: Settings, concurrency: int = 0) -> None:
    """Consume replies until stopped (SIGTERM: finish the reply in work, then exit)."""
    if not settings.queue.broker_url:
        raise SystemExit("queue.broker_url is empty: set TALKTWIN_QUEUE__BROKER_URL=redis://host:port/0")
    app = make_app(settings)
    load = register_tasks(app, settings)
    concurrency = (
        concurrency or settings.queue.worker_concurrency or (4 if settings.render.device == "cuda" else 1)
    )
    # One reply at a time: a pool child of its own, so a native crash costs that child, not the
    # worker. Several (a GPU): threads sharing one set of models, so their frames meet in batches.
    pool = "prefork" if concurrency == 1 else "threads"
    if pool == "threads":
        load()
    app.worker_main(
        [
            "worker",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


if __name__ == "__main__":  # python -m bots.queue.worker, the same as `run_bots.py worker`
    import sys

    from pipeline.config import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_worker(load_settings(), int(sys.argv[1]) if len(sys.argv) > 1 else 0)
