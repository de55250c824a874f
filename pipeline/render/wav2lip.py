"""The Wav2Lip renderer: the authors' released generator draws the mouth, our warp renderer the rest.

Per photo (`prepare`): the warp renderer's prepared square crop (FaceMesh landmarks, cached on disk,
the mouth closed), and from its landmarks the face box Wav2Lip expects (forehead to chin, 5 % more
below the chin, as the authors pad their detector's box), so S3FD is not needed. The box is resized to
96 x 96 BGR, and its lower half blanked for the first three input channels, as in the authors'
inference.

Per frame: the 0.2 s mel window of the speech (wav2lip_audio.py) and the warp renderer's idle controls
with the mouth and head held still (blinks and brows keep moving: they are outside the mouth). The
generator's 96 px face is resized back to the box, its colours matched to the photo's (per-channel mean
and spread over the pasted region, which removes the tint and contrast shift the generator adds), and
pasted into the lower face with a feathered mask, so no seam shows. Head motion would need the box to
follow it frame by frame; it is left still for now.

Batchable (SharedBatchRenderer): a frame's inputs are its warp controls followed by its mel window.
fp16 on CUDA. Frames are the square face crop (render.frame = "photo" is not supported yet).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.media.audio_input import resample
from pipeline.render import wav2lip_audio as mel_front
from pipeline.render.base import Capabilities, PerSentenceSession, PreparedAvatar, RenderSession
from pipeline.render.warp import (
    BLINK_COL,
    BROW_COL,
    N_CONTROLS,
    WarpAvatar,
    WarpRenderer,
)
from pipeline.render.wav2lip_net import FACE_SIZE, MEL_BINS, MEL_WINDOW, Wav2LipNet, load_wav2lip
from pipeline.types import Speech

CHIN_PAD = 0.05  # extra box below the chin / face height (the authors pad 10 px at their scale)
PASTE_TOP = 0.45  # the pasted region starts this far down the box: the nose tip and below
FEATHER = 0.12  # width of the mask's soft edge / box side
MEL_SIZE = MEL_BINS * MEL_WINDOW


@dataclass(frozen=True)
class Wav2LipAvatar:
    """A prepared photo: the warp avatar it moves, and the face box with its network input."""

    key: str
    size: int
    width: int
    height: int
    warp: WarpAvatar
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 in frame px
    face: torch.Tensor  # (1, 6, 96, 96) on the device: masked + whole face, BGR in [0, 1]
    mask: torch.Tensor  # (1, 1, h, w) the feathered paste mask over the box


class Wav2LipRenderer:
    """Implements BatchRenderer (base.py). Thread-safe: prepared avatars are read-only once built."""

    name = "wav2lip"

    def __init__(
        self,
        checkpoint: Path,
        *,
        device: str = "auto",
        batch: int = 16,
        seed: int = 7,
        cache_dir: Path | None = None,
        threads: int = 0,
        max_cached: int = 8,
    ) -> None:
        self.checkpoint = checkpoint
        self.warp = WarpRenderer(
            device=device, batch=batch, seed=seed, cache_dir=cache_dir, threads=threads, frame="square"
        )
        self.device = self.warp.device
        self.batch = batch
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.max_cached = max_cached
        self.net: Wav2LipNet | None = None
        self._avatars: OrderedDict[str, Wav2LipAvatar] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(device=self.device.type, batchable=True, streaming=True, whole_utterance=False)

    def load(self) -> None:
        """The face detector and the generator's weights (CheckpointError for a bad file)."""
        self.warp.load()
        if self.net is None:
            self.net = load_wav2lip(self.checkpoint, self.device).to(self.dtype)

    def close(self) -> None:
        self.net = None
        with self._lock:
            self._avatars.clear()
        self.warp.close()

    def forget(self, image: bytes) -> None:
        prefix = hashlib.sha256(image).hexdigest()[:32] + "-"
        with self._lock:
            for key in [k for k in self._avatars if k.startswith(prefix)]:
                del self._avatars[key]
        self.warp.forget(image)

    # ------------------------------------------------------------------ prepare
    def prepare(self, image: bytes, size: int) -> Wav2LipAvatar:
        """The warp renderer's square crop (its errors for photos without a usable face), plus the box."""
        base = self.warp.prepare(image, size)
        with self._lock:
            cached = self._avatars.get(base.key)
            if cached is not None:
                self._avatars.move_to_end(base.key)
                return cached
        avatar = self._prepare(base)
        with self._lock:
            self._avatars[base.key] = avatar
            while len(self._avatars) > self.max_cached:
                self._avatars.popitem(last=False)
        return avatar

    def _prepare(self, base: WarpAvatar) -> Wav2LipAvatar:
        rig, size = base.rig, base.size
        (x0, y0), (x1, y1) = rig.points.min(0), rig.points.max(0)
        y1 += CHIN_PAD * (y1 - y0)
        top, bottom = max(0, int(y0)), min(size, int(np.ceil(y1)))
        left, right = max(0, int(x0)), min(size, int(np.ceil(x1)))
        crop = torch.from_numpy(rig.still[top:bottom, left:right]).permute(2, 0, 1).float().div(255)[None]
        whole = F.interpolate(crop, (FACE_SIZE, FACE_SIZE), mode="bilinear", align_corners=False).flip(1)
        masked = whole.clone()
        masked[:, :, FACE_SIZE // 2 :] = 0
        face = torch.cat([masked, whole], 1).to(self.device, self.dtype)
        return Wav2LipAvatar(
            key=f"{base.key}-wav2lip",
            size=base.size,
            width=base.width,
            height=base.height,
            warp=base,
            box=(top, bottom, left, right),
            face=face,
            mask=_paste_mask(bottom - top, right - left).to(self.device),
        )

    # ------------------------------------------------------------------ render
    def session(self, avatar: PreparedAvatar, *, fps: int) -> RenderSession:
        return PerSentenceSession(self, avatar, fps=fps)

    def frame_inputs(
        self, avatar: PreparedAvatar, speech: Speech, *, fps: int, start_time: float, n_frames: int
    ) -> torch.Tensor:
        """(n_frames, 8 + 80 * 16): the warp controls (idle only) and the mel window of each frame."""
        controls = self.warp.control_tensor(speech, fps=fps, start_time=start_time, n_frames=n_frames)
        idle = torch.zeros_like(controls)
        idle[:, [BLINK_COL, BROW_COL]] = controls[:, [BLINK_COL, BROW_COL]]
        audio = resample(speech.audio, mel_front.SAMPLE_RATE).samples
        mels = mel_front.mel_windows(mel_front.mel_spectrogram(audio), fps=fps, n_frames=n_frames)
        return torch.cat([idle, torch.from_numpy(mels).reshape(n_frames, MEL_SIZE)], 1)

    def draw(self, avatar: PreparedAvatar, inputs: torch.Tensor) -> np.ndarray:
        """Frames for a batch of inputs: the warp frame with the generated mouth pasted in."""
        assert isinstance(avatar, Wav2LipAvatar), "wav2lip draws only avatars it prepared"
        if self.net is None:
            self.load()
        assert self.net is not None
        frames = self.warp.draw(avatar.warp, inputs[:, :N_CONTROLS])
        b = len(inputs)
        with torch.no_grad():
            mels = inputs[:, N_CONTROLS:].reshape(b, 1, MEL_BINS, MEL_WINDOW).to(self.device, self.dtype)
            mouth = self.net(mels, avatar.face.expand(b, -1, -1, -1)).float().flip(1)  # BGR -> RGB
            y0, y1, x0, x1 = avatar.box
            mouth = F.interpolate(mouth, (y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
            region = (
                torch.from_numpy(frames[:, y0:y1, x0:x1]).to(self.device).permute(0, 3, 1, 2).float() / 255
            )
            mouth = _match_colours(mouth, region, avatar.mask)
            blended = avatar.mask * mouth + (1 - avatar.mask) * region
            pixels = (blended.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        frames[:, y0:y1, x0:x1] = pixels
        return frames


def _paste_mask(height: int, width: int) -> torch.Tensor:
    """1 over the lower face (from PASTE_TOP down), fading to 0 over FEATHER at every edge."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width

    def ramp(distance: torch.Tensor) -> torch.Tensor:
        return (distance / FEATHER).clamp(0, 1)

    vertical = torch.minimum(ramp(ys - PASTE_TOP), ramp(1 - ys))
    horizontal = torch.minimum(ramp(xs), ramp(1 - xs))
    return (vertical[:, None] * horizontal[None, :])[None, None]


def _match_colours(generated: torch.Tensor, photo: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`generated` with each channel's mean and spread under `mask` moved to the photo's."""
    weight = mask / mask.sum()

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (x * weight).sum((2, 3), keepdim=True)
        spread = ((x - mean) ** 2 * weight).sum((2, 3), keepdim=True).sqrt()
        return mean, spread

    g_mean, g_spread = stats(generated)
    p_mean, p_spread = stats(photo)
    return (generated - g_mean) * (p_spread / g_spread.clamp_min(1e-3)) + p_mean
