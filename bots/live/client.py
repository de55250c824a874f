"""An aiortc client for /v1/live: a scripted microphone, and what comes back, timed on arrival.

For the tests and the latency benchmark (bench/live_latency.py): it plays recorded speech as its
microphone in real time (silence in between), records the events from the `events` data channel,
and keeps every received video frame's arrival time (and, when asked, the frame) and the received
audio with its arrival times.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

RATE = 48000
FRAME = 960  # 20 ms


class ScriptedMic(MediaStreamTrack):
    """A microphone that says what it is given (48 kHz mono int16), in real time; silence otherwise."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._script = np.zeros(0, np.int16)
        self._sent = 0
        self._start: float | None = None
        self.said_at: list[tuple[float, float]] = []  # (start, end) wall times of each utterance

    def say(self, samples: np.ndarray) -> tuple[float, float]:
        """Queue speech after what is queued; returns when it will be sent, (start, end) as monotonic
        times."""
        now = time.monotonic()
        clock = self._start + self._sent / RATE if self._start is not None else now
        start = max(now, clock) + len(self._script) / RATE
        self._script = np.concatenate([self._script, samples.astype(np.int16)])
        span = (start, start + len(samples) / RATE)
        self.said_at.append(span)
        return span

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._sent / RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        chunk = self._script[:FRAME]
        self._script = self._script[FRAME:]
        if len(chunk) < FRAME:
            chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._sent
        frame.time_base = fractions.Fraction(1, RATE)
        self._sent += FRAME
        return frame


@dataclass
class Received:
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    video_times: list[float] = field(default_factory=list)
    video_frames: list[np.ndarray] = field(default_factory=list)  # when keep_frames
    video_size: tuple[int, int] | None = None
    audio_times: list[float] = field(default_factory=list)  # arrival of each decoded audio frame
    audio_rms: list[float] = field(default_factory=list)  # its loudness (0..1)


class LiveClient:
    """One live conversation from the client's side."""

    def __init__(self, *, keep_frames: bool = False, with_video: bool = True) -> None:
        self.mic = ScriptedMic()
        self.got = Received()
        self.keep_frames = keep_frames
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", self._on_message)
        self.pc.addTrack(self.mic)
        if with_video:
            self.pc.addTransceiver("video", direction="recvonly")
        self._tasks: list[asyncio.Task] = []
        self._changed = asyncio.Event()
        self.pc.on("track", self._on_track)

    async def offer(self) -> dict[str, str]:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return {"sdp": self.pc.localDescription.sdp, "type": "offer"}

    async def connect(self, post: Callable[[dict[str, Any]], Any], user: str) -> tuple[int, dict]:
        """Send the offer with `post` (an async function: JSON body -> (status, JSON)); on 200, take
        the answer. Returns the status and body."""
        status, body = await post({**(await self.offer()), "user": user})
        if status == 200:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        return status, body

    def _on_message(self, message: Any) -> None:
        self.got.events.append((time.monotonic(), json.loads(message)))
        self._changed.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.ensure_future(self._drain(track)))

    async def _drain(self, track: MediaStreamTrack) -> None:
        got = self.got
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if track.kind == "video":
                    got.video_times.append(now)
                    got.video_size = (frame.width, frame.height)
                    if self.keep_frames:
                        got.video_frames.append(frame.to_ndarray(format="rgb24"))
                else:
                    pcm = frame.to_ndarray().astype(np.float32) / 32768
                    got.audio_times.append(now)
                    got.audio_rms.append(float(np.sqrt(np.mean(pcm**2))))
                self._changed.set()

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.got.events if e.get("type") == kind]

    async def wait_for(self, check: Callable[[], Any], timeout: float) -> Any:
        """Wait until `check()` is truthy (re-checked on every event and frame); its value."""
        deadline = time.monotonic() + timeout
        while not (value := check()):
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [e for _, e in self.got.events]
                raise TimeoutError(f"waited {timeout:.0f} s; events so far: {seen}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
        return value

    async def wait_event(self, kind: str, timeout: float, after: int = 0) -> dict[str, Any]:
        """The first event of `kind` beyond the first `after` of them."""
        return await self.wait_for(lambda: (self.events(kind)[after:] or [None])[0], timeout)

    async def vanish(self) -> None:
        """Drop off the network without a word, as a client whose process died or whose network went
        away: the ICE transports close their sockets, so nothing more leaves (no RTCP BYE, DTLS
        close_notify or SCTP ABORT, as `close` would send) and nothing more is received. The server
        can only notice the silence. `close` afterwards cleans up this side."""
        ice = {t.receiver.transport.transport for t in self.pc.getTransceivers() if t.receiver.transport}
        if self.pc.sctp is not None:
            ice.add(self.pc.sctp.transport.transport)
        for transport in ice:
            await transport.stop()

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def to_mic(samples: np.ndarray, rate: int) -> np.ndarray:
    """Float speech at `rate` as the client's microphone takes it (48 kHz int16)."""
    from pipeline.media.audio_input import resample
    from pipeline.types import Audio

    out = resample(Audio(np.asarray(samples, np.float32), rate), RATE).samples
    return (np.clip(out, -1, 1) * 32767).astype(np.int16)
