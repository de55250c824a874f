"""Running the HTTP app inside the service's event loop, beside the bots."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn

from bots.http.app import HttpOptions, create_app


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """The API and web page as an adapter with the same start/stop as the bots."""

    def __init__(self, options: HttpOptions, components) -> None:
        self.options = options
        self.app = create_app(components, options)
        config = uvicorn.Config(
            self.app, host=options.host, port=options.port, log_level="warning", lifespan="off"
        )
        self.server = _EmbeddedServer(config)
        self._task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://{self.options.host}:{self.options.port}/"

    def describe(self) -> str:
        return f"web page and API   {self.url}   (API docs: {self.url}docs)"

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():  # e.g. the port is taken
                self._task.result()
                raise RuntimeError(f"the HTTP server did not start on {self.url}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task
