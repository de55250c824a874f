"""Building the configured renderer from settings: the registered backend, loaded, maybe shared."""

from __future__ import annotations

from typing import cast

from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.render.base import AvatarRenderer, BatchRenderer
from pipeline.render.registry import avatar_cache_dir, get_backend, track
from pipeline.render.shared_batches import SharedBatchRenderer

__all__ = ["avatar_cache_dir", "build_renderer", "renders_on_gpu"]


def build_renderer(settings: Settings) -> AvatarRenderer:
    """The backend named by render.backend, built from [render] and [render.<backend>], then loaded
    (a missing or wrong model file fails here, at start). Batchable backends draw concurrent replies'
    frames in shared batches on CUDA, or always with share_batches = "on"."""
    cfg = settings.render
    renderer = get_backend(cfg.backend).build(settings)
    renderer.load()
    caps = renderer.capabilities
    if cfg.share_batches == "on" and not caps.batchable:
        renderer.close()
        raise ConfigError(
            f"render.share_batches: the {cfg.backend} renderer cannot share batches; use auto or off"
        )
    share = cfg.share_batches == "on" or (cfg.share_batches == "auto" and caps.batchable and caps.gpu)
    if share:  # a batchable backend implements BatchRenderer (declared by its capabilities)
        renderer = SharedBatchRenderer(cast(BatchRenderer, renderer), max_batch=4 * cfg.batch)
    track(renderer)
    return renderer


def renders_on_gpu(renderer: AvatarRenderer) -> bool:
    return renderer.capabilities.gpu
