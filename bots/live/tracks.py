"""The media side of a live session: the avatar's video and voice as aiortc tracks, paced at fps.

One pacer task reads the conversation once per 1/fps and hands the frame to the video track and its
audio (two 20 ms Opus-sized frames at 25 fps) to the audio track, with timestamps from the same
counter, so picture and sound leave in step. When the conversation has no frame ready (a busy CPU),
the last frame is shown again with silence: an underrun, counted (apart from the frames the
conversation holds back while the user may be starting to speak: `held`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from pipeline.live.conversation import LiveConversation

log = logging.getLogger(__name__)
VIDEO_CLOCK = 90000
QUEUE_FRAMES = 8  # frames a slow encoder may fall behind before the oldest is dropped


class QueueTrack(MediaStreamTrack):
    """A track whose frames are put by the pacer; `end()` ends it for the sender."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.dropped = 0

    def put(self, frame: Any, limit: int) -> None:
        while self._queue.qsize() >= limit:
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
                self.dropped += 1
        self._queue.put_nowait(frame)

    def end(self) -> None:
        self._queue.put_nowait(None)

    def flush(self) -> None:
        """Drop the frames not yet taken by the sender (the user interrupted: stop at once)."""
        while not self._queue.empty():
            self._queue.get_nowait()

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        return frame


class Pacer:
    """Moves the conversation's frames into the tracks at fps, in real time."""

    def __init__(self, conversation: LiveConversation, video: QueueTrack | None, audio: QueueTrack) -> None:
        self.conversation = conversation
        self.video, self.audio = video, audio
        opts = conversation.options
        self.fps, self.rate, self.spf = opts.fps, opts.sample_rate, opts.samples_per_frame
        self.sent = 0  # frames sent
        self.underruns = 0
        self.held = 0
        self.resyncs = 0
        width, height = conversation.frame_size
        self._last = np.zeros((height, width, 3), np.uint8)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1 / self.fps
        started = loop.time()
        audio_parts = 2 if self.spf % 2 == 0 else 1  # 20 ms frames at 25 fps: what Opus packs
        part = self.spf // audio_parts
        while True:
            frame = self.conversation.read()
            if frame is None:
                if self.conversation.holding:
                    self.held += 1
                else:
                    self.underruns += 1
                image, pcm = self._last, self.conversation.silence()
            else:
                image, pcm = frame.image, frame.audio
                self._last = image
            k = self.sent
            if self.video is not None:
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                picture.pts = k * VIDEO_CLOCK // self.fps
                picture.time_base = fractions.Fraction(1, VIDEO_CLOCK)
                self.video.put(picture, QUEUE_FRAMES)
            for i in range(audio_parts):
                chunk = pcm[i * part : (i + 1) * part]
                sound = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
                sound.sample_rate = self.rate
                sound.pts = k * self.spf + i * part
                sound.time_base = fractions.Fraction(1, self.rate)
                self.audio.put(sound, QUEUE_FRAMES * audio_parts)
            self.sent += 1
            delay = started + self.sent * period - loop.time()
            if delay < -0.5:  # the loop was held up: start the clock afresh rather than rush to catch up
                self.resyncs += 1
                started = loop.time() - self.sent * period
                delay = 0
            await asyncio.sleep(max(0.0, delay))

    def flush(self) -> None:
        for track in (self.video, self.audio):
            if track is not None:
                track.flush()

    def stats(self) -> dict[str, int]:
        return {
            "frames": self.sent,
            "underruns": self.underruns,
            "held": self.held,
            "resyncs": self.resyncs,
            "dropped": (self.video.dropped if self.video else 0) + self.audio.dropped,
        }
