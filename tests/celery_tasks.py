"""Tasks for tests/test_redis_celery.py, run by real workers (`python -m celery -A tests.celery_tasks`).

The worker finds the broker in $TALKTWIN_TEST_REDIS_URL; the test process calls `configure(url)`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery

REDIS_URL_ENV = "TALKTWIN_TEST_REDIS_URL"
# Kombu's Redis transport: a delivered but unacknowledged message goes back to its queue once it has been
# unacknowledged for `visibility_timeout` seconds (default 3600), found by a sweep that a consuming worker
# runs when it starts and then every `unacked_restore_interval` x `unacked_restore_throttle` s (10 x 10).
VISIBILITY_TIMEOUT_S = 5

app = Celery("tests.celery_tasks")
app.conf.update(
    task_acks_late=True,  # acknowledge after the task returns, not when the worker takes it
    task_reject_on_worker_lost=True,  # prefork: a child that dies requeues its task instead of failing it
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,  # also silences Celery 5's deprecation warning
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
    result_expires=600,
    worker_hijack_root_logger=False,
)


def configure(url: str) -> None:
    app.conf.update(broker_url=url, result_backend=url)


if os.environ.get(REDIS_URL_ENV):
    configure(os.environ[REDIS_URL_ENV])


@app.task
def add(x: int, y: int) -> dict:
    return {"sum": x + y, "pid": os.getpid()}


@app.task(bind=True)
def slow_once(self, marker: str, first_run_sleep_s: float) -> dict:
    """Appends this worker's pid to `marker`; sleeps on the first run only (the test kills that worker)."""
    path = Path(marker)
    earlier_runs = path.read_text().split() if path.exists() else []
    with path.open("a") as f:
        f.write(f"{os.getpid()}\n")
    if not earlier_runs:
        time.sleep(first_run_sleep_s)
    return {
        "runs": len(earlier_runs) + 1,
        "pid": os.getpid(),
        "redelivered": bool((self.request.delivery_info or {}).get("redelivered")),
    }
