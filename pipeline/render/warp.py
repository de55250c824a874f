"""The weight-free "warp" renderer: landmark-driven thin-plate-spline warps of the photo itself.

Per photo (`prepare`, cached): FaceMesh landmarks, a square face crop with the mouth closed, and one
displacement field per basis motion (jaw, lips spread, blink, brow raise, lips rounded). Per frame:
a weighted sum of the fields plus a masked head motion (sway and emphasis nods, fading out towards
the crop's edges), one batched grid_sample, and the painted mouth interior and eyelids. Only the
region around the head is ever resampled; the rest of every frame is the photo, byte for byte. The
frame is either that square crop or, with frame="photo", the whole picture with the crop pasted back
in (framing.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.render.base import Capabilities, PerSentenceSession, PreparedAvatar, RenderSession
from pipeline.render.emphasis import emphasis_controls
from pipeline.render.eyes import paint_lids
from pipeline.render.framing import FRAMES, Backdrop, backdrop, paste, photo_layout
from pipeline.render.landmarks import check_frontal, decode_image, shared_detector, upright
from pipeline.render.motion import blink_curve, head_sway
from pipeline.render.mouth import paint_mouth
from pipeline.render.rig import BLINK, JAW, ROUND, WIDE, Rig, build_rig, rig_from_crop
from pipeline.render.visemes import mouth_controls
from pipeline.types import Speech

log = logging.getLogger(__name__)

LANDMARK_CACHE_VERSION = 3  # bump when decoding or detection changes what landmarks a photo gets
MIN_SIZE, MAX_SIZE = 64, 2048
# Columns of the per-frame control matrix: the basis weights (rig.py's order; the lip-shape column is
# signed: spread when positive, rounded when negative, see basis_weights), then the head motion.
JAW_COL, WIDE_COL, BLINK_COL, BROW_COL, ROT_COL, SHIFT_X_COL, SHIFT_Y_COL, NOD_COL = range(8)
N_CONTROLS = 8
# A nod at weight 1: the head pitches forward, drawn as a vertical squash towards the pivot under the
# chin (the forehead travels further than the chin, as in a real nod) plus a small drop.
NOD_SQUASH = 0.035
NOD_DROP = 0.006  # fraction of the crop side
ROUND_JAW = 0.3  # rounded lips open the jaw this share less (they narrow the mouth instead)


@dataclass(frozen=True)
class WarpAvatar:
    """A prepared photo: implements PreparedAvatar.

    `size` is the longer frame side (the square side for frame="square"); `width` x `height` is the
    frame. A photo-mode avatar carries its `square` variant, for round videos (variants.square_avatar).
    """

    key: str
    size: int
    rig: Rig
    width: int = 0
    height: int = 0
    frame: str = "square"
    backdrop: Backdrop | None = None
    square: WarpAvatar | None = None

    def __post_init__(self) -> None:
        if not self.width or not self.height:  # square by default
            object.__setattr__(self, "width", self.size)
            object.__setattr__(self, "height", self.size)


def landmark_cache_files(cache_dir: Path, image: bytes) -> list[Path]:
    """The cached landmark files of a photo, of every cache version."""
    digest = hashlib.sha256(image).hexdigest()
    return sorted(cache_dir.glob(f"landmarks-v*-{digest}.npy")) if cache_dir.is_dir() else []


def pick_device(device: str) -> torch.device:
    """ "auto" -> CUDA when a GPU is present, else the CPU; "cpu"/"cuda" as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class WarpRenderer:
    """Implements BatchRenderer (base.py). Thread-safe: prepared avatars are read-only once built."""

    name = "warp"

    def __init__(
        self,
        *,
        device: str = "auto",
        batch: int = 16,
        seed: int = 7,
        cache_dir: Path | None = None,
        threads: int = 0,
        max_cached: int = 8,
        frame: str = "square",
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        if frame not in FRAMES:
            raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
        self.frame = frame
        self.device = pick_device(device)
        self.batch = batch
        self.seed = seed
        self.cache_dir = cache_dir
        self.max_cached = max_cached
        if self.device.type == "cpu":
            torch.set_num_threads(threads if threads > 0 else max(1, os.cpu_count() or 1))
        self._avatars: OrderedDict[str, WarpAvatar] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(device=self.device.type, batchable=True, streaming=True, whole_utterance=False)

    def load(self) -> None:
        """Build the face detector now (about a second), not during someone's first photo."""
        shared_detector()

    def close(self) -> None:
        """Drop the prepared avatars; the face detector is shared by the process and stays."""
        with self._lock:
            self._avatars.clear()

    def forget(self, image: bytes) -> None:
        """Drop the photo's prepared avatars (every size and frame) and its cached landmarks."""
        prefix = hashlib.sha256(image).hexdigest()[:32] + "-"
        with self._lock:
            for key in [k for k in self._avatars if k.startswith(prefix)]:
                del self._avatars[key]
        if self.cache_dir is not None:
            for path in landmark_cache_files(self.cache_dir, image):
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ prepare

    def prepare(self, image: bytes, size: int, *, frame: str | None = None) -> WarpAvatar:
        """Analyse a photo once per size and frame kind (default: the renderer's `frame`).

        Raises UnreadableImage, NoFaceFound (or its FaceTurnedAway) or FaceTooSmall. A "photo"
        avatar is built together with its square variant, which round videos need.
        """
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"size must be in [{MIN_SIZE}, {MAX_SIZE}], got {size}")
        frame = frame or self.frame
        if frame not in FRAMES:
            raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
        digest = hashlib.sha256(image).hexdigest()
        square_key = f"{digest[:32]}-{size}"
        key = square_key if frame == "square" else f"{square_key}-{frame}"
        cached = self._cached(key)
        if cached is not None:
            return cached
        rgb, points = upright(*self._decode(digest, image))
        check_frontal(points)
        square = self._cached(square_key)
        with torch.no_grad():
            if square is None:
                square = self._store(
                    WarpAvatar(key=square_key, size=size, rig=build_rig(rgb, points, size, self.device))
                )
            if frame == "square":
                return square
            layout = photo_layout(rgb, points, size)
            rig = rig_from_crop(layout.crop, layout.points - [layout.left, layout.top], self.device)
        stage = backdrop(layout, rig.still, rig.roi)
        return self._store(
            WarpAvatar(
                key=key,
                size=max(stage.width, stage.height),
                rig=rig,
                width=stage.width,
                height=stage.height,
                frame=frame,
                backdrop=stage,
                square=square,
            )
        )

    def _cached(self, key: str) -> WarpAvatar | None:
        with self._lock:
            avatar = self._avatars.get(key)
            if avatar is not None:
                self._avatars.move_to_end(key)
            return avatar

    def _store(self, avatar: WarpAvatar) -> WarpAvatar:
        with self._lock:
            self._avatars[avatar.key] = avatar
            while len(self._avatars) > self.max_cached:
                self._avatars.popitem(last=False)
        return avatar

    def _decode(self, digest: str, image: bytes) -> tuple[np.ndarray, np.ndarray]:
        rgb = decode_image(image)
        return rgb, self._landmarks(digest, rgb)

    def _landmarks(self, digest: str, rgb: np.ndarray) -> np.ndarray:
        """FaceMesh landmarks of the decoded photo, from the disk cache when it has them."""
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"landmarks-v{LANDMARK_CACHE_VERSION}-{digest}.npy"
            try:
                points = np.load(path)
                if points.ndim == 2 and points.shape[1] == 2:
                    return points
            except (OSError, ValueError):
                pass
        points = shared_detector().detect(rgb).points
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy", delete=False) as f:
                    np.save(f, points)
                os.replace(f.name, path)  # atomic: a concurrent reader never sees half a file
            except OSError as e:
                log.warning("cannot cache landmarks in %s: %s", path.parent, e)
        return points

    # ------------------------------------------------------------------ controls
    def controls(self, speech: Speech, *, fps: int, start_time: float, n_frames: int) -> np.ndarray:
        """(n_frames, N_CONTROLS) per-frame controls: jaw, wide, blink, brow weights, head rotation,
        x/y shift, nod.

        Mouth and emphasis (brow, nod) follow the speech (speech-relative time; emphasis is 0 at both
        ends of the sentence); blinks and sway follow absolute clip time, so consecutive sentences
        join up.
        """
        local = np.arange(n_frames, dtype=np.float64) / fps
        absolute = start_time + local
        out = np.zeros((n_frames, N_CONTROLS), dtype=np.float32)
        if n_frames == 0:
            return out
        out[:, [JAW_COL, WIDE_COL]] = mouth_controls(speech, local)
        out[:, [NOD_COL, BROW_COL]] = emphasis_controls(speech, local)
        out[:, BLINK_COL] = blink_curve(absolute, self.seed)
        out[:, [ROT_COL, SHIFT_X_COL, SHIFT_Y_COL]] = head_sway(absolute, self.seed)
        return out

    def control_tensor(self, speech: Speech, *, fps: int, start_time: float, n_frames: int) -> torch.Tensor:
        """`controls` as a tensor, after checking the frame arguments."""
        if fps <= 0:
            raise ValueError("fps must be positive")
        if n_frames < 0:
            raise ValueError("n_frames must be >= 0")
        return torch.from_numpy(self.controls(speech, fps=fps, start_time=start_time, n_frames=n_frames))

    # ------------------------------------------------------------------ render
    def session(self, avatar: PreparedAvatar, *, fps: int) -> RenderSession:
        """Per sentence: each one's frames as soon as it is fed (blinks and sway follow clip time)."""
        return PerSentenceSession(self, avatar, fps=fps)

    def frame_inputs(
        self, avatar: PreparedAvatar, speech: Speech, *, fps: int, start_time: float, n_frames: int
    ) -> torch.Tensor:
        """The per-frame controls; the same for every photo."""
        return self.control_tensor(speech, fps=fps, start_time=start_time, n_frames=n_frames)

    def draw(self, avatar: PreparedAvatar, inputs: torch.Tensor) -> np.ndarray:
        """Frames for a batch of controls (of one reply, or several with the same avatar)."""
        assert isinstance(avatar, WarpAvatar), "warp draws only avatars it prepared"
        with torch.no_grad():
            return render_frames(avatar.rig, inputs.to(self.device), avatar.backdrop)

    def render(
        self, avatar: WarpAvatar, speech: Speech, *, fps: int, start_time: float, n_frames: int
    ) -> Iterator[np.ndarray]:
        """One sentence on its own: uint8 (batch, height, width, 3) frames, exactly n_frames in total."""
        return self.session(avatar, fps=fps).feed(speech, start_time=start_time, n_frames=n_frames)


