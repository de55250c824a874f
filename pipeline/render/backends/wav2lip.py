"""The "wav2lip" backend: the authors' released Wav2Lip generator draws the mouth (render/wav2lip.py).

Needs the user's own `wav2lip.pth` or `wav2lip_gan.pth` (research / non-commercial weights, published
by the authors; no package carries them); a missing or different file stops the start with one clear
error, never a fallback to another renderer. Runs on the CPU or CUDA (fp16 there).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import BackendSettings
from pipeline.render.registry import Backend, avatar_cache_dir, register

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.render.base import AvatarRenderer


log = logging.getLogger(__name__)


class Wav2LipSettings(BackendSettings):
    """[render.wav2lip]"""

    checkpoint: Path  # wav2lip.pth or wav2lip_gan.pth as the authors ship them


def _build(settings: Settings) -> AvatarRenderer:
    from pipeline.render.wav2lip import Wav2LipRenderer

    cfg = settings.render
    own = cfg.backend_settings("wav2lip")
    assert isinstance(own, Wav2LipSettings)
    seed = getattr(cfg.backend_settings("warp"), "seed", 7)  # its blinks are the warp renderer's
    if cfg.frame != "square":
        log.warning("render.frame = %r: the wav2lip renderer draws the square face crop only", cfg.frame)
    return Wav2LipRenderer(
        settings.resolve(own.checkpoint),
        device=cfg.device,
        batch=cfg.batch,
        seed=seed,
        cache_dir=avatar_cache_dir(settings),
        threads=cfg.threads,
    )


def _check_files(settings: Settings) -> list[tuple[Path, str | None]]:
    from pipeline.render.wav2lip_net import check_wav2lip

    own = settings.render.backend_settings("wav2lip")
    assert isinstance(own, Wav2LipSettings)
    path = settings.resolve(own.checkpoint)
    return [(path, check_wav2lip(path))]


# Its only per-photo files on disk are the warp renderer's landmarks, which warp's forget removes.
register(
    Backend(
        "wav2lip",
        build=_build,
        settings=Wav2LipSettings,
        check_files=_check_files,
        summary="the authors' Wav2Lip generator for the mouth (your wav2lip_gan.pth), warp for the rest",
    )
)
