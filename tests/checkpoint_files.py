"""Random-valued checkpoint files in the official layouts (tests/data/checkpoint_layouts/*.json).

A file written here has the authors' container, key names, shapes and dtypes, so our loaders read it
exactly as they read the real one; only the values are random. They are numerically tame, so forward
passes stay finite: weights uniform in ±1/sqrt(fan_in), 1-D weights near 1, biases small, running
variances in [0.5, 1.5], running means small, integer tensors zero, and the u/v vectors of spectral
normalisation close to the singular vectors of their weight. The same seed gives the same file.

    from tests.checkpoint_files import load_layout, write_random_checkpoint
    write_random_checkpoint(load_layout("wav2lip_gan.json"), tmp / "wav2lip_gan.pth", seed=3)
"""

from __future__ import annotations

import json
import math
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

LAYOUTS = Path(__file__).resolve().parent / "data" / "checkpoint_layouts"

# manifest dtype -> torch dtype, safetensors dtype code
_DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "float32": (torch.float32, "F32"),
    "float16": (torch.float16, "F16"),
    "bfloat16": (torch.bfloat16, "BF16"),
    "float64": (torch.float64, "F64"),
    "int64": (torch.int64, "I64"),
    "int32": (torch.int32, "I32"),
    "int16": (torch.int16, "I16"),
    "int8": (torch.int8, "I8"),
    "uint8": (torch.uint8, "U8"),
    "bool": (torch.bool, "BOOL"),
}
_SAFETENSORS_CODE = {dtype: code for dtype, code in _DTYPES.values()}
# the safetensors library stores tensors by dtype (in this order, last first), then by name
_SAFETENSORS_ORDER = (
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.float32,
    torch.float64,
    torch.int64,
)
_SAFETENSORS_RANK = {dtype: rank for rank, dtype in enumerate(_SAFETENSORS_ORDER)}
_POWER_ITERATIONS = 8


def load_layout(name: str) -> dict[str, Any]:
    """One manifest from tests/data/checkpoint_layouts, e.g. "wav2lip_gan.json"."""
    return json.loads((LAYOUTS / name).read_text())


def _tame(name: str, shape: list[int], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        values = 0.5 + torch.rand(shape, generator=gen, dtype=torch.float64)
    elif leaf == "running_mean":
        values = 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
    elif len(shape) >= 2:
        fan_in = max(1, math.prod(shape[1:]))
        bound = 1.0 / math.sqrt(fan_in)
        values = (2 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1) * bound
    elif leaf.endswith(("_u", "_v")):  # spectral-norm vectors: unit length (refined below)
        values = torch.randn(shape, generator=gen, dtype=torch.float64)
        values /= values.norm().clamp_min(1e-12)
    elif leaf.endswith("weight") or leaf == "gamma":  # norm-layer scales
        values = 1.0 + 0.02 * torch.randn(shape, generator=gen, dtype=torch.float64)
    else:  # biases, shifts, scalars
        values = 0.02 * torch.randn(shape, generator=gen, dtype=torch.float64)
    return values.to(dtype).contiguous()


def _align_spectral_vectors(tensors: dict[str, torch.Tensor]) -> None:
    """For each X.weight_orig with X.weight_u and X.weight_v: power iterations on the weight, so that
    u and v approximate its leading singular vectors (eval-mode spectral norm divides by u·Wv)."""
    for name in [n for n in tensors if n.endswith(".weight_orig")]:
        stem = name.removesuffix("_orig")
        u_name, v_name = stem + "_u", stem + "_v"
        if u_name not in tensors or v_name not in tensors:
            continue
        weight = tensors[name].double().reshape(tensors[name].shape[0], -1)
        u, v = tensors[u_name].double().flatten(), tensors[v_name].double().flatten()
        if u.numel() != weight.shape[0] or v.numel() != weight.shape[1]:
            continue
        for _ in range(_POWER_ITERATIONS):
            u = weight @ v
            u /= u.norm().clamp_min(1e-12)
            v = weight.T @ u
            v /= v.norm().clamp_min(1e-12)
        tensors[u_name] = u.reshape(tensors[u_name].shape).to(tensors[u_name].dtype).contiguous()
        tensors[v_name] = v.reshape(tensors[v_name].shape).to(tensors[v_name].dtype).contiguous()


def random_tensors(layout: dict[str, Any], seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """Every tensor of the layout, in its order, with its exact name, shape and dtype."""
    gen = torch.Generator().manual_seed(seed)
    tensors: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, spec in layout["tensors"].items():
        dtype = _DTYPES[spec["dtype"]][0]
        tensors[name] = _tame(name, [int(s) for s in spec["shape"]], dtype, gen)
    _align_spectral_vectors(tensors)
    return tensors


def _container(layout: dict[str, Any], tensors: OrderedDict[str, torch.Tensor]) -> Any:
    """The object torch.save stores: the state_dict itself, or the authors' dict around it."""
    container = layout["container"]
    if container == "torch.save state_dict":
        return tensors
    if container != "torch.save dict":
        raise ValueError(f"not a torch.save container: {container!r}")
    kinds = layout.get("top_level_values") or {}
    return {
        key: tensors if key == layout["state_dict_key"] else (0 if kinds.get(key) == "int" else None)
        for key in layout["top_level_keys"]
    }


def _write_safetensors(path: Path, tensors: OrderedDict[str, torch.Tensor], metadata: dict | None) -> None:
    """The safetensors format: u64 little-endian header length, the JSON header (space-padded to a
    multiple of 8), then the tensors' little-endian bytes back to back, in the library's order."""
    order = sorted(tensors, key=lambda name: (-_SAFETENSORS_RANK[tensors[name].dtype], name))
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name in order:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _SAFETENSORS_CODE[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in order:
            f.write(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def write_random_checkpoint(layout: dict[str, Any], out: Path, seed: int = 0) -> Path:
    """A random-valued file at `out` in the layout's official container: torch.save (the legacy,
    non-zip serialization where the layout says "legacy ...") or safetensors."""
    out = Path(out)
    tensors = random_tensors(layout, seed)
    if layout["container"] == "safetensors":
        _write_safetensors(out, tensors, layout.get("safetensors_metadata"))
    else:
        legacy = str(layout.get("torch_serialization", "")).startswith("legacy")
        torch.save(_container(layout, tensors), out, _use_new_zipfile_serialization=not legacy)
    return out
