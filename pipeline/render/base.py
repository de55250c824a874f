"""The talking-head stage: what every renderer backend offers the rest of the pipeline.

A renderer gets the speech itself (audio samples plus any word/phoneme timings), not only a loudness
curve, so that checkpoint-based neural renderers (Wav2Lip, SadTalker) fit behind the same Protocol.

Renderers differ in when they can draw. A per-sentence renderer (warp, Wav2Lip) draws a sentence's
frames as soon as it has its audio; a whole-utterance renderer (SadTalker) predicts head pose and
expression over the whole answer, so it needs every sentence first. One `RenderSession` per reply
(or, later, per live stream) hides the difference: `feed` each sentence in order, then `finish`; the
frames come out of whichever call can produce them, always in order, and the session carries what
must continue across sentences (idle motion, pose).

Backends are registered by name in pipeline/render/registry.py and declare their `Capabilities`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pipeline.types import Speech


class PreparedAvatar(Protocol):
    """Everything a renderer computes once per photo and output size."""

    key: str  # content hash of the photo plus the output size
    size: int  # the longer side of the output frames, in pixels
    width: int  # output frame width (= size for the square face crop)
    height: int


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, so that callers decide by declaration, never by probing attributes."""

    device: str  # where frames are drawn, resolved: "cpu" or "cuda" (never "auto")
    batchable: bool  # implements BatchRenderer: frames of several replies can share one draw call
    streaming: bool  # a sentence's frames come out of `feed` as soon as it is fed
    whole_utterance: bool  # needs every sentence before drawing: frames come out of `finish`

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"


class RenderSession(Protocol):
    """One reply's (or one live stream's) frames, sentence by sentence.

    The caller owns the clip's timeline (it knows the real length of the audio it muxes, after
    resampling), so each `feed` says where the speech starts and exactly how many frames it needs;
    the session owns what must carry across sentences.
    """

    def feed(self, speech: Speech, *, start_time: float, n_frames: int) -> Iterator[np.ndarray]:
        """Frames (uint8, (batch, height, width, 3)) that this sentence makes ready: all `n_frames` of
        it for a streaming renderer, none for a whole-utterance one."""
        ...

    def finish(self) -> Iterator[np.ndarray]:
        """Whatever frames are still owed, after the last sentence; the session is done afterwards."""
        ...


@runtime_checkable
class AvatarRenderer(Protocol):
    """A renderer backend. Thread-safe: concurrent replies share one instance."""

    name: str

    @property
    def capabilities(self) -> Capabilities: ...

    def load(self) -> None:
        """The one-time heavy work (weights, face detector); idempotent. Raises a clear error when a
        model file is missing or wrong, so that a bad setup fails at start, not at the first reply."""
        ...

    def close(self) -> None:
        """Release models, threads and memory caches."""
        ...

    def forget(self, image: bytes) -> None:
        """Drop everything derived from this photo, in memory and on disk (called by `/forget`)."""
        ...

    def prepare(self, image: bytes, size: int) -> PreparedAvatar:
        """Analyse a photo once. Raises UnreadableImage, NoFaceFound or FaceTooSmall."""
        ...

    def session(self, avatar: PreparedAvatar, *, fps: int) -> RenderSession:
        """A new session drawing `avatar` at `fps`."""
        ...


class BatchRenderer(AvatarRenderer, Protocol):
    """A renderer whose frames are independent given per-frame inputs, so frames of several replies
    with the same prepared avatar can be drawn in one call (SharedBatchRenderer)."""

    batch: int  # frames drawn per call by one reply

    def frame_inputs(
        self, avatar: PreparedAvatar, speech: Speech, *, fps: int, start_time: float, n_frames: int
    ) -> Any:
        """Per-frame inputs (a torch tensor, frames first) for `speech`'s frames."""
        ...

    def draw(self, avatar: PreparedAvatar, inputs: Any) -> np.ndarray:
        """Frames (uint8, (len(inputs), height, width, 3)) for a slice or concatenation of inputs."""
        ...


class PerSentenceSession:
    """The session of a batchable per-sentence renderer: each sentence drawn batch by batch when fed."""

    def __init__(self, renderer: BatchRenderer, avatar: PreparedAvatar, *, fps: int) -> None:
        self.renderer, self.avatar, self.fps = renderer, avatar, fps

    def feed(self, speech: Speech, *, start_time: float, n_frames: int) -> Iterator[np.ndarray]:
        inputs = self.renderer.frame_inputs(
            self.avatar, speech, fps=self.fps, start_time=start_time, n_frames=n_frames
        )
        step = self.renderer.batch
        for i in range(0, n_frames, step):
            yield self.renderer.draw(self.avatar, inputs[i : i + step])

    def finish(self) -> Iterator[np.ndarray]:
        return iter(())
