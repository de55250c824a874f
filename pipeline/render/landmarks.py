"""Decoding a user's photo and finding the face in it with mediapipe FaceMesh.

FaceMesh ships inside the mediapipe 0.10.21 wheel, so nothing is downloaded at run time. Its face
detector looks at a 128 px copy of the whole picture and misses faces smaller than about a tenth of
the frame; when the whole-picture pass finds nothing we search overlapping tiles, so that a small
face is reported as FaceTooSmall (which the user can fix) rather than NoFaceFound.

Photos on their side (rotated 90° with no EXIF orientation, as some apps send them) are turned
upright from the landmarks' eye line, with a warning; faces turned far away from the camera, which
a 2-D warp cannot animate convincingly, raise FaceTurnedAway (moderately turned ones: a warning).
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import FaceTooSmall, NoFaceFound, UnreadableImage
from pipeline.native import native_stderr_silenced
from pipeline.render.topology import (
    CHEEK_EDGES,
    FACE_OVAL,
    LEFT_EYE_OUTER,
    N_LANDMARKS,
    NOSE_TIP,
    RIGHT_EYE_OUTER,
)

log = logging.getLogger(__name__)

MAX_IMAGE_SIDE = 2048  # larger photos are downscaled first: more pixels add nothing at 640 px output
MIN_FACE_PX = 64  # faces narrower than this (in the working image) give a blurry, unusable avatar
MAX_FACES = 6  # we look for several faces so that we can keep the largest one (group photos)
TILE = 384  # tiled search for small faces: tile side ...
TILE_STRIDE = 256  # ... and step (the overlap keeps any face up to 128 px whole in some tile)
SIDEWAYS_DEG = 45.0  # an eye line tilted more than this: the photo is on its side (or upside down)
# Head turn (yaw) from where the nose tip sits between the cheek edges: 0 frontal .. 1 full profile.
TURN_WARN = 0.3  # animates, but the warp will look flat: say so
TURN_REFUSE = 0.6  # too far turned to animate: FaceTurnedAway


class FaceTurnedAway(NoFaceFound):
    """The face is seen too far from the side: a typed NoFaceFound with its own message."""

    code: ClassVar[str] = "face_turned_away"
    messages: ClassVar[dict[str, str]] = {
        "en": "The face in that photo is turned away. Please send a portrait looking into the camera.",
        "zh": "照片中的人脸侧得太厉害，请发送一张正对镜头的肖像照。",
    }


def _register_heif() -> None:
    """iPhones send HEIC; pillow-heif's wheel carries libheif, so PIL can open it once registered."""
    try:
        import pillow_heif
    except ImportError:  # optional: without it HEIC photos are refused as unreadable
        return
    pillow_heif.register_heif_opener()


_register_heif()


