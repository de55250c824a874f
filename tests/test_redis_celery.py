"""The queue mode's infrastructure, for real: a private redis-server and Celery workers as subprocesses."""

from __future__ import annotations

import gc
import ipaddress
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pipeline.config import PROJECT_ROOT
from tests import celery_tasks
from tests.redis_server import RedisServer


@pytest.fixture
def celery_app(redis_server: RedisServer):
    celery_tasks.configure(redis_server.url)
    yield celery_tasks.app
    # An AsyncResult unsubscribes from its result channel when collected: while the server is still up.
    gc.collect()


class Worker:
    """`python -m celery -A tests.celery_tasks worker --pool=solo` consuming one private queue."""

    def __init__(self, url: str, queue: str, name: str, workdir: Path) -> None:
        self.log = workdir / f"{name}.log"
        env = {**os.environ, celery_tasks.REDIS_URL_ENV: url, "PYTHONPATH": str(PROJECT_ROOT)}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "tests.celery_tasks", "worker"),
                    *("--pool=solo", "--concurrency=1", "--loglevel=INFO", "-Q", queue, "-n", f"{name}@%h"),
                    *("--without-gossip", "--without-mingle", "--without-heartbeat"),
                ],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # warm shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def workers(redis_server: RedisServer, tmp_path: Path):
    started: list[Worker] = []

    def start(queue: str, name: str) -> Worker:
        worker = Worker(redis_server.url, queue, name, tmp_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def test_redis_server_answers_on_loopback(redis_server: RedisServer):
    assert ipaddress.ip_address(redis_server.host).is_loopback
    assert redis_server.url.startswith(f"redis://127.0.0.1:{redis_server.port}/")
    with redis_server.client() as client:
        client.set("talktwin:probe", "ok")
        assert client.get("talktwin:probe") == b"ok"
        assert client.delete("talktwin:probe") == 1


def test_worker_runs_a_task_and_returns_its_result(celery_app, workers):
    queue = f"q-{uuid.uuid4().hex[:8]}"
    worker = workers(queue, "w1")
    result = celery_tasks.add.apply_async((2, 3), queue=queue)
    try:
        value = result.get(timeout=30)
    except Exception as e:
        raise AssertionError(f"no result: {e!r}; worker log:\n{worker.log_text()}") from e
    assert value["sum"] == 5
    assert value["pid"] == worker.proc.pid != os.getpid()


def test_task_of_a_killed_worker_runs_again_on_the_next_worker(celery_app, workers, tmp_path: Path):
    """A worker killed with SIGKILL mid-task never acknowledges it (acks_late), so the message stays in
    kombu's "unacked" set in Redis; the next worker's restore sweep puts it back on the queue once it has
    been unacknowledged for `visibility_timeout` (5 s here) and runs it again, flagged `redelivered`.
    (`task_reject_on_worker_lost` plays no part: it covers a prefork child dying under a live worker.)
    Measured here: the second run finishes about 5.5 s after the first one started, i.e. the visibility
    timeout plus at most one 1 s sweep. The sweep runs when a worker starts and then every
    `unacked_restore_interval` x `unacked_restore_throttle` s: with kombu's 10 x 10 it took 100 s, and
    with the default visibility_timeout (3600 s) it would take an hour.
    """
    queue = f"q-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "runs.txt"
    first = workers(queue, "w1")
    result = celery_tasks.slow_once.apply_async((str(marker), 120), queue=queue)

    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text().strip()):
        assert time.monotonic() < deadline, f"the first run never started; log:\n{first.log_text()}"
        assert first.proc.poll() is None, f"the first worker died; log:\n{first.log_text()}"
        time.sleep(0.05)
    started = time.monotonic()
    first.kill9()

    second = workers(queue, "w2")
    try:
        value = result.get(timeout=40)
    except Exception as e:
        raise AssertionError(f"not redelivered: {e!r}; second worker log:\n{second.log_text()}") from e
    took = time.monotonic() - started

    assert value["runs"] == 2
    assert value["pid"] == second.proc.pid
    assert value["redelivered"] is True
    assert marker.read_text().split() == [str(first.proc.pid), str(second.proc.pid)]
    # Not before the visibility timeout (the message was delivered just before the first run started).
    assert celery_tasks.VISIBILITY_TIMEOUT_S - 1 <= took < celery_tasks.VISIBILITY_TIMEOUT_S + 15, took
    print(f"redelivered after {took:.1f} s")
