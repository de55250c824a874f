"""The SadTalker renderer: the authors' released nets animate the whole head from the answer's audio.

Per photo (`prepare`), as the authors' "crop" preprocessing does, with our FaceMesh landmarks in place
of their RetinaFace + FAN (so those two extra files are not needed): an FFHQ-style box from the eyes
and mouth (eye-to-eye x 2.0 against eye-to-mouth x 1.8, centred a tenth of the way from the eyes to
the mouth), resized to 256 x 256; five points (eye centres, nose tip, mouth corners) fitted to the
standard 3-D landmarks (`similarity_Lm3D_all.mat`) for scale and shift, the face scaled to 102 / s
and cut to 224 px, and `face_3drecon` gives its 3DMM coefficients (expression 64, angles 3,
translation 3, plus the alignment's s, tx, ty). The canonical keypoints and the generator's source
volume depend on the photo only, so they are computed here once.

Per answer (whole utterance: frames come out of `finish`): the answer's audio at 16 kHz, the mel
window of every 25 fps model frame; expression per frame (`audio2exp`, with random blinks) and head
pose per 32-frame window (`audio2pose`, pose style and a seeded z), the pose smoothed (Savitzky-Golay,
order 2, window 13); for every output frame, the 27-frame coefficient window around it goes through
the mapping net to driving keypoints, and the generator draws the 256 px face, `batch` frames per
call. "crop": the face is the frame (resized to render.size). "full": the photo is the frame (longer
side = render.size) with the face pasted back under a feathered mask; it uses mapping_00109 (73
coefficients: the alignment's as well), and `still` keeps the photo's head pose, as the authors
recommend for full.

On the CPU it costs seconds per frame (see README): answers longer than `max_cpu_seconds` are refused
with a clear message rather than leaving the user waiting for minutes.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.errors import TalkTwinError
from pipeline.media.audio_input import resample
from pipeline.render import sadtalker_audio as audio_front
from pipeline.render.base import Capabilities, PreparedAvatar, RenderSession
from pipeline.render.framing import even
from pipeline.render.sadtalker_nets import (
    SEMANTIC_RADIUS,
    MappingNet,
    SadTalkerNets,
    load_lm3d,
    load_mapping,
    load_sadtalker,
    mapping_file,
    transform_keypoints,
)
from pipeline.render.warp import pick_device
from pipeline.types import Speech

FACE = 256  # the generator's frame size
RECON = 224  # face_3drecon's input size
RECON_SCALE = 102.0  # the aligned face's scale, as in the authors' fitting
LEFT_IRIS, RIGHT_IRIS, NOSE_TIP, MOUTH_LEFT, MOUTH_RIGHT = 468, 473, 1, 61, 291
FEATHER = 0.08  # "full": width of the paste mask's soft edge / box side
SECONDS_PER_FRAME_CPU = 8.0  # measured on 2 cores at 256 px (bench/render_fps.py), for the refusal
SAFETENSORS = "SadTalker_V0.0.2_{size}.safetensors"
LM3D = "similarity_Lm3D_all.mat"


class AnswerTooLongForCPU(TalkTwinError):
    """SadTalker on the CPU: the answer would take too long to draw."""

    code: ClassVar[str] = "render_too_slow"
    messages: ClassVar[dict[str, str]] = {
        "en": "That answer is {seconds:.1f} s long; drawing it with SadTalker on this computer's CPU would "
        "take about {minutes:.0f} minutes, so it is limited to {limit:.0f} s. Please ask for a shorter "
        "answer, or have the operator use a GPU or another renderer.",
        "zh": "这个回答长 {seconds:.1f} 秒；在这台电脑的 CPU 上用 SadTalker 生成约需 {minutes:.0f} 分钟，"
        "因此上限为 {limit:.0f} 秒。请要求更短的回答，或请管理员改用 GPU 或其他渲染器。",
    }


@dataclass(frozen=True)
class SadTalkerAvatar:
    """A prepared photo: the network's inputs derived from it, and how frames are framed."""

    key: str
    size: int
    width: int
    height: int
    source: torch.Tensor  # (1, 3, 256, 256) RGB in [0, 1] on the device
    volume: torch.Tensor  # (1, 32, 16, 64, 64) the generator's source features
    kp_canonical: torch.Tensor  # (1, 15, 3)
    kp_source: torch.Tensor  # (1, 15, 3)
    coeffs: np.ndarray  # (73,) exp 64 | angles 3 | trans 3 | s, tx, ty
    picture: np.ndarray | None = None  # "full": the photo at output size
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # "full": y0, y1, x0, x1 of the face in `picture`
    mask: np.ndarray | None = None  # "full": (h, w, 1) feathered paste mask over the box
    square: SadTalkerAvatar | None = None  # "full": the face-crop variant (round videos)