def decode_image(data: bytes) -> np.ndarray:
    """Decode photo bytes (JPEG, PNG, WebP, HEIC, ...) to an upright RGB uint8 array, <= MAX_IMAGE_SIDE.

    Raises UnreadableImage for anything PIL cannot decode (not an image, truncated, zero-sized).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
        img = ImageOps.exif_transpose(img)
        if img.width < 1 or img.height < 1:
            raise UnreadableImage("empty image")
        if img.mode != "RGB":
            # Transparent PNGs/WebPs: put them on white so transparent areas do not turn black.
            if "A" in img.getbands() or img.mode == "P":
                rgba = img.convert("RGBA")
                img = Image.new("RGB", rgba.size, (255, 255, 255))
                img.paste(rgba, mask=rgba.getchannel("A"))
            else:
                img = img.convert("RGB")
        longest = max(img.size)
        if longest > MAX_IMAGE_SIDE:
            f = MAX_IMAGE_SIDE / longest
            img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.LANCZOS)
    except UnreadableImage:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"cannot decode image: {e}") from e
    return np.asarray(img, dtype=np.uint8).copy()


@dataclass(frozen=True)
class Face:
    """One detected face: 478 landmarks in pixel coordinates (x, y) of the image it was found in."""

    points: np.ndarray  # (478, 2) float32

    @property
    def width(self) -> float:
        """Width of the face oval in pixels (the size measure for FaceTooSmall)."""
        oval = self.points[list(FACE_OVAL)]
        return float(oval[:, 0].max() - oval[:, 0].min())


class FaceMeshDetector:
    """A FaceMesh graph created once and shared: building one costs far more than running it.

    mediapipe graphs are not safe to call from several threads at once, hence the lock.
    """

    def __init__(self) -> None:
        import mediapipe as mp  # slow import: only when a face is first needed

        # The graph logs harmless set-up chatter from C++ (no setting turns it off) while it is built
        # and the first time it finds a face: do both now, once, silenced, so it never buries output.
        face = Image.open(WARM_UP_FACE).convert("RGB").resize((256, 256))
        with native_stderr_silenced():
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=MAX_FACES, refine_landmarks=True
            )
            self._mesh.process(np.asarray(face))
        self._lock = threading.Lock()

    def _faces(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        with self._lock:
            result = self._mesh.process(np.ascontiguousarray(rgb))
        faces = []
        for mesh in result.multi_face_landmarks or ():
            pts = np.array([(p.x * w, p.y * h) for p in mesh.landmark], dtype=np.float32)
            if pts.shape == (N_LANDMARKS, 2):
                faces.append(Face(pts))
        return faces

    def _faces_in_tiles(self, rgb: np.ndarray) -> list[Face]:
        """Search overlapping tiles; FaceMesh finds faces there that it misses in the whole picture."""
        h, w = rgb.shape[:2]
        ys = _tile_starts(h)
        xs = _tile_starts(w)
        for y in ys:
            for x in xs:
                tile = rgb[y : y + TILE, x : x + TILE]
                found = self._faces(tile)
                if found:
                    offset = np.array([x, y], dtype=np.float32)
                    return [Face(f.points + offset) for f in found]
        return []

    def detect(self, rgb: np.ndarray) -> Face:
        """The largest face in `rgb`. Raises NoFaceFound or FaceTooSmall."""
        faces = self._faces(rgb)
        if not faces and max(rgb.shape[:2]) > TILE:
            faces = self._faces_in_tiles(rgb)
        if not faces:
            raise NoFaceFound("no face in the image")
        # The widest face; equal widths (to a pixel) go to the leftmost, then the topmost: the choice
        # never depends on the order the detector lists them in.
        faces.sort(key=lambda f: (-round(f.width), *np.round(f.points[list(FACE_OVAL)].mean(0))))
        if len(faces) > 1:
            x, y = faces[0].points[list(FACE_OVAL)].mean(0)
            log.warning(
                "found %d faces, using the largest (%.0f px wide, centred at x=%.0f y=%.0f; next %.0f px)",
                len(faces),
                faces[0].width,
                x,
                y,
                faces[1].width,
            )
        face = faces[0]
        turns = quarter_turns(face.points)
        if turns:
            log.warning(
                "the face lies on its side (eye line at %.0f°): turning the photo upright", roll(face.points)
            )
            h, w = rgb.shape[:2]
            upright_faces = self._faces(np.ascontiguousarray(np.rot90(rgb, turns)))
            if upright_faces:
                best = max(upright_faces, key=lambda f: f.width)
                face = Face(turn_points(best.points, -turns, (w, h) if turns % 2 else (h, w)))
        if face.width < MIN_FACE_PX:
            raise FaceTooSmall(f"face is {face.width:.0f} px wide, need {MIN_FACE_PX}")
        return face


def roll(points: np.ndarray) -> float:
    """Angle of the eye line (outer corner to outer corner, viewer's left to right) in degrees."""
    d = points[LEFT_EYE_OUTER] - points[RIGHT_EYE_OUTER]
    return float(np.degrees(np.arctan2(d[1], d[0])))


def quarter_turns(points: np.ndarray) -> int:
    """How many counter-clockwise quarter turns (np.rot90's k) bring the face upright: 0 when it is."""
    angle = roll(points)
    return 0 if abs(angle) <= SIDEWAYS_DEG else round(angle / 90) % 4


def turn_points(points: np.ndarray, k: int, shape: tuple[int, int]) -> np.ndarray:
    """Landmarks of an (h, w) image, moved into np.rot90(image, k)."""
    h, w = shape
    p = np.asarray(points, dtype=np.float64).copy()
    for _ in range(k % 4):  # one counter-clockwise quarter turn: (x, y) -> (y, w - x)
        p = np.stack([p[:, 1], w - p[:, 0]], 1)
        h, w = w, h
    return p.astype(np.float32)


def upright(rgb: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The photo and its landmarks turned so that the face is upright (unchanged when it is)."""
    k = quarter_turns(points)
    if not k:
        return rgb, points
    return np.ascontiguousarray(np.rot90(rgb, k)), turn_points(points, k, rgb.shape[:2])


def head_turn(points: np.ndarray) -> float:
    """0 for a frontal face .. 1 for a full profile: how far the nose tip is off the cheeks' middle."""
    a, b = points[CHEEK_EDGES[0]], points[CHEEK_EDGES[1]]
    axis = b - a
    t = float(np.dot(points[NOSE_TIP] - a, axis) / max(float(np.dot(axis, axis)), 1e-6))
    return min(1.0, abs(t - 0.5) * 2)


def check_frontal(points: np.ndarray) -> None:
    """Raise FaceTurnedAway for a face seen from the side; warn when it is noticeably turned."""
    turn = head_turn(points)
    if turn >= TURN_REFUSE:
        raise FaceTurnedAway(f"the face is turned away from the camera (turn {turn:.2f})")
    if turn >= TURN_WARN:
        log.warning("the face is turned from the camera (turn %.2f): the animation will look flat", turn)


def _tile_starts(length: int) -> list[int]:
    """Tile origins along one axis: every TILE_STRIDE, plus one flush with the far edge."""
    if length <= TILE:
        return [0]
    starts = list(range(0, length - TILE, TILE_STRIDE))
    starts.append(length - TILE)
    return starts


WARM_UP_FACE = Path(__file__).resolve().parents[2] / "assets" / "avatar.jpg"
_detector: FaceMeshDetector | None = None
_detector_lock = threading.Lock()


def shared_detector() -> FaceMeshDetector:
    """The process-wide detector, built on first use."""
    global _detector
    with _detector_lock:
        if _detector is None:
            _detector = FaceMeshDetector()
        return _detector
