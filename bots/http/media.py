"""What the HTTP adapter serves besides the API: the web page, and the answers' media files.

An answer leaves the core's blob store when its reply is done (the core deletes blobs after
delivery); a client fetches it later by URL, so it is moved into data/media/ under a new random name
and kept there for a while (`media_ttl_s`). Names are checked, never joined into paths unchecked.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

from bots.core.blobs import FolderBlobStore
from bots.core.reply_job import ReplyOutcome

PAGE = Path(__file__).with_name("page.html")
MEDIA_NAME = re.compile(r"^[0-9a-f]{32}\.(mp4|ogg)$")


class MediaFolder:
    """Answers' media, served by URL for `ttl_s` seconds after they were made."""

    def __init__(self, folder: Path, ttl_s: float) -> None:
        self.folder = folder
        self.ttl_s = ttl_s
        folder.mkdir(parents=True, exist_ok=True)

    def keep(self, outcome: ReplyOutcome, blobs: FolderBlobStore) -> Path:
        """Move a rendered answer out of the blob store, under a new random name; media older than
        the time-to-live go (blocking)."""
        assert outcome.media is not None
        try:
            self.purge()
            source = blobs.path(outcome.media)
            target = self.folder / f"{secrets.token_hex(16)}.{'ogg' if outcome.kind == 'voice' else 'mp4'}"
            try:
                os.replace(source, target)
            except OSError:  # another file system
                shutil.copyfile(source, target)
            return target
        finally:
            blobs.delete(outcome.media)

    def find(self, name: str) -> Path | None:
        """The file a media URL names, if it is still kept (blocking)."""
        path = self.folder / name
        return path if MEDIA_NAME.fullmatch(name) and path.is_file() else None

    def purge(self) -> None:
        """Drop generated media older than the time-to-live."""
        cutoff = time.time() - self.ttl_s
        for path in self.folder.iterdir():
            if MEDIA_NAME.fullmatch(path.name) and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)


def add_file_routes(app: FastAPI, media: MediaFolder, *, authorised: Callable[..., None]) -> None:
    """`GET /` (the web page) and `GET /v1/media/{name}` (an answer's file, behind the API keys)."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(await asyncio.to_thread(PAGE.read_text, encoding="utf-8"))

    @app.get("/v1/media/{name}", dependencies=[Depends(authorised)])
    async def media_file(name: str) -> FileResponse:
        path = await asyncio.to_thread(media.find, name)
        if path is None:
            raise HTTPException(404, "no such media (they expire after an hour)")
        return FileResponse(path, media_type="video/mp4" if name.endswith(".mp4") else "audio/ogg")