def render_frames(rig: Rig, controls: torch.Tensor, stage: Backdrop | None = None) -> np.ndarray:
    """Frames (B, H, W, 3) uint8 for controls (B, N_CONTROLS): the crop, or `stage` with it pasted in."""
    b = controls.shape[0]
    size = rig.size
    weights = basis_weights(controls)
    nod = controls[:, NOD_COL]
    rot = controls[:, ROT_COL]
    shift = controls[:, [SHIFT_X_COL, SHIFT_Y_COL]] * size
    shift = shift + torch.stack([torch.zeros_like(nod), NOD_DROP * size * nod], 1)
    squash = (1 - NOD_SQUASH * nod)[:, None, None]
    cos, sin = torch.cos(rot)[:, None, None], torch.sin(rot)[:, None, None]

    # Backward map: undo the head motion (shift back, rotate by -rot and unsquash about the pivot),
    # then the face deformation; the head mask fades the head motion out towards the background.
    # With r the pixel relative to the pivot and t the shift, the head's backward offset is affine:
    #   x: (cos - 1) r_x + sin r_y - (cos t_x + sin t_y)
    #   y: -sin / q r_x + (cos / q - 1) r_y + (sin t_x - cos t_y) / q
    # so with the basis weights it weights Rig.fields, and one batched product gives the grid.
    c, s, q = cos[:, 0, 0], sin[:, 0, 0], squash[:, 0, 0]
    tx, ty = shift[:, 0], shift[:, 1]
    head = torch.stack(
        [c - 1, s, -(c * tx + s * ty), -s / q, c / q - 1, (s * tx - c * ty) / q, torch.ones_like(c)], 1
    )
    grid = torch.einsum("bk,khwc->bhwc", torch.cat([weights, head], 1), rig.fields)
    region = F.grid_sample(
        rig.image.expand(b, -1, -1, -1), grid, mode="bilinear", padding_mode="border", align_corners=True
    )

    # The inner lips, moved forward the same way (they sit where the head mask is 1).
    mouth = rig.mouth
    head = (rig, cos, sin, squash, shift)
    upper = mouth.upper + torch.einsum("bk,knc->bnc", weights, mouth.upper_moves)
    lower = mouth.lower + torch.einsum("bk,knc->bnc", weights, mouth.lower_moves)
    upper = _head_forward(upper, mouth.upper_follow, *head)
    lower = _head_forward(lower, mouth.lower_follow, *head)
    y0, y1, x0, x1 = rig.roi
    paint_mouth(region, (y0, x0), upper, lower, mouth, weights[:, ROUND])
    # The painted lid covers the whole rest-pose aperture: the spline leaves eye pixels visible
    # anywhere in there, not only between the warped lid lines.
    open_eyes = weights.clone()
    open_eyes[:, BLINK] = 0
    for eye in rig.eyes:
        upper = eye.upper + torch.einsum("bk,knc->bnc", open_eyes, eye.upper_moves)
        lower = eye.lower + torch.einsum("bk,knc->bnc", open_eyes, eye.lower_moves)
        upper = _head_forward(upper, eye.upper_follow, *head)
        lower = _head_forward(lower, eye.lower_follow, *head)
        paint_lids(region, (y0, x0), upper, lower, controls[:, BLINK_COL])

    pixels = (region.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    if stage is not None:
        return paste(pixels, stage, rig.roi)
    frames = np.repeat(rig.still[None], b, axis=0)
    frames[:, y0:y1, x0:x1] = pixels
    return frames


def basis_weights(controls: torch.Tensor) -> torch.Tensor:
    """(B, N_BASIS) basis-field weights from controls (B, N_CONTROLS): the signed lip-shape control
    drives the spread field when positive and the rounding field when negative."""
    shape = controls[:, WIDE_COL]
    rounding = (-shape).clamp(min=0)
    weights = torch.cat([controls[:, :4], rounding[:, None]], 1)
    weights[:, WIDE] = shape.clamp(min=0)
    weights[:, JAW] = controls[:, JAW_COL] * (1 - ROUND_JAW * rounding)
    return weights


def _head_forward(
    points: torch.Tensor,
    follow: torch.Tensor,
    rig: Rig,
    cos: torch.Tensor,
    sin: torch.Tensor,
    squash: torch.Tensor,
    shift: torch.Tensor,
) -> torch.Tensor:
    """Forward head motion of points (B, N, 2): the inverse of the backward map above, for points
    that follow it by `follow` (N,) (the head mask there: 1 except near a crop edge)."""
    rel = points - rig.pivot
    c, s, q = cos[:, :, 0], sin[:, :, 0], squash[:, :, 0]  # (B, 1)
    ry = q * rel[..., 1]
    x = c * rel[..., 0] - s * ry + shift[:, :1]
    y = s * rel[..., 0] + c * ry + shift[:, 1:]
    moved = torch.stack([x, y], -1) + rig.pivot
    return points + (moved - points) * follow[None, :, None]
