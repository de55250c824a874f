"""SadTalker's networks (Zhang et al., "SadTalker: Learning Realistic 3D Motion Coefficients for
Stylized Audio-Driven Single Image Talking Face Animation", CVPR 2023), written to load the authors'
released `SadTalker_V0.0.2_256.safetensors` and `mapping_00229-model.pth.tar` /
`mapping_00109-model.pth.tar` strictly.

What each net does (from the paper and the shared FACTS.md; module names follow the released files):

- `face_3drecon` (ReconNet): a ResNet-50 without its classifier and seven 1 x 1 heads; a 224 px aligned
  face -> 257 3DMM coefficients (identity 80, expression 64, texture 80, angles 3, light 27, xy 2, z 1).
- `audio2exp` (ExpNet): Wav2Lip's audio encoder (one 80 x 16 mel window -> 512) and one linear layer
  over [audio 512, reference expression 64, blink 1] -> the frame's 64 expression coefficients.
- `audio2pose` (PoseVAE): the same audio encoder; a conditional VAE whose decoder maps a latent z (64,
  plus a learned bias per pose style, 46 styles), the reference pose (6) and 32 frames of audio (each
  projected to 6) through an MLP and a small 2-D residual U-Net to 32 frames of head motion (6).
  The encoder and the motion discriminator are in the file but unused at inference.
- `mapping` (MappingNet): 27 frames of coefficients (a window around the frame) -> head angles as 66
  bins each, a translation and 15 x 3 keypoint offsets.
- `kp_extractor` (face-vid2vid's canonical keypoint detector): a 2-D encoder lifted to 3-D, an hourglass
  decoder, and a soft-argmax over a 16 x 64 x 64 volume -> 15 canonical 3-D keypoints.
- `generator` (OcclusionAwareSPADEGenerator): the source's 2-D features lifted to a 32 x 16 x 64 x 64
  volume; a dense motion network turns the source and driving keypoints into a 3-D flow, a soft
  per-keypoint mask and an occlusion map; the warped volume is flattened back to 2-D and decoded by
  SPADE residual blocks (spectral-normalised convolutions) to a 256 px RGB frame.

Loading (`load_sadtalker`, `load_mapping`): a missing, unreadable, truncated or different file raises
CheckpointError naming the file, its expected layout and where the authors publish it; never a
traceback, never a fallback. safetensors files are read here (a JSON header and raw little-endian
tensors), so no extra package is needed.
"""

from __future__ import annotations

import itertools
import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.render.wav2lip_net import _AUDIO_ENCODER, _unit

SOURCE = "https://github.com/OpenTalker/SadTalker (README, 'Download Trained Models': the v0.0.2 release)"
LAYOUT = (
    "a safetensors file of 1305 tensors named kp_extractor.*, generator.*, audio2exp.*, audio2pose.*, "
    "face_3drecon.* (725,066,984 bytes)"
)
MAPPING_LAYOUT = (
    "a torch.save dict {{'mapping', 'epoch', ...}} whose 'mapping' holds 18 tensors first.0.*, "
    "encoder0-2.1.*, fc_roll/pitch/yaw/t/exp.* with first.0.weight [1024, {coeffs}, 7] (about 155 MB)"
)
LM3D_LAYOUT = "a MATLAB .mat file whose 'lm' field holds the 68 standard 3-D face landmarks, shape (68, 3)"
LM3D_SOURCE = "https://github.com/OpenTalker/SadTalker (the repository's src/config/similarity_Lm3D_all.mat)"

NUM_KP = 15
NUM_BINS = 66
SEMANTIC_RADIUS = 13  # mapping windows: 27 frames
POSE_SEQ = 32  # the pose VAE's window, in frames
LATENT = 64
POSE_STYLES = 46
COEFFS = 257


# ============================================================================ audio encoders
def audio_encoder() -> nn.Sequential:
    """Wav2Lip's audio encoder (13 conv units): (B, 1, 80, 16) -> (B, 512, 1, 1)."""
    return nn.Sequential(*(_unit(*u) for u in _AUDIO_ENCODER))


