"""A local fake of the edge-tts websocket service, on 127.0.0.1.

It speaks the service's protocol as edge-tts 7.3.1 expects it (measured notes in
shared/notes/local-fakes.md): the client sends `Path:speech.config` and `Path:ssml` text frames; the
server answers `turn.start`, one `audio.metadata` frame per word boundary, binary audio frames and
`turn.end`. Point the client at it by patching `edge_tts.communicate.WSS_URL` to `server.url`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import WSMsgType, web

Mode = Literal["speak", "no_audio", "hang"]
_TICKS = 10_000_000


@dataclass
class FakeEdgeServer:
    """Answers every SSML request with `mp3` and `words` ((text, start s, end s)), as `mode` says.

    "speak" sends the audio, "no_audio" only the turn frames (the client raises NoAudioReceived),
    "hang" accepts the connection and never answers (for timeouts). `ssml` records what came in.
    """

    mp3: bytes = b""
    words: list[tuple[str, float, float]] = field(default_factory=list)
    mode: Mode = "speak"
    chunk_bytes: int = 4096
    ssml: list[str] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-edge", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        # edge-tts appends "&ConnectionId=..." so the URL must already have a query
        return f"ws://127.0.0.1:{self.port}/edge/v1?TrustedClientToken=test"

    def __enter__(self) -> FakeEdgeServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/edge/v1", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            headers, _, body = msg.data.partition("\r\n\r\n")
            if "Path:ssml" not in headers:
                continue
            self.ssml.append(body)
            if self.mode == "hang":
                await asyncio.sleep(3600)
            await self._answer(ws)
        return ws

    async def _answer(self, ws: web.WebSocketResponse) -> None:
        request_id = uuid.uuid4().hex
        await ws.send_str(_text_frame(request_id, "turn.start", "{}"))
        if self.mode == "speak":
            for text, start, end in self.words:
                data = {
                    "Offset": round(start * _TICKS),
                    "Duration": round((end - start) * _TICKS),
                    "text": {"Text": text, "Length": len(text), "BoundaryType": "WordBoundary"},
                }
                metadata = json.dumps({"Metadata": [{"Type": "WordBoundary", "Data": data}]})
                await ws.send_str(_text_frame(request_id, "audio.metadata", metadata))
            for i in range(0, len(self.mp3), self.chunk_bytes):
                await ws.send_bytes(_audio_frame(request_id, self.mp3[i : i + self.chunk_bytes]))
        await ws.send_str(_text_frame(request_id, "turn.end", "{}"))


def _text_frame(request_id: str, path: str, body: str) -> str:
    content_type = "application/json; charset=utf-8"
    return f"X-RequestId:{request_id}\r\nContent-Type:{content_type}\r\nPath:{path}\r\n\r\n{body}"


def _audio_frame(request_id: str, data: bytes) -> bytes:
    # 2-byte big-endian header length, the headers, then the mp3 bytes (the client skips the 2 bytes
    # plus the header length, so the header text ends with CRLF that the length leaves out)
    headers = f"X-RequestId:{request_id}\r\nContent-Type:audio/mpeg\r\nPath:audio\r\n".encode()
    return len(headers).to_bytes(2, "big") + headers + data
