"""The "warp" backend: the weight-free landmark-warping renderer (pipeline/render/warp.py).

Runs anywhere, on the CPU or CUDA, with no model files beyond the FaceMesh model in mediapipe's wheel.
Its only setting of its own is the seed of its idle motion; the generic [render] keys (device, size,
batch, threads, frame) apply as they do to every backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.config import BackendSettings
from pipeline.render.registry import Backend, avatar_cache_dir, register

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.render.base import AvatarRenderer


class WarpSettings(BackendSettings):
    """[render.warp]"""

    seed: int  # blinks and idle head motion: same input + seed = same video


def _build(settings: Settings) -> AvatarRenderer:
    from pipeline.render.warp import WarpRenderer

    cfg = settings.render
    own = cfg.backend_settings("warp")
    assert isinstance(own, WarpSettings)
    return WarpRenderer(
        device=cfg.device,
        batch=cfg.batch,
        seed=own.seed,
        cache_dir=avatar_cache_dir(settings),
        threads=cfg.threads,
        frame=cfg.frame,
    )


def _forget_cached(settings: Settings, image: bytes) -> None:
    from pipeline.render.warp import landmark_cache_files

    for path in landmark_cache_files(avatar_cache_dir(settings), image):
        path.unlink(missing_ok=True)


register(
    Backend(
        "warp",
        build=_build,
        settings=WarpSettings,
        forget_cached=_forget_cached,
        summary="weight-free landmark warping of the photo itself; CPU or CUDA",
    )
)
