"""SharedBatchRenderer: one device thread that draws the frames of concurrent replies together.

It wraps any batchable backend (Capabilities.batchable; the BatchRenderer Protocol in base.py: per-frame
inputs, and a draw call for a batch of them). On a GPU a frame is cheap and the cost is in launching
work, so the frames several replies need at the same moment should go through the device as one batch.
Each reply asks for its frames a chunk at a time (keeping two chunks in flight); the device thread
takes every chunk waiting, merges those of the same prepared avatar (the default avatar is shared by
most users) into one `draw` call, and hands each reply back exactly its own frames. Chunks of
different photos are drawn one after another in the same thread, which also keeps replies from
fighting over the GPU.
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

from pipeline.render.base import BatchRenderer, Capabilities, PreparedAvatar, RenderSession
from pipeline.types import Speech

IN_FLIGHT = 2  # chunks one reply keeps queued: the next is waiting while the current one is drawn


@dataclass
class _Chunk:
    avatar: PreparedAvatar
    inputs: torch.Tensor
    done: Future[np.ndarray] = field(default_factory=Future)


@dataclass
class BatchStats:
    """What the device thread did, for tests and benchmarks."""

    chunks: int = 0
    draws: int = 0  # draw calls; fewer than chunks when replies shared batches
    most_chunks_in_one_draw: int = 0


class SharedBatchRenderer:
    """Implements AvatarRenderer on top of any batchable backend; thread-safe, one per process."""

    def __init__(self, inner: BatchRenderer, *, max_batch: int = 256) -> None:
        if not inner.capabilities.batchable:
            raise ValueError(f"the {inner.name} renderer cannot draw shared batches")
        self.inner = inner
        self.name = inner.name
        self.batch = inner.batch
        self.max_batch = max(max_batch, inner.batch)
        self.stats = BatchStats()
        self._chunks: queue.SimpleQueue[_Chunk | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="render-batches", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the inner renderer's
    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    def load(self) -> None:
        self.inner.load()

    def forget(self, image: bytes) -> None:
        self.inner.forget(image)

    def prepare(self, image: bytes, size: int, **kwargs) -> PreparedAvatar:
        return self.inner.prepare(image, size, **kwargs)

    def frame_inputs(
        self, avatar: PreparedAvatar, speech: Speech, *, fps: int, start_time: float, n_frames: int
    ) -> torch.Tensor:
        return self.inner.frame_inputs(avatar, speech, fps=fps, start_time=start_time, n_frames=n_frames)

    # ------------------------------------------------------------------ drawing through the thread
    def session(self, avatar: PreparedAvatar, *, fps: int) -> RenderSession:
        """The inner renderer's per-sentence session, with each batch drawn on the shared thread."""
        return _SharedSession(self, avatar, fps)

    def draw(self, avatar: PreparedAvatar, inputs: torch.Tensor) -> np.ndarray:
        return self._submit(avatar, inputs).done.result()

    def render(
        self, avatar: PreparedAvatar, speech: Speech, *, fps: int, start_time: float, n_frames: int
    ) -> Iterator[np.ndarray]:
        """One sentence on its own: the inner renderer's frames, drawn on the shared device thread."""
        return self.session(avatar, fps=fps).feed(speech, start_time=start_time, n_frames=n_frames)

    def close(self) -> None:
        """Stop the device thread, then close the inner renderer."""
        self._chunks.put(None)
        self._thread.join(timeout=10)
        self.inner.close()

    def _submit(self, avatar: PreparedAvatar, inputs: torch.Tensor) -> _Chunk:
        if not self._thread.is_alive():
            raise RuntimeError("the render thread has stopped")
        chunk = _Chunk(avatar, inputs)
        self._chunks.put(chunk)
        return chunk

    # ------------------------------------------------------------------ the device thread
    def _serve(self) -> None:
        while (first := self._chunks.get()) is not None:
            waiting, frames, stop = [first], len(first.inputs), False
            while frames < self.max_batch:
                try:
                    chunk = self._chunks.get_nowait()
                except queue.Empty:
                    break
                if chunk is None:
                    stop = True
                    break
                waiting.append(chunk)
                frames += len(chunk.inputs)
            for group in _by_avatar(waiting):
                self._draw(group)
            if stop:
                return

    def _draw(self, group: list[_Chunk]) -> None:
        try:
            frames = self.inner.draw(group[0].avatar, torch.cat([c.inputs for c in group]))
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
            end = start + len(chunk.inputs)
            chunk.done.set_result(frames[start:end])
            start = end


class _SharedSession:
    """Per sentence, like PerSentenceSession, but each batch is a chunk for the device thread; two are
    kept in flight so the thread always has the next one."""

    def __init__(self, shared: SharedBatchRenderer, avatar: PreparedAvatar, fps: int) -> None:
        self.shared, self.avatar, self.fps = shared, avatar, fps

    def feed(self, speech: Speech, *, start_time: float, n_frames: int) -> Iterator[np.ndarray]:
        inputs = self.shared.frame_inputs(
            self.avatar, speech, fps=self.fps, start_time=start_time, n_frames=n_frames
        )
        step = self.shared.batch
        pending: list[_Chunk] = []
        for i in range(0, n_frames, step):
            pending.append(self.shared._submit(self.avatar, inputs[i : i + step]))
            if len(pending) == IN_FLIGHT:
                yield pending.pop(0).done.result()
        for chunk in pending:
            yield chunk.done.result()

    def finish(self) -> Iterator[np.ndarray]:
        return iter(())


def _by_avatar(chunks: list[_Chunk]) -> list[list[_Chunk]]:
    """Chunks grouped by prepared avatar (same photo, size and frame), in arrival order."""
    groups: dict[str, list[_Chunk]] = {}
    for chunk in chunks:
        groups.setdefault(chunk.avatar.key, []).append(chunk)
    return list(groups.values())