class SadTalkerRenderer:
    """Implements AvatarRenderer (base.py), whole-utterance. Thread-safe: avatars are read-only."""

    name = "sadtalker"

    def __init__(
        self,
        checkpoint_dir: Path,
        *,
        size: int = 256,
        preprocess: str = "crop",
        still: bool = False,
        pose_style: int = 0,
        expression_scale: float = 1.0,
        batch: int = 2,
        max_cpu_seconds: float = 10.0,
        seed: int = 0,
        device: str = "auto",
        threads: int = 0,
        max_cached: int = 4,
    ) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.model_size = size
        self.preprocess = preprocess
        self.still = still
        self.pose_style = pose_style
        self.expression_scale = expression_scale
        self.batch = batch
        self.max_cpu_seconds = max_cpu_seconds
        self.seed = seed
        self.device = pick_device(device)
        if threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.max_cached = max_cached
        self.nets: SadTalkerNets | None = None
        self.mapping: MappingNet | None = None
        self.lm3d: np.ndarray | None = None
        self._avatars: OrderedDict[str, SadTalkerAvatar] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ files and lifecycle
    def files(self) -> dict[str, Path]:
        mapping, _ = mapping_file(self.preprocess)
        d = self.checkpoint_dir
        return {
            "nets": d / SAFETENSORS.format(size=self.model_size),
            "mapping": d / mapping,
            "lm3d": d / LM3D,
        }

    @property
    def coeff_count(self) -> int:
        return mapping_file(self.preprocess)[1]

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(device=self.device.type, batchable=False, streaming=False, whole_utterance=True)

    def load(self) -> None:
        """The three files, strictly (CheckpointError naming the file for a bad one)."""
        if self.nets is not None:
            return
        files = self.files()
        lm3d = load_lm3d(files["lm3d"])
        mapping = load_mapping(files["mapping"], self.coeff_count, self.device)
        nets = load_sadtalker(files["nets"], self.device)
        for module in nets.modules():  # bake the spectral norms: fixed weights, no per-call hook
            if hasattr(module, "weight_orig"):
                torch.nn.utils.remove_spectral_norm(module)
        self.lm3d, self.mapping, self.nets = lm3d, mapping, nets

    def close(self) -> None:
        self.nets = self.mapping = None
        with self._lock:
            self._avatars.clear()

    def forget(self, image: bytes) -> None:
        prefix = hashlib.sha256(image).hexdigest()[:32] + "-"
        with self._lock:
            for key in [k for k in self._avatars if k.startswith(prefix)]:
                del self._avatars[key]

    # ------------------------------------------------------------------ prepare
    def prepare(self, image: bytes, size: int) -> SadTalkerAvatar:
        """Raises UnreadableImage, NoFaceFound or FaceTooSmall for photos without a usable face."""
        key = f"{hashlib.sha256(image).hexdigest()[:32]}-{size}-sadtalker-{self.preprocess}"
        with self._lock:
            cached = self._avatars.get(key)
            if cached is not None:
                self._avatars.move_to_end(key)
                return cached
        self.load()
        avatar = self._prepare(key, image, size)
        with self._lock:
            self._avatars[key] = avatar
            while len(self._avatars) > self.max_cached:
                self._avatars.popitem(last=False)
        return avatar

    def _prepare(self, key: str, image: bytes, size: int) -> SadTalkerAvatar:
        from pipeline.render.landmarks import decode_image, shared_detector, upright

        assert self.nets is not None and self.mapping is not None and self.lm3d is not None
        rgb = decode_image(image)
        face = shared_detector().detect(rgb)
        rgb, points = upright(rgb, face.points)
        box = face_box(points, rgb.shape[0], rgb.shape[1])
        x0, y0, x1, y1 = box
        crop = np.array(Image.fromarray(rgb[y0:y1, x0:x1]).resize((FACE, FACE), Image.BILINEAR))
        five = five_points(points) - [x0, y0]
        five *= [FACE / (x1 - x0), FACE / (y1 - y0)]
        aligned, s, t = align_face(crop, five, self.lm3d)
        with torch.no_grad():
            recon = torch.from_numpy(aligned).permute(2, 0, 1)[None].float().div(255).to(self.device)
            c = self.nets.face_3drecon(recon)[0].cpu().numpy().astype(np.float64)
            coeffs = np.concatenate([c[80:144], c[224:227], c[254:257], [s, t[0], t[1]]]).astype(np.float32)
            source = torch.from_numpy(crop).permute(2, 0, 1)[None].float().div(255).to(self.device)
            kp_canonical = self.nets.kp_extractor(source)
            volume = self.nets.generator.source_volume(source)
            window = torch.from_numpy(coeffs[: self.coeff_count]).to(self.device)[None, :, None]
            kp_source = transform_keypoints(
                kp_canonical, self.mapping(window.expand(-1, -1, 2 * SEMANTIC_RADIUS + 1))
            )
        square = SadTalkerAvatar(
            key=key if self.preprocess == "crop" else key + "-square",
            size=size,
            width=size,
            height=size,
            source=source,
            volume=volume,
            kp_canonical=kp_canonical,
            kp_source=kp_source,
            coeffs=coeffs,
        )
        if self.preprocess == "crop":
            return square
        h, w = rgb.shape[:2]
        f = size / max(h, w)
        width, height = even(w * f), even(h * f)
        picture = np.asarray(Image.fromarray(rgb).resize((width, height), Image.LANCZOS), dtype=np.uint8)
        fx, fy = width / w, height / h
        px0, py0 = round(x0 * fx), round(y0 * fy)
        px1, py1 = max(px0 + 2, round(x1 * fx)), max(py0 + 2, round(y1 * fy))
        return SadTalkerAvatar(
            key=key,
            size=size,
            width=width,
            height=height,
            source=source,
            volume=volume,
            kp_canonical=kp_canonical,
            kp_source=kp_source,
            coeffs=coeffs,
            picture=picture.copy(),
            box=(py0, py1, px0, px1),
            mask=paste_mask(py1 - py0, px1 - px0),
            square=square,
        )

    # ------------------------------------------------------------------ render
    def session(self, avatar: PreparedAvatar, *, fps: int) -> RenderSession:
        assert isinstance(avatar, SadTalkerAvatar), "sadtalker draws only avatars it prepared"
        return SadTalkerSession(self, avatar, fps=fps)

    def coefficients(self, avatar: SadTalkerAvatar, samples: np.ndarray) -> np.ndarray:
        """(T, 70 | 73) coefficients of 25 fps model frames for 16 kHz `samples`."""
        assert self.nets is not None
        n = max(1, len(samples) // audio_front.SAMPLES_PER_FRAME)
        samples = np.pad(samples, (0, max(0, n * audio_front.SAMPLES_PER_FRAME - len(samples))))
        samples = samples[: n * audio_front.SAMPLES_PER_FRAME]
        mels = torch.from_numpy(audio_front.mel_windows(audio_front.mel_spectrogram(samples), n)).to(
            self.device
        )
        rng = np.random.default_rng(self.seed)
        blink = torch.from_numpy(audio_front.blinks(n, rng)).to(self.device)
        ref = torch.from_numpy(avatar.coeffs[:70]).to(self.device)
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            exp = torch.cat(
                [
                    self.nets.audio2exp(
                        mels[i : i + 64], ref[:64].expand(len(mels[i : i + 64]), -1), blink[i : i + 64]
                    )
                    for i in range(0, n, 64)
                ]
            )
            pose = self.nets.audio2pose(mels[None], ref[None, 64:70], self.pose_style, gen)[0]
        pose_np = smooth_pose(pose.cpu().numpy())
        out = np.concatenate([exp.cpu().numpy() * self.expression_scale, pose_np], 1).astype(np.float32)
        if self.coeff_count == 73:
            out = np.concatenate([out, np.repeat(avatar.coeffs[None, 70:73], n, 0)], 1)
        if self.still:
            out[:, 64:] = avatar.coeffs[None, 64 : self.coeff_count]
        return out

    def draw(self, avatar: SadTalkerAvatar, windows: torch.Tensor) -> np.ndarray:
        """Frames (uint8, (B, height, width, 3)) for coefficient windows (B, C, 27)."""
        assert self.nets is not None and self.mapping is not None
        b = len(windows)
        with torch.no_grad():
            kp_driving = transform_keypoints(
                avatar.kp_canonical.expand(b, -1, -1), self.mapping(windows.to(self.device))
            )
            faces = self.nets.generator(
                avatar.volume.expand(b, -1, -1, -1, -1), kp_driving, avatar.kp_source.expand(b, -1, -1)
            )
            if avatar.picture is None:
                out = F.interpolate(
                    faces, (avatar.height, avatar.width), mode="bilinear", align_corners=False
                )
                return (out.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            y0, y1, x0, x1 = avatar.box
            face = F.interpolate(faces, (y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
            face = face.permute(0, 2, 3, 1).cpu().numpy() * 255
        assert avatar.mask is not None
        frames = np.repeat(avatar.picture[None], b, 0)
        region = frames[:, y0:y1, x0:x1].astype(np.float32)
        frames[:, y0:y1, x0:x1] = np.clip(
            avatar.mask * face + (1 - avatar.mask) * region + 0.5, 0, 255
        ).astype(np.uint8)
        return frames


class SadTalkerSession:
    """Collects the answer's speech in `feed`; draws every frame in `finish` (pose needs all of it)."""

    def __init__(self, renderer: SadTalkerRenderer, avatar: SadTalkerAvatar, *, fps: int) -> None:
        self.renderer, self.avatar, self.fps = renderer, avatar, fps
        self.pieces: list[tuple[np.ndarray, float]] = []
        self.n_frames = 0

    def feed(self, speech: Speech, *, start_time: float, n_frames: int) -> Iterator[np.ndarray]:
        self.n_frames += n_frames
        r = self.renderer
        seconds = self.n_frames / self.fps
        if r.capabilities.device == "cpu" and seconds > r.max_cpu_seconds:
            frames = seconds * self.fps
            raise AnswerTooLongForCPU(
                f"sadtalker on the CPU: {seconds:.1f} s answer above max_cpu_seconds = {r.max_cpu_seconds}",
                seconds=seconds,
                limit=r.max_cpu_seconds,
                minutes=max(1.0, frames * SECONDS_PER_FRAME_CPU / 60),
            )
        samples = resample(speech.audio, audio_front.SAMPLE_RATE).samples.astype(np.float32)
        self.pieces.append((samples, start_time))
        return iter(())

    def finish(self) -> Iterator[np.ndarray]:
        if not self.n_frames:
            return
        sr = audio_front.SAMPLE_RATE
        total = np.zeros(int(np.ceil(self.n_frames / self.fps * sr)), np.float32)
        for samples, start in self.pieces:
            i = min(len(total), round(start * sr))
            piece = samples[: len(total) - i]
            total[i : i + len(piece)] = piece
        r = self.renderer
        coeffs = torch.from_numpy(r.coefficients(self.avatar, total))
        n_model = len(coeffs)
        # output frame j shows model frame round(j * 25 / fps): SadTalker's coefficients are at 25 fps
        model_frames = np.minimum(
            np.rint(np.arange(self.n_frames) * audio_front.MODEL_FPS / self.fps), n_model - 1
        )
        offsets = np.arange(-SEMANTIC_RADIUS, SEMANTIC_RADIUS + 1)
        for i in range(0, self.n_frames, r.batch):
            centres = model_frames[i : i + r.batch].astype(int)
            idx = np.clip(centres[:, None] + offsets[None], 0, n_model - 1)
            windows = coeffs[torch.from_numpy(idx)].permute(0, 2, 1).contiguous()  # (B, C, 27)
            yield r.draw(self.avatar, windows)


# ---------------------------------------------------------------------------- geometry
def five_points(points: np.ndarray) -> np.ndarray:
    """(5, 2) from FaceMesh landmarks: the eye on the image's left, the other eye, the nose tip, the
    mouth corner on the left, the other corner (the order of the authors' 68-point reduction)."""
    eyes = sorted([points[LEFT_IRIS], points[RIGHT_IRIS]], key=lambda p: p[0])
    mouth = sorted([points[MOUTH_LEFT], points[MOUTH_RIGHT]], key=lambda p: p[0])
    return np.stack([eyes[0], eyes[1], points[NOSE_TIP], mouth[0], mouth[1]]).astype(np.float64)


def face_box(points: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the axis-aligned box around the authors' FFHQ-style quad, within the photo."""
    le, re, _, ml, mr = five_points(points)
    eye_avg, mouth_avg = (le + re) / 2, (ml + mr) / 2
    eye_to_eye, eye_to_mouth = re - le, mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= max(np.hypot(*x), 1e-6)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    x0, y0 = np.maximum(np.floor(quad.min(0)), 0).astype(int)
    x1, y1 = np.ceil(quad.max(0)).astype(int)
    x1, y1 = min(int(x1), width), min(int(y1), height)
    return int(x0), int(y0), max(int(x0) + 2, x1), max(int(y0) + 2, y1)


def align_face(crop: np.ndarray, five: np.ndarray, lm3d: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """The 224 px face face_3drecon expects, and the alignment's scale and shift.

    The five points (y flipped, image rows counted from the bottom) are fitted to the standard 3-D
    landmarks by least squares (an affine camera: scale from the two rows' norms, shift); the crop is
    scaled by 102 / s (bicubic) and cut to 224 x 224 around the fitted centre (black outside)."""
    h, w = crop.shape[:2]
    pts = five.copy()
    pts[:, 1] = h - 1 - pts[:, 1]
    n = len(pts)
    a = np.zeros((2 * n, 8))
    a[0::2, 0:3], a[0::2, 3] = lm3d, 1
    a[1::2, 4:7], a[1::2, 7] = lm3d, 1
    k = np.linalg.lstsq(a, pts.reshape(-1), rcond=None)[0]
    s = (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2
    t = np.array([k[3], k[7]])
    s = RECON_SCALE / max(s, 1e-8)
    nw, nh = max(1, int(w * s)), max(1, int(h * s))
    left = int(nw / 2 - RECON / 2 + (t[0] - w / 2) * s)
    up = int(nh / 2 - RECON / 2 + (h / 2 - t[1]) * s)
    img = Image.fromarray(crop).resize((nw, nh), Image.BICUBIC).crop((left, up, left + RECON, up + RECON))
    return np.array(img, dtype=np.uint8), float(s), t


def smooth_pose(pose: np.ndarray) -> np.ndarray:
    """Savitzky-Golay along time, order 2, window 13 (the largest odd window when shorter)."""
    from scipy.signal import savgol_filter

    n = len(pose)
    window = 13 if n >= 13 else int((n - 1) / 2) * 2 + 1
    if window <= 2:
        return pose
    return savgol_filter(pose, window, 2, axis=0)


def paste_mask(height: int, width: int) -> np.ndarray:
    """(h, w, 1): 1 inside, fading to 0 over FEATHER at every edge of the box."""
    ys = (np.arange(height) + 0.5) / height
    xs = (np.arange(width) + 0.5) / width
    vertical = np.clip(np.minimum(ys, 1 - ys) / FEATHER, 0, 1)
    horizontal = np.clip(np.minimum(xs, 1 - xs) / FEATHER, 0, 1)
    return (vertical[:, None] * horizontal[None, :])[..., None].astype(np.float32)
