"""A real, private redis-server for tests: its own port on 127.0.0.1, its own temp dir, no persistence."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

import redis


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen[bytes]], directory: Path | None = None) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


class RedisServer:
    """Starts Debian's `redis-server` on a free loopback port; `.url` is its database 0.

    Use it as a context manager or call `close()`: the process is stopped and its dir removed (at
    interpreter exit too, should the owner forget).
    """

    def __init__(self, *, start_timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not on PATH: run `make test`, which installs Debian's redis-server "
                "(or `apt-get install redis-server`)"
            )
        self.host = "127.0.0.1"
        self._dir = Path(tempfile.mkdtemp(prefix="talktwin-redis-"))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._finalizer = weakref.finalize(self, _stop, self._procs, self._dir)
        try:
            # A port picked free can be taken before redis binds it: try a few.
            for _ in range(5):
                self.port = _free_port()
                if self._start(binary, start_timeout):
                    return
            raise RuntimeError(f"redis-server did not start; its log:\n{self.log_text()}")
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def log_text(self) -> str:
        return (self._dir / "redis.log").read_text(errors="replace")

    def _start(self, binary: str, timeout: float) -> bool:
        with (self._dir / "redis.log").open("ab") as log:
            proc = subprocess.Popen(
                [
                    *(binary, "--port", str(self.port), "--bind", self.host),
                    *("--save", "", "--appendonly", "no", "--dir", str(self._dir)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._procs.append(proc)
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return False  # e.g. the port was taken meanwhile
                try:
                    # Our process, not another server that got the port first.
                    if client.ping() and client.info("server")["process_id"] == proc.pid:
                        return True
                except redis.ConnectionError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(
            f"redis-server did not answer PING in {timeout:.0f} s; its log:\n{self.log_text()}"
        )

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
