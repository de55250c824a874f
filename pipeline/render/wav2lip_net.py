"""The Wav2Lip generator (Prajwal et al., "A Lip Sync Expert Is All You Need", ACM MM 2020), written to
load the authors' released `wav2lip.pth` / `wav2lip_gan.pth` strictly.

The network: a face encoder over a 6-channel 96 x 96 input (the face with its lower half blanked, and
the same face whole) keeps seven feature maps (96 -> 1 px); an audio encoder turns an 80 x 16 mel
window (0.2 s) into a 512-vector; a decoder grows that back to 96 px, concatenating the face feature of
the same size after every stage (a U-Net), and a last block gives a BGR face in (0, 1).

Every convolution is a "unit": conv + BatchNorm + ReLU, optionally adding its input before the ReLU
(residual). The layer plan below is data, so that the state dict names come out exactly as in the
released files (`<group>.<i>[.<j>].conv_block.{0,1}.*`); tests check them against the manifest of the
official file (names, shapes, dtypes, nothing extra).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import CheckpointError

FACE_SIZE = 96
MEL_BINS, MEL_WINDOW = 80, 16
KEY_PREFIX = "module."  # the released weights were saved from a DataParallel wrapper
SOURCE = "https://github.com/Rudrabha/Wav2Lip (README, 'Getting the weights': wav2lip.pth, wav2lip_gan.pth)"
LAYOUT = (
    "a torch.save dict {'state_dict', 'optimizer', 'global_step', 'global_epoch'} whose state_dict holds "
    "352 tensors named module.face_encoder_blocks.*, module.audio_encoder.*, module.face_decoder_blocks.*, "
    "module.output_block.* (about 436 MB)"
)

# A unit: (in, out, kernel, stride, padding, residual).
_Unit = tuple[int, int, int, int | tuple[int, int], int, bool]


def _same(channels: int, n: int) -> list[_Unit]:
    """n residual 3 x 3 units that keep size and channels."""
    return [(channels, channels, 3, 1, 1, True)] * n


_FACE_ENCODER: list[list[_Unit]] = [
    [(6, 16, 7, 1, 3, False)],  # 96
    [(16, 32, 3, 2, 1, False), *_same(32, 2)],  # 48
    [(32, 64, 3, 2, 1, False), *_same(64, 3)],  # 24
    [(64, 128, 3, 2, 1, False), *_same(128, 2)],  # 12
    [(128, 256, 3, 2, 1, False), *_same(256, 2)],  # 6
    [(256, 512, 3, 2, 1, False), *_same(512, 1)],  # 3
    [(512, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False)],  # 1
]
# The mel window is 80 x 16; strides (3, 1), 3 and (3, 2) fold it to 3 x 2, a valid 3 x 3 conv to 1 x 1.
_AUDIO_ENCODER: list[_Unit] = [
    (1, 32, 3, 1, 1, False),
    *_same(32, 2),
    (32, 64, 3, (3, 1), 1, False),
    *_same(64, 2),
    (64, 128, 3, 3, 1, False),
    *_same(128, 2),
    (128, 256, 3, (3, 2), 1, False),
    *_same(256, 1),
    (256, 512, 3, 1, 0, False),
    (512, 512, 1, 1, 0, False),
]
# Decoder stages: the first unit upsamples (transposed, except stage 0); its input is the previous
# stage's output concatenated with the face feature of that size.
_DECODER: list[tuple[tuple[int, int, int, int, int, int] | None, list[_Unit]]] = [
    (None, [(512, 512, 1, 1, 0, False)]),  # 1
    ((1024, 512, 3, 1, 0, 0), _same(512, 1)),  # 3
    ((1024, 512, 3, 2, 1, 1), _same(512, 2)),  # 6
    ((768, 384, 3, 2, 1, 1), _same(384, 2)),  # 12
    ((512, 256, 3, 2, 1, 1), _same(256, 2)),  # 24
    ((320, 128, 3, 2, 1, 1), _same(128, 2)),  # 48
    ((160, 64, 3, 2, 1, 1), _same(64, 2)),  # 96
]


class ConvUnit(nn.Module):
    """conv (or transposed conv) + BatchNorm + ReLU, adding the input first when `residual`."""

    def __init__(self, conv: nn.Module, channels: int, residual: bool = False) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(conv, nn.BatchNorm2d(channels))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_block(x)
        return torch.relu(y + x if self.residual else y)


def _unit(cin: int, cout: int, k: int, stride: int | tuple[int, int], pad: int, residual: bool) -> ConvUnit:
    return ConvUnit(nn.Conv2d(cin, cout, k, stride, pad), cout, residual)


def _up(cin: int, cout: int, k: int, stride: int, pad: int, out_pad: int) -> ConvUnit:
    return ConvUnit(nn.ConvTranspose2d(cin, cout, k, stride, pad, out_pad), cout)


class Wav2LipNet(nn.Module):
    """mel windows (B, 1, 80, 16) + faces (B, 6, 96, 96) in [0, 1], BGR -> faces (B, 3, 96, 96) in (0, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            nn.Sequential(*(_unit(*u) for u in block)) for block in _FACE_ENCODER
        )
        self.audio_encoder = nn.Sequential(*(_unit(*u) for u in _AUDIO_ENCODER))
        self.face_decoder_blocks = nn.ModuleList(
            nn.Sequential(*([_up(*up)] if up else []), *(_unit(*u) for u in units)) for up, units in _DECODER
        )
        # output_block.2 is the sigmoid, parameter-free; it is applied in forward
        self.output_block = nn.Sequential(_unit(80, 32, 3, 1, 1, False), nn.Conv2d(32, 3, 1))

    def forward(self, mels: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        skips = []
        x = faces
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)
        x = self.audio_encoder(mels)
        for block in self.face_decoder_blocks:
            x = torch.cat([block(x), skips.pop()], dim=1)
        return torch.sigmoid(self.output_block(x))


def check_wav2lip(path: Path) -> str | None:
    """None when `path` loads strictly, else the problem (for `models list`)."""
    try:
        load_wav2lip(path)
    except CheckpointError as e:
        return str(e.params["problem"])
    return None


def load_wav2lip(path: Path, device: torch.device | str = "cpu") -> Wav2LipNet:
    """The generator with the weights of `path`, in eval mode; every key and shape must match.

    Raises CheckpointError (naming the file, the expected layout and where the authors publish it)
    for a missing, unreadable, truncated or different file: never a traceback, never a fallback.
    """

    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(
            f"{path}: {problem}", path=str(path), problem=problem, layout=LAYOUT, source=SOURCE
        )

    if not path.is_file():
        raise refuse("the file does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise refuse(
            f"it cannot be read as a torch checkpoint, truncated or of another kind ({_short(e)})"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise refuse("it has no 'state_dict' entry")
    state = {k.removeprefix(KEY_PREFIX): v for k, v in ckpt["state_dict"].items()}
    net = Wav2LipNet()
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(getattr(state[k], 'shape', ()))} instead of {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape)
    ]
    if missing or extra or wrong:
        parts = [
            f"{len(missing)} tensors missing (e.g. {KEY_PREFIX}{missing[0]})" if missing else "",
            f"{len(extra)} unexpected (e.g. {KEY_PREFIX}{extra[0]})" if extra else "",
            f"{len(wrong)} of another shape (e.g. {wrong[0]})" if wrong else "",
        ]
        raise refuse("its tensors do not match Wav2Lip's: " + ", ".join(p for p in parts if p))
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:160]
