"""SharedBatchRenderer: one device thread that draws the frames of concurrent replies together.

On a GPU the warp is cheap per frame and the cost is in launching work, so the frames several replies
need at the same moment should go through the device as one batch. Each reply asks for its frames a
chunk at a time (keeping two chunks in flight); the device thread takes every chunk waiting, merges
those of the same prepared avatar (the default avatar is shared by most users) into one
`render_frames` call, and hands each reply back exactly its own frames. Chunks of different photos
are drawn one after another in the same thread, which also keeps replies from fighting over the GPU.
On a CPU there is nothing to gain (one reply already keeps every core busy), so the factory uses this
only with CUDA unless told otherwise.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.render.warp import WarpAvatar, WarpRenderer, render_frames
from pipeline.types import Speech

IN_FLIGHT = 2  # chunks one reply keeps queued: the next is waiting while the current one is drawn


@dataclass
class _Chunk:
    avatar: WarpAvatar
    controls: torch.Tensor
    done: Future[np.ndarray] = field(default_factory=Future)


@dataclass
class BatchStats:
    """What the device thread did, for tests and benchmarks."""

    chunks: int = 0
    draws: int = 0  # render_frames calls; fewer than chunks when replies shared batches
    most_chunks_in_one_draw: int = 0


class SharedBatchRenderer:
    """Implements AvatarRenderer on top of a WarpRenderer; thread-safe, one instance per process."""

    name = "warp"

    def __init__(self, inner: WarpRenderer, *, max_batch: int = 256) -> None:
        self.inner = inner
        self.max_batch = max(max_batch, inner.batch)
        self.stats = BatchStats()
        self._chunks: queue.SimpleQueue[_Chunk | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="render-batches", daemon=True)
        self._thread.start()

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def warm_up(self) -> None:
        self.inner.warm_up()

    def prepare(self, image: bytes, size: int, **kwargs) -> WarpAvatar:
        return self.inner.prepare(image, size, **kwargs)

    def render(
        self, avatar: WarpAvatar, speech: Speech, *, fps: int, start_time: float, n_frames: int
    ) -> Iterator[np.ndarray]:
        """The same frames as WarpRenderer.render, drawn on the shared device thread."""
        controls = self.inner.control_tensor(speech, fps=fps, start_time=start_time, n_frames=n_frames)
        step = self.inner.batch
        pending: list[_Chunk] = []
        for i in range(0, n_frames, step):
            pending.append(self._submit(avatar, controls[i : i + step]))
            if len(pending) == IN_FLIGHT:
                yield pending.pop(0).done.result()
        for chunk in pending:
            yield chunk.done.result()

    def close(self) -> None:
        self._chunks.put(None)
        self._thread.join(timeout=10)

    def _submit(self, avatar: WarpAvatar, controls: torch.Tensor) -> _Chunk:
        if not self._thread.is_alive():
            raise RuntimeError("the render thread has stopped")
        chunk = _Chunk(avatar, controls)
        self._chunks.put(chunk)
        return chunk

    # ------------------------------------------------------------------ the device thread
    def _serve(self) -> None:
        while (first := self._chunks.get()) is not None:
            waiting, frames, stop = [first], len(first.controls), False
            while frames < self.max_batch:
                try:
                    chunk = self._chunks.get_nowait()
                except queue.Empty:
                    break
                if chunk is None:
                    stop = True
                    break
                waiting.append(chunk)
                frames += len(chunk.controls)
            for group in _by_avatar(waiting):
                self._draw(group)
            if stop:
                return

    def _draw(self, group: list[_Chunk]) -> None:
        avatar = group[0].avatar
        try:
            with torch.no_grad():
                controls = torch.cat([c.controls for c in group]).to(self.inner.device)
                frames = render_frames(avatar.rig, controls, avatar.backdrop)
        except BaseException as e:  # every reply waiting on this draw gets the error
            for chunk in group:
                chunk.done.set_exception(e)
            return
        stats = self.stats
        stats.chunks += len(group)
        stats.draws += 1
        stats.most_chunks_in_one_draw = max(stats.most_chunks_in_one_draw, len(group))
        start = 0
        for chunk in group:
            end = start + len(chunk.controls)
            chunk.done.set_result(frames[start:end])
            start = end


def _by_avatar(chunks: list[_Chunk]) -> list[list[_Chunk]]:
    """Chunks grouped by prepared avatar (same photo, size and frame), in arrival order."""
    groups: dict[str, list[_Chunk]] = {}
    for chunk in chunks:
        groups.setdefault(chunk.avatar.key, []).append(chunk)
    return list(groups.values())
