"""Building the configured renderer from settings."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Settings
from pipeline.render.base import AvatarRenderer
from pipeline.render.shared_batches import SharedBatchRenderer
from pipeline.render.warp import WarpRenderer


def avatar_cache_dir(settings: Settings) -> Path:
    """Where prepared-avatar data (landmarks) is cached: <data_dir>/cache/avatars."""
    return settings.resolve(settings.paths.data_dir) / "cache" / "avatars"


def build_renderer(settings: Settings) -> AvatarRenderer:
    """The renderer named by settings.render.backend, configured from [render]."""
    cfg = settings.render
    if cfg.backend != "warp":
        raise ValueError(f"unknown render backend {cfg.backend!r}")  # config validation prevents this
    renderer = WarpRenderer(
        device=cfg.device,
        batch=cfg.batch,
        seed=cfg.seed,
        cache_dir=avatar_cache_dir(settings),
        threads=cfg.threads,
        frame=cfg.frame,
    )
    share = cfg.share_batches == "on" or (cfg.share_batches == "auto" and renderer.device.type == "cuda")
    return SharedBatchRenderer(renderer, max_batch=4 * cfg.batch) if share else renderer


def renders_on_gpu(renderer: AvatarRenderer) -> bool:
    device = getattr(renderer, "device", None)
    return device is not None and device.type == "cuda"
