"""A model server in a child process: started on demand, checked before use, restarted after a crash.

Native model code can crash (a segfault in llama.cpp on a CPU it mis-detects, an abort in a kernel).
In the process that holds the Telegram, Discord and HTTP connections such a crash takes every
adapter down; in a child it costs one failed request, and the next request starts a new child.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class ServerStartFailed(RuntimeError):
    """The child exited or did not answer its health check in time."""


class ServerProcess:
    """Runs `python -m <module> --port N <args>` and waits until `GET /health` answers 200.

    The child gets SIGKILL when this process dies (Linux PR_SET_PDEATHSIG), so a killed service never
    leaves a model server holding memory and cores. Its output goes to `log_path` (llama.cpp is chatty
    and a crash's last lines are what one needs to read).
    """

    def __init__(
        self,
        module: str,
        args: Sequence[str],
        *,
        log_path: Path | None = None,
        start_timeout_s: float = 120.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.module = module
        self.args = tuple(args)
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.env = env
        self.starts = 0  # how many children were started; > 1 means it was restarted
        self._proc: subprocess.Popen[bytes] | None = None
        self._port = 0
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ensure_running(self) -> str:
        """The base URL of a live child, starting one first when there is none (or it died)."""
        with self._lock:
            if not self.running():
                if self._proc is not None:
                    log.warning(
                        "%s exited with %s; starting a new one", self.module, _describe(self._proc.returncode)
                    )
                self._start()
            return self.base_url

    def kill(self) -> None:
        """Stop the child at once (a hung server is treated like a crashed one)."""
        with self._lock:
            self._stop(graceful=False)

    def close(self) -> None:
        with self._lock:
            self._stop(graceful=True)

    def _start(self) -> None:
        self._port = _free_port()
        command = [sys.executable, "-m", self.module, "--port", str(self._port), *self.args]
        out: int | object = subprocess.DEVNULL
        log_file = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = self.log_path.open("ab")
            out = log_file
        try:
            self._proc = (
                _starter()
                .submit(
                    subprocess.Popen,
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env={**os.environ, **(self.env or {})},
                    preexec_fn=_die_with_parent,
                )
                .result()
            )
        finally:
            if log_file is not None:
                log_file.close()  # the child holds its own descriptor
        self.starts += 1
        started = time.monotonic()
        while time.monotonic() - started < self.start_timeout_s:
            code = self._proc.poll()
            if code is not None:
                raise ServerStartFailed(
                    f"{self.module} exited at start with {_describe(code)}"
                    + (f"; its log: {self.log_path}" if self.log_path else "")
                )
            if _healthy(self.base_url):
                log.info("%s ready on port %d in %.1f s", self.module, self._port, time.monotonic() - started)
                return
            time.sleep(0.1)
        self._stop(graceful=False)
        raise ServerStartFailed(f"{self.module} did not become ready within {self.start_timeout_s:.0f} s")

    def _stop(self, *, graceful: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        if graceful:
            proc.terminate()
            try:
                proc.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                pass
        proc.kill()
        proc.wait()


@functools.cache
def _starter() -> ThreadPoolExecutor:
    """The one thread every server is started from, made by the first start (the models' load).

    A child inherits the CPU priority of the thread that forks it, and PR_SET_PDEATHSIG fires when
    that thread ends: a server restarted after a crash from a reply thread (which runs at a lower
    priority, bots/core/priority.py) would otherwise serve live conversations at the replies' priority."""
    return ThreadPoolExecutor(1, thread_name_prefix="server-start")


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/health", timeout=2):  # a 503 (still loading) raises
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _describe(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"
