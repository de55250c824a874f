"""BlobStore: media passed between the service and whatever runs its jobs, by reference.

A job carries refs, never bytes: an avatar is stored by content hash (the same photo once, however
many jobs use it), the question's audio and the rendered answer under random names. The
folder store serves processes that share a disk (the embedded default, workers on one machine);
workers on other machines need a store both sides reach.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from pipeline.config import Settings

REF = re.compile(r"[0-9a-f]{32,64}(\.[a-z0-9]{1,5})?")


class UnknownBlob(KeyError):
    """A ref that is malformed or names nothing (expired, forgotten, never stored)."""


class FolderBlobStore:
    """Blobs as files in one folder; refs are checked, so no ref reaches outside it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, suffix: str = "") -> str:
        """Store bytes for one job under a new ref (deleted when the job is done)."""
        return self._write(secrets.token_hex(16) + suffix, data)

    def put_shared(self, data: bytes, suffix: str = "") -> str:
        """Store bytes under their content hash (an avatar many jobs use); kept until forgotten or
        unused for longer than a purge's age."""
        ref = self.shared_ref(data, suffix)
        try:
            os.utime(self._path(ref))  # in use again: not purged
            return ref
        except FileNotFoundError:
            return self._write(ref, data)

    @staticmethod
    def shared_ref(data: bytes, suffix: str = "") -> str:
        """The ref `put_shared` gives these bytes."""
        return hashlib.sha256(data).hexdigest() + suffix

    def _write(self, ref: str, data: bytes) -> str:
        path = self._path(ref)
        tmp = self.root / f".{ref}.{secrets.token_hex(4)}"
        tmp.write_bytes(data)
        os.replace(tmp, path)  # readers never see half a file
        return ref

    def put_file(self, source: Path) -> str:
        """Move a finished file (a rendered answer) into the store under a new random ref."""
        ref = secrets.token_hex(16) + source.suffix.lower()
        path = self._path(ref)
        try:
            os.replace(source, path)
        except OSError:  # another file system
            shutil.copyfile(source, path)
        return ref

    def path(self, ref: str) -> Path:
        """The local file of a ref."""
        path = self._path(ref)
        if not path.is_file():
            raise UnknownBlob(ref)
        return path

    def read(self, ref: str) -> bytes:
        return self.path(ref).read_bytes()

    def delete(self, ref: str | None) -> None:
        if ref is not None:
            self._path(ref).unlink(missing_ok=True)

    def purge(self, older_than_s: float) -> int:
        """Drop blobs not touched for a while (jobs that never finished); returns how many."""
        cutoff, dropped = time.time() - older_than_s, 0
        for path in self.root.iterdir():
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                dropped += 1
        return dropped

    def _path(self, ref: str) -> Path:
        if not REF.fullmatch(ref):
            raise UnknownBlob(ref)
        return self.root / ref


def blob_store(settings: Settings) -> FolderBlobStore:
    """The configured store: `queue.blob_dir`, else <data_dir>/blobs."""
    folder = settings.queue.blob_dir or str(settings.resolve(settings.paths.data_dir) / "blobs")
    return FolderBlobStore(settings.resolve(folder))
