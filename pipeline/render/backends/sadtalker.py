"""The "sadtalker" backend: the authors' released SadTalker nets animate the whole head (render/sadtalker.py).

Needs the user's own files in `checkpoint_dir` (Apache-2.0 weights, published by the authors; no
package carries them): `SadTalker_V0.0.2_256.safetensors`, `mapping_00229-model.pth.tar` ("crop") or
`mapping_00109-model.pth.tar` ("full"), and `similarity_Lm3D_all.mat` from the authors' repository
(the standard 3-D landmarks its face fitting aligns to). A missing or different file stops the start
with one clear error, never a fallback to another renderer. Whole-utterance (it predicts head pose
over the whole answer), not batchable across replies; CUDA or, slowly, the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from pipeline.config import BackendSettings
from pipeline.render.registry import Backend, register

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.render.base import AvatarRenderer


class SadTalkerSettings(BackendSettings):
    """[render.sadtalker]"""

    checkpoint_dir: Path
    size: Literal[256, 512] = 256
    preprocess: Literal["crop", "full"] = "crop"
    still: bool = False
    pose_style: int = Field(0, ge=0, le=45)
    expression_scale: float = Field(1.0, ge=0.0, le=3.0)
    batch: int = Field(2, ge=1, le=256)
    max_cpu_seconds: float = Field(10.0, ge=0.0)
    seed: int = 0


def _own(settings: Settings) -> SadTalkerSettings:
    own = settings.render.backend_settings("sadtalker")
    assert isinstance(own, SadTalkerSettings)
    return own


def _renderer(settings: Settings):
    from pipeline.render.sadtalker import SadTalkerRenderer

    cfg, own = settings.render, _own(settings)
    return SadTalkerRenderer(
        settings.resolve(own.checkpoint_dir),
        size=own.size,
        preprocess=own.preprocess,
        still=own.still,
        pose_style=own.pose_style,
        expression_scale=own.expression_scale,
        batch=own.batch,
        max_cpu_seconds=own.max_cpu_seconds,
        seed=own.seed,
        device=cfg.device,
        threads=cfg.threads,
    )


def _build(settings: Settings) -> AvatarRenderer:
    return _renderer(settings)


def _check_files(settings: Settings) -> list[tuple[Path, str | None]]:
    from pipeline.render.sadtalker_nets import check_lm3d, check_mapping, check_sadtalker

    files = _renderer(settings).files()
    coeffs = 73 if _own(settings).preprocess == "full" else 70
    return [
        (files["nets"], check_sadtalker(files["nets"])),
        (files["mapping"], check_mapping(files["mapping"], coeffs)),
        (files["lm3d"], check_lm3d(files["lm3d"])),
    ]


# Its per-photo data lives in memory only (the renderer's forget drops it); nothing on disk.
register(
    Backend(
        "sadtalker",
        build=_build,
        settings=SadTalkerSettings,
        check_files=_check_files,
        summary="the authors' SadTalker nets animate the whole head (your SadTalker_V0.0.2_256.safetensors)",
    )
)