class ExpNet(nn.Module):
    """audio2exp: mel window + reference expression + blink -> expression (64) per frame."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_encoder = audio_encoder()
        self.mapping1 = nn.Linear(512 + 64 + 1, 64)

    def forward(self, mels: torch.Tensor, ref: torch.Tensor, blink: torch.Tensor) -> torch.Tensor:
        """mels (N, 1, 80, 16), ref (N, 64), blink (N, 1) -> (N, 64)."""
        audio = self.audio_encoder(mels).flatten(1)
        return self.mapping1(torch.cat([audio, ref, blink], 1))


class _PoseAudioEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.audio_encoder = audio_encoder()

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """(B, T, 1, 80, 16) -> (B, T, 512)."""
        b, t = mels.shape[:2]
        return self.audio_encoder(mels.flatten(0, 1)).reshape(b, t, -1)


class _ResidualConv(nn.Module):
    """Pre-activation residual unit: (BN, ReLU, conv, BN, ReLU, conv) + (conv, BN)."""

    def __init__(self, cin: int, cout: int, stride: int | tuple[int, int]) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            nn.Conv2d(cin, cout, 3, stride, 1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1),
        )
        self.conv_skip = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x) + self.conv_skip(x)


class _Up(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(channels, channels, (2, 1), (2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(x)


class ResUNet(nn.Module):
    """A small 2-D residual U-Net over (B, 1, frames, 6), halving and restoring the frame axis."""

    def __init__(self, f: tuple[int, int, int, int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(
            nn.Conv2d(1, f[0], 3, 1, 1), nn.BatchNorm2d(f[0]), nn.ReLU(), nn.Conv2d(f[0], f[0], 3, 1, 1)
        )
        self.input_skip = nn.Sequential(nn.Conv2d(1, f[0], 3, 1, 1))
        self.residual_conv_1 = _ResidualConv(f[0], f[1], (2, 1))
        self.residual_conv_2 = _ResidualConv(f[1], f[2], (2, 1))
        self.bridge = _ResidualConv(f[2], f[3], (2, 1))
        self.upsample_1 = _Up(f[3])
        self.up_residual_conv1 = _ResidualConv(f[3] + f[2], f[2], 1)
        self.upsample_2 = _Up(f[2])
        self.up_residual_conv2 = _ResidualConv(f[2] + f[1], f[1], 1)
        self.upsample_3 = _Up(f[1])
        self.up_residual_conv3 = _ResidualConv(f[1] + f[0], f[0], 1)
        self.output_layer = nn.Sequential(nn.Conv2d(f[0], 1, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.input_layer(x) + self.input_skip(x)
        x2 = self.residual_conv_1(x1)
        x3 = self.residual_conv_2(x2)
        x = self.upsample_1(self.bridge(x3))
        x = self.upsample_2(self.up_residual_conv1(torch.cat([x, x3], 1)))
        x = self.upsample_3(self.up_residual_conv2(torch.cat([x, x2], 1)))
        return self.output_layer(self.up_residual_conv3(torch.cat([x, x1], 1)))


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers L0, L1, ... with ReLU between (A0, ...) and a sigmoid after the last."""
    mlp = nn.Sequential()
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        mlp.add_module(f"L{i}", nn.Linear(a, b))
        mlp.add_module(
            f"A{i}" if i + 2 < len(sizes) else "sigmoid", nn.ReLU() if i + 2 < len(sizes) else nn.Sigmoid()
        )
    return mlp


