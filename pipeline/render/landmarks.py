"""Decoding a user's photo and finding the face in it with mediapipe FaceMesh.

FaceMesh ships inside the mediapipe 0.10.21 wheel, so nothing is downloaded at run time. Its face
detector looks at a 128 px copy of the whole picture and misses faces smaller than about a tenth of
the frame; when the whole-picture pass finds nothing we search overlapping tiles, so that a small
face is reported as FaceTooSmall (which the user can fix) rather than NoFaceFound.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import FaceTooSmall, NoFaceFound, UnreadableImage
from pipeline.render.topology import FACE_OVAL, N_LANDMARKS

log = logging.getLogger(__name__)

MAX_IMAGE_SIDE = 2048  # larger photos are downscaled first: more pixels add nothing at 640 px output
MIN_FACE_PX = 64  # faces narrower than this (in the working image) give a blurry, unusable avatar
MAX_FACES = 4  # we look for several faces so that we can keep the largest one
TILE = 384  # tiled search for small faces: tile side ...
TILE_STRIDE = 256  # ... and step (the overlap keeps any face up to 128 px whole in some tile)


def decode_image(data: bytes) -> np.ndarray:
    """Decode photo bytes to an RGB uint8 array, upright (EXIF orientation applied), <= MAX_IMAGE_SIDE.

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
        # mediapipe's C++ side logs TFLite set-up chatter to stderr unless told otherwise
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import mediapipe as mp  # slow import: only when a face is first needed

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=MAX_FACES, refine_landmarks=True
        )
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
        faces.sort(key=lambda f: f.width, reverse=True)
        if len(faces) > 1:
            log.info("found %d faces, using the largest (%.0f px wide)", len(faces), faces[0].width)
        face = faces[0]
        if face.width < MIN_FACE_PX:
            raise FaceTooSmall(f"face is {face.width:.0f} px wide, need {MIN_FACE_PX}")
        return face


def _tile_starts(length: int) -> list[int]:
    """Tile origins along one axis: every TILE_STRIDE, plus one flush with the far edge."""
    if length <= TILE:
        return [0]
    starts = list(range(0, length - TILE, TILE_STRIDE))
    starts.append(length - TILE)
    return starts


_detector: FaceMeshDetector | None = None
_detector_lock = threading.Lock()


def shared_detector() -> FaceMeshDetector:
    """The process-wide detector, built on first use."""
    global _detector
    with _detector_lock:
        if _detector is None:
            _detector = FaceMeshDetector()
        return _detector