class _PoseEncoder(nn.Module):
    """The CVAE's encoder (training only; here for the file's layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.resunet = ResUNet()
        self.MLP = nn.Sequential()
        self.MLP.add_module("L0", nn.Linear(6 * POSE_SEQ * 2 + 6 + LATENT, 128))
        self.MLP.add_module("A0", nn.ReLU())
        self.linear_means = nn.Linear(128, LATENT)
        self.linear_logvar = nn.Linear(128, LATENT)
        self.linear_audio = nn.Linear(512, 6)
        self.classbias = nn.Parameter(torch.zeros(POSE_STYLES, LATENT))


class _PoseDecoder(nn.Module):
    """z + style bias, reference pose and 32 frames of audio -> 32 frames of head motion (6)."""

    def __init__(self) -> None:
        super().__init__()
        self.resunet = ResUNet()
        self.MLP = _mlp([LATENT + POSE_SEQ * 6 + 6, 128, POSE_SEQ * 6])
        self.pose_linear = nn.Linear(6, 6)
        self.linear_audio = nn.Linear(512, 6)
        self.classbias = nn.Parameter(torch.zeros(POSE_STYLES, LATENT))

    def forward(
        self, z: torch.Tensor, style: torch.Tensor, ref: torch.Tensor, audio: torch.Tensor
    ) -> torch.Tensor:
        """z (B, 64), style (B,) int, ref (B, 6), audio (B, 32, 512) -> motion (B, 32, 6)."""
        b = z.shape[0]
        audio6 = self.linear_audio(audio).reshape(b, -1)
        x = self.MLP(torch.cat([ref, z + self.classbias[style], audio6], -1)).reshape(b, POSE_SEQ, 6)
        return self.pose_linear(self.resunet(x[:, None])[:, 0])


class _CVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _PoseEncoder()
        self.decoder = _PoseDecoder()


class _ConvNormRelu1d(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, k, stride, pad, bias=False)
        self.norm = nn.BatchNorm1d(cout)


class _MotionDiscriminator(nn.Module):
    """Training only; here for the file's layout."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            _ConvNormRelu1d(6, 256, 4, 2, 1),
            _ConvNormRelu1d(256, 512, 4, 2, 1),
            _ConvNormRelu1d(512, 1024, 3, 1, 1),
            nn.Conv1d(1024, 1, 3, 1, 1),
        )


class PoseVAE(nn.Module):
    """audio2pose."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_encoder = _PoseAudioEncoder()
        self.netG = _CVAE()
        self.netD_motion = _MotionDiscriminator()

    def forward(
        self, mels: torch.Tensor, ref_pose: torch.Tensor, style: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """mels (1, T, 1, 80, 16), ref_pose (1, 6) -> pose (1, T, 6): the reference plus predicted motion.

        Frame 0 is the reference; the rest are drawn in windows of 32 frames, each with a fresh z; a
        last partial window is the final 32 frames (padded in front with the first frame's audio when
        the whole answer is shorter), of which the new ones are kept."""
        b, t = mels.shape[:2]
        rest = mels[:, 1:]
        n = t - 1
        style_t = torch.full((b,), style, dtype=torch.long, device=mels.device)
        motion = [torch.zeros(b, 1, 6, device=mels.device, dtype=ref_pose.dtype)]

        def window(m: torch.Tensor) -> torch.Tensor:
            audio = self.audio_encoder(m)
            if audio.shape[1] < POSE_SEQ:
                audio = torch.cat([audio[:, :1].expand(-1, POSE_SEQ - audio.shape[1], -1), audio], 1)
            z = torch.randn(b, LATENT, generator=generator).to(mels.device, ref_pose.dtype)
            return self.netG.decoder(z, style_t, ref_pose, audio)

        for i in range(n // POSE_SEQ):
            motion.append(window(rest[:, i * POSE_SEQ : (i + 1) * POSE_SEQ]))
        if n % POSE_SEQ:
            motion.append(window(rest[:, -POSE_SEQ:])[:, -(n % POSE_SEQ) :])
        return ref_pose[:, None] + torch.cat(motion, 1)


# ============================================================================ 3DMM fitting (ReconNet)
class _Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, downsample: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False), nn.BatchNorm2d(width * 4))
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _ResNet50(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]):
            layer = []
            for j in range(blocks):
                layer.append(_Bottleneck(cin, width, stride if j == 0 else 1, j == 0))
                cin = width * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return F.adaptive_avg_pool2d(x, 1)


class ReconNet(nn.Module):
    """face_3drecon: aligned face (B, 3, 224, 224) RGB in [0, 1] -> (B, 257) coefficients."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = _ResNet50()
        self.final_layers = nn.ModuleList(nn.Conv2d(2048, n, 1) for n in (80, 64, 80, 3, 27, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x)
        return torch.cat([layer(x) for layer in self.final_layers], 1).flatten(1)


# ============================================================================ face renderer blocks
def _grid3d(d: int, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """(d, h, w, 3) coordinates (x, y, z), each from -1 to 1."""
    z, y, x = (torch.linspace(-1, 1, n, device=device) for n in (d, h, w))
    zz, yy, xx = torch.meshgrid(z, y, x, indexing="ij")
    return torch.stack([xx, yy, zz], -1)


class _Down2d(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)


class _Same2d(nn.Module):
    def __init__(self, cin: int, cout: int, leaky: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm = nn.BatchNorm2d(cout)
        self.leaky = leaky

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        return F.leaky_relu(y, 0.01) if self.leaky else F.relu(y)


class _Down3d(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, 1, 1)
        self.norm = nn.BatchNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(F.relu(self.norm(self.conv(x))), (1, 2, 2))


class _Up3d(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, 1, 1)
        self.norm = nn.BatchNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1, 2, 2))
        return F.relu(self.norm(self.conv(x)))


class _Res3d(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv3d(channels, channels, 3, 1, 1)
        self.norm1 = nn.BatchNorm3d(channels)
        self.norm2 = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        return x + self.conv2(F.relu(self.norm2(y)))


def _features(expansion: int, i: int, cap: int) -> int:
    return min(cap, expansion * 2**i)


class _KPHourglass(nn.Module):
    """2-D encoder (5 halvings), a 1 x 1 conv to 16 depth slices of 1024, 3-D decoder (5 doublings)."""

    def __init__(self) -> None:
        super().__init__()
        self.down_blocks = nn.Sequential()
        for i in range(5):
            cin = 3 if i == 0 else _features(32, i, 1024)
            self.down_blocks.add_module(f"down{i}", _Down2d(cin, _features(32, i + 1, 1024)))
        self.conv = nn.Conv2d(1024, 16384, 1)
        self.up_blocks = nn.Sequential()
        for i in range(5):
            self.up_blocks.add_module(f"up{i}", _Up3d(_features(32, 5 - i, 1024), _features(32, 4 - i, 1024)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.down_blocks(x))
        b, c, h, w = x.shape
        return self.up_blocks(x.view(b, c // 16, 16, h, w))


def _gaussian_kernel(channels: int, scale: float) -> torch.Tensor:
    """The anti-alias kernel for downscaling by `scale`: a 2-D Gaussian, sigma (1/scale - 1)/2."""
    sigma = (1 / scale - 1) / 2
    size = 2 * round(sigma * 4) + 1
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    kernel = g[:, None] * g[None, :]
    return (kernel / kernel.sum())[None, None].repeat(channels, 1, 1, 1)


class _AntiAlias(nn.Module):
    """Gaussian blur, then every 4th pixel: the keypoint detector sees a 64 px copy of the photo."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.step = round(1 / scale)
        self.register_buffer("weight", _gaussian_kernel(channels, scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.weight.shape[-1] // 2
        return F.conv2d(F.pad(x, (k, k, k, k)), self.weight, groups=x.shape[1])[
            :, :, :: self.step, :: self.step
        ]


class KPDetector(nn.Module):
    """kp_extractor: source image (B, 3, 256, 256) in [0, 1] -> canonical keypoints (B, 15, 3)."""

    TEMPERATURE = 0.1

    def __init__(self) -> None:
        super().__init__()
        self.predictor = _KPHourglass()
        self.kp = nn.Conv3d(32, NUM_KP, 3, 1, 1)
        self.down = _AntiAlias(3, 0.25)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        heat = self.kp(self.predictor(self.down(image)))
        b, n, d, h, w = heat.shape
        heat = F.softmax(heat.view(b, n, -1) / self.TEMPERATURE, 2).view(b, n, d, h, w, 1)
        return (heat * _grid3d(d, h, w, image.device)).sum((2, 3, 4))


class _Hourglass3d(nn.Module):
    """The dense motion network's 3-D U-Net (5 levels, depth kept)."""

    def __init__(self, cin: int = 80, expansion: int = 32, cap: int = 1024, levels: int = 5) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.down_blocks = nn.ModuleList(
            _Down3d(cin if i == 0 else _features(expansion, i, cap), _features(expansion, i + 1, cap))
            for i in range(levels)
        )
        self.decoder = nn.Module()
        self.decoder.up_blocks = nn.ModuleList(
            _Up3d(
                (1 if i == levels - 1 else 2) * _features(expansion, i + 1, cap), _features(expansion, i, cap)
            )
            for i in reversed(range(levels))
        )
        self.out_channels = expansion + cin
        self.decoder.conv = nn.Conv3d(self.out_channels, self.out_channels, 3, 1, 1)
        self.decoder.norm = nn.BatchNorm3d(self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for down in self.encoder.down_blocks:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.decoder.up_blocks:
            x = torch.cat([up(x), skips.pop()], 1)
        return F.relu(self.decoder.norm(self.decoder.conv(x)))


def _gaussians(kp: torch.Tensor, grid: torch.Tensor, variance: float = 0.01) -> torch.Tensor:
    """(B, K, D, H, W) Gaussian blobs at keypoints kp (B, K, 3) on grid (D, H, W, 3)."""
    diff = grid[None, None] - kp[:, :, None, None, None]
    return torch.exp(-0.5 * (diff**2).sum(-1) / variance)


class DenseMotion(nn.Module):
    """Keypoints of the source and the driving frame -> a 3-D flow, per-keypoint masks, occlusion."""

    def __init__(self) -> None:
        super().__init__()
        compress = 4
        self.hourglass = _Hourglass3d(cin=(NUM_KP + 1) * (compress + 1))
        self.mask = nn.Conv3d(self.hourglass.out_channels, NUM_KP + 1, 7, 1, 3)
        self.compress = nn.Conv3d(32, compress, 1)
        self.norm = nn.BatchNorm3d(compress)
        self.occlusion = nn.Conv2d(self.hourglass.out_channels * 16, 1, 7, 1, 3)

    def forward(
        self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feature (B, 32, D, H, W) -> deformation (B, D, H, W, 3), occlusion (B, 1, H, W)."""
        b, _, d, h, w = feature.shape
        feature = F.relu(self.norm(self.compress(feature)))
        grid = _grid3d(d, h, w, feature.device)
        # where each keypoint's rigid motion sends every driving point, in the source (plus identity)
        to_source = grid[None, None] - kp_driving[:, :, None, None, None] + kp_source[:, :, None, None, None]
        motions = torch.cat([grid[None, None].expand(b, 1, d, h, w, 3), to_source], 1)  # (B, K+1, D, H, W, 3)
        k1 = NUM_KP + 1
        repeated = feature[:, None].expand(b, k1, *feature.shape[1:]).reshape(b * k1, -1, d, h, w)
        deformed = F.grid_sample(repeated, motions.reshape(b * k1, d, h, w, 3), align_corners=False)
        deformed = deformed.view(b, k1, -1, d, h, w)
        heat = _gaussians(kp_driving, grid) - _gaussians(kp_source, grid)
        heat = torch.cat([heat.new_zeros(b, 1, d, h, w), heat], 1)[:, :, None]
        prediction = self.hourglass(torch.cat([heat, deformed], 2).view(b, -1, d, h, w))
        mask = F.softmax(self.mask(prediction), 1)[:, :, None]  # (B, K+1, 1, D, H, W)
        deformation = (motions.permute(0, 1, 5, 2, 3, 4) * mask).sum(1).permute(0, 2, 3, 4, 1)
        occlusion = torch.sigmoid(self.occlusion(prediction.reshape(b, -1, h, w)))
        return deformation, occlusion


class _SPADE(nn.Module):
    def __init__(self, channels: int, label: int = 256, hidden: int = 128) -> None:
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label, hidden, 3, 1, 1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, 3, 1, 1)
        self.mlp_beta = nn.Conv2d(hidden, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(seg)
        return F.instance_norm(x) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


def _sn_conv(cin: int, cout: int, k: int, bias: bool = True) -> nn.Module:
    return nn.utils.spectral_norm(nn.Conv2d(cin, cout, k, 1, k // 2, bias=bias))


class _SPADEBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = min(cin, cout)
        self.learned_shortcut = cin != cout
        self.conv_0 = _sn_conv(cin, mid, 3)
        self.conv_1 = _sn_conv(mid, cout, 3)
        if self.learned_shortcut:
            self.conv_s = _sn_conv(cin, cout, 1, bias=False)
        self.norm_0 = _SPADE(cin)
        self.norm_1 = _SPADE(mid)
        if self.learned_shortcut:
            self.norm_s = _SPADE(cin)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        skip = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return skip + dx


class _SPADEDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Conv2d(256, 512, 3, 1, 1)
        for i in range(6):
            setattr(self, f"G_middle_{i}", _SPADEBlock(512, 512))
        self.up_0 = _SPADEBlock(512, 256)
        self.up_1 = _SPADEBlock(256, 64)
        self.conv_img = nn.Conv2d(64, 3, 3, 1, 1)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.fc(feature)
        for i in range(6):
            x = getattr(self, f"G_middle_{i}")(x, feature)
        x = self.up_0(F.interpolate(x, scale_factor=2.0), feature)
        x = self.up_1(F.interpolate(x, scale_factor=2.0), feature)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))


class Generator(nn.Module):
    """generator: the source's feature volume warped to the driving keypoints, decoded to RGB."""

    def __init__(self) -> None:
        super().__init__()
        self.dense_motion_network = DenseMotion()
        self.first = _Same2d(3, 64)
        self.down_blocks = nn.ModuleList([_Down2d(64, 128), _Down2d(128, 256)])
        self.second = nn.Conv2d(256, 512, 1)
        self.resblocks_3d = nn.Sequential()
        for i in range(6):
            self.resblocks_3d.add_module(f"3dr{i}", _Res3d(32))
        self.third = _Same2d(512, 256, leaky=True)
        self.fourth = nn.Conv2d(256, 256, 1)
        self.decoder = _SPADEDecoder()

    def source_volume(self, source: torch.Tensor) -> torch.Tensor:
        """(B, 3, 256, 256) -> (B, 32, 16, 64, 64): depends on the photo only, so computed once."""
        x = self.first(source)
        for down in self.down_blocks:
            x = down(x)
        x = self.second(x)
        b, c, h, w = x.shape
        return self.resblocks_3d(x.view(b, 32, c // 32, h, w))

    def forward(
        self, volume: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor
    ) -> torch.Tensor:
        """volume (B, 32, 16, 64, 64) from source_volume, keypoints (B, 15, 3) -> (B, 3, 256, 256)."""
        deformation, occlusion = self.dense_motion_network(volume, kp_driving, kp_source)
        warped = F.grid_sample(volume, deformation, align_corners=False)
        b, c, d, h, w = warped.shape
        x = self.fourth(self.third(warped.reshape(b, c * d, h, w)))
        if x.shape[2:] != occlusion.shape[2:]:
            occlusion = F.interpolate(occlusion, size=x.shape[2:], mode="bilinear")
        return self.decoder(x * occlusion)


class MappingNet(nn.Module):
    """mapping: coefficient windows (B, 70 | 73, 27) -> yaw/pitch/roll bins (B, 66), t (B, 3), exp (B, 45)."""

    def __init__(self, coeffs: int) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Conv1d(coeffs, 1024, 7, 1, 0))
        for i in range(3):
            setattr(
                self,
                f"encoder{i}",
                nn.Sequential(nn.LeakyReLU(0.1), nn.Conv1d(1024, 1024, 3, 1, 0, dilation=3)),
            )
        self.fc_roll = nn.Linear(1024, NUM_BINS)
        self.fc_pitch = nn.Linear(1024, NUM_BINS)
        self.fc_yaw = nn.Linear(1024, NUM_BINS)
        self.fc_t = nn.Linear(1024, 3)
        self.fc_exp = nn.Linear(1024, 3 * NUM_KP)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.first(x)
        for i in range(3):
            x = getattr(self, f"encoder{i}")(x) + x[:, :, 3:-3]
        x = x.mean(2)
        return {
            "yaw": self.fc_yaw(x),
            "pitch": self.fc_pitch(x),
            "roll": self.fc_roll(x),
            "t": self.fc_t(x),
            "exp": self.fc_exp(x),
        }


def bins_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """The expected bin of 66 three-degree bins, in degrees from -99."""
    idx = torch.arange(NUM_BINS, dtype=logits.dtype, device=logits.device)
    return (F.softmax(logits, 1) * idx).sum(1) * 3 - 99


def rotation(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) = pitch @ yaw @ roll, angles in degrees (pi taken as 3.14, as the weights learned)."""
    y, p, r = (a / 180 * 3.14 for a in (yaw, pitch, roll))
    one, zero = torch.ones_like(y), torch.zeros_like(y)

    def mat(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(row, -1) for row in rows], -2)

    pm = mat([[one, zero, zero], [zero, p.cos(), -p.sin()], [zero, p.sin(), p.cos()]])
    ym = mat([[y.cos(), zero, y.sin()], [zero, one, zero], [-y.sin(), zero, y.cos()]])
    rm = mat([[r.cos(), -r.sin(), zero], [r.sin(), r.cos(), zero], [zero, zero, one]])
    return pm @ ym @ rm


def transform_keypoints(canonical: torch.Tensor, motion: dict[str, torch.Tensor]) -> torch.Tensor:
    """kp = R · canonical + t (its x and z zeroed) + expression offsets: (B, 15, 3)."""
    r = rotation(*(bins_to_degrees(motion[k]) for k in ("yaw", "pitch", "roll")))
    t = motion["t"].clone()
    t[:, 0] = 0
    t[:, 2] = 0
    return torch.einsum("bmp,bkp->bkm", r, canonical) + t[:, None] + motion["exp"].view(-1, NUM_KP, 3)


class SadTalkerNets(nn.Module):
    """The five nets of the released safetensors file, under the file's prefixes."""

    def __init__(self) -> None:
        super().__init__()
        self.kp_extractor = KPDetector()
        self.generator = Generator()
        self.audio2exp = ExpNet()
        self.audio2pose = PoseVAE()
        self.face_3drecon = ReconNet()


# ============================================================================ files
def mapping_file(preprocess: str) -> tuple[str, int]:
    """The mapping file for a preprocess mode, and its coefficient count."""
    return (
        ("mapping_00109-model.pth.tar", 73) if preprocess == "full" else ("mapping_00229-model.pth.tar", 70)
    )


def _refuse(path: Path, problem: str, layout: str = LAYOUT, source: str = SOURCE) -> CheckpointError:
    return CheckpointError(
        f"{path}: {problem}", path=str(path), problem=problem, layout=layout, source=source
    )


_ST_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (CPU, copied out of a memory map). ValueError when the file is
    not one or is cut short."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100_000_000):
            raise ValueError("no safetensors header")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"unreadable safetensors header ({e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise ValueError("unreadable safetensors header")
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    tensors = {}
    for name, spec in header.items():
        try:
            dtype = _ST_DTYPES[spec["dtype"]]
            start, end = (int(v) for v in spec["data_offsets"])
            shape = [int(s) for s in spec["shape"]]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"bad header entry for {name}") from None
        if end > len(data) or end < start:
            raise ValueError(f"the file is cut short (tensor {name} ends past its end)")
        raw = (
            torch.frombuffer(bytearray(data[start:end]), dtype=torch.uint8)
            if end > start
            else torch.zeros(0, dtype=torch.uint8)
        )
        count = int(np.prod(shape)) if shape else 1
        if raw.numel() != count * torch.empty(0, dtype=dtype).element_size():
            raise ValueError(f"tensor {name} has {raw.numel()} bytes for shape {shape}")
        tensors[name] = raw.view(dtype).reshape(shape)
    return tensors


def _compare(expected: dict[str, torch.Tensor], state: dict, prefix: str = "") -> str | None:
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [
        f"{prefix}{k} {tuple(getattr(state[k], 'shape', ()))} instead of {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape)
    ]
    if not (missing or extra or wrong):
        return None
    parts = [
        f"{len(missing)} tensors missing (e.g. {prefix}{missing[0]})" if missing else "",
        f"{len(extra)} unexpected (e.g. {prefix}{extra[0]})" if extra else "",
        f"{len(wrong)} of another shape (e.g. {wrong[0]})" if wrong else "",
    ]
    return ", ".join(p for p in parts if p)


def load_sadtalker(path: Path, device: torch.device | str = "cpu") -> SadTalkerNets:
    """The five nets with the weights of `path` (eval mode); every key and shape must match."""
    if not path.is_file():
        raise _refuse(path, "the file does not exist")
    try:
        state = read_safetensors(path)
    except (OSError, ValueError) as e:
        raise _refuse(
            path, f"it cannot be read as a safetensors file, truncated or of another kind ({_short(e)})"
        ) from None
    nets = SadTalkerNets()
    problem = _compare(nets.state_dict(), state)
    if problem:
        raise _refuse(path, "its tensors do not match SadTalker's: " + problem)
    nets.load_state_dict(state, strict=True)
    return nets.to(device).eval()


def load_mapping(path: Path, coeffs: int, device: torch.device | str = "cpu") -> MappingNet:
    """The mapping net of `path` (a torch.save dict with 'mapping'), strictly."""
    layout = MAPPING_LAYOUT.format(coeffs=coeffs)
    if not path.is_file():
        raise _refuse(path, "the file does not exist", layout)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise _refuse(
            path,
            f"it cannot be read as a torch checkpoint, truncated or of another kind ({_short(e)})",
            layout,
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("mapping"), dict):
        raise _refuse(path, "it has no 'mapping' entry", layout)
    net = MappingNet(coeffs)
    problem = _compare(net.state_dict(), ckpt["mapping"])
    if problem:
        raise _refuse(path, "its tensors do not match the mapping net's: " + problem, layout)
    net.load_state_dict(ckpt["mapping"], strict=True)
    return net.to(device).eval()


FIVE_POINTS = ((30,), (36, 39), (42, 45), (48,), (54,))  # 0-based 68-point indices: nose, eyes, mouth corners


def load_lm3d(path: Path) -> np.ndarray:
    """The five standard 3-D landmarks (left eye, right eye, nose tip, left and right mouth corner),
    (5, 3), from similarity_Lm3D_all.mat."""
    if not path.is_file():
        raise _refuse(path, "the file does not exist", LM3D_LAYOUT, LM3D_SOURCE)
    try:
        from scipy.io import loadmat

        lm = np.asarray(loadmat(str(path))["lm"], dtype=np.float64)
    except Exception as e:  # scipy raises many kinds for a file that is not a .mat
        raise _refuse(
            path,
            f"it cannot be read as a .mat file with an 'lm' field ({_short(e)})",
            LM3D_LAYOUT,
            LM3D_SOURCE,
        ) from None
    if lm.shape != (68, 3) or not np.all(np.isfinite(lm)):
        raise _refuse(path, f"its 'lm' field has shape {lm.shape}, not (68, 3)", LM3D_LAYOUT, LM3D_SOURCE)
    nose, left, right, ml, mr = (lm[list(i)].mean(0) for i in FIVE_POINTS)
    return np.stack([left, right, nose, ml, mr])


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:160]


def _problem(load, *args) -> str | None:
    try:
        load(*args)
    except CheckpointError as e:
        return str(e.params["problem"])
    return None


def check_sadtalker(path: Path) -> str | None:
    """None when `path` loads strictly, else the problem (for `models list`)."""
    return _problem(load_sadtalker, path)


def check_mapping(path: Path, coeffs: int) -> str | None:
    return _problem(load_mapping, path, coeffs)


def check_lm3d(path: Path) -> str | None:
    return _problem(load_lm3d, path)
