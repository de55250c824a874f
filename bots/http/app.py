"""The HTTP adapter (FastAPI): the reply API, user management, health, metrics and the web page.

Like the bots it only normalises requests and returns what the application core (bots/core) made.
Users are named by the caller (`user` field / path), stored as "http:<id>"; ids are validated, never
joined into paths. Generated media is moved from the core's blob store to data/media/ under a random
token, kept there for a while and served from there.

A client may send an `Idempotency-Key` header with a reply request. The job is then recorded before
any work: the same key again gets the first response back instead of a second answer, and after a
crash the retried request is answered (at most MAX_ATTEMPTS tries).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from bots.core.conversations import Refused, output_for
from bots.core.messages import Capabilities
from bots.core.reply_job import OutputSpec, ReplyOutcome
from bots.jobs import MAX_ATTEMPTS, Job
from bots.service import Admission
from bots.texts import user_language
from memory.keys import user_key
from pipeline.errors import ConfigError, FileTooLarge, InternalFailure, TalkTwinError

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MEDIA_NAME = re.compile(r"^[0-9a-f]{32}\.(mp4|ogg)$")
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
FORMATS = ("video", "video_note", "voice", "text")
TEXT_LIMIT = 1 << 20  # an answer in a JSON body has no length limit worth speaking of
STATUS = {
    "file_too_large": 413,
    "audio_too_long": 413,
    "text_too_long": 413,
    "model_missing": 503,
    "chat_model_crashed": 503,
    "worker_crashed": 503,
    "timeout": 504,
    "internal": 500,
}


@dataclass(frozen=True)
class HttpOptions:
    host: str = "127.0.0.1"
    port: int = 7870
    api_keys: frozenset[str] = frozenset()
    media_ttl_s: float = 3600

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> HttpOptions:
        """TALKTWIN_HTTP_HOST / _PORT, TALKTWIN_API_KEYS (comma-separated). Keys are required beyond
        loopback: a server reachable from the network without them refuses to start."""
        host = environ.get("TALKTWIN_HTTP_HOST", cls.host).strip() or cls.host
        try:
            port = int(environ.get("TALKTWIN_HTTP_PORT", cls.port))
        except ValueError:
            raise ConfigError("TALKTWIN_HTTP_PORT: expected a port number") from None
        keys = frozenset(k.strip() for k in environ.get("TALKTWIN_API_KEYS", "").split(",") if k.strip())
        if not keys and not _is_loopback(host):
            raise ConfigError(
                f"TALKTWIN_HTTP_HOST={host} is reachable beyond this machine: set TALKTWIN_API_KEYS too"
            )
        return cls(host=host, port=port, api_keys=keys)


@dataclass(frozen=True)
class _Outcome:
    """One reply request's response, kept whole so that a repeated request can get it again."""

    status: int
    body: dict
    media: Path | None = None
    headers: dict[str, str] | None = None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(components, options: HttpOptions) -> FastAPI:
    """The FastAPI app over shared `components`: replies go through `components.core`."""
    # in queue mode there is no pipeline in this process: the settings are the components' own
    settings = getattr(components, "settings", None) or components.pipeline.settings
    core = components.core
    media_dir = settings.resolve(settings.paths.data_dir) / "media"
    media_dir.mkdir(parents=True, exist_ok=True)
    upload_limit = int(settings.limits.max_upload_mb * 1e6)
    # HTTP has no round video; it takes whatever the service accepts as an upload
    capabilities = Capabilities(max_upload_mb=settings.limits.max_upload_mb, text_limit=TEXT_LIMIT)
    jobs = components.jobs
    in_work: set[int] = set()  # ids of idempotent jobs this process is answering right now
    app = FastAPI(title="TalkTwin", version="0.1.0", description="Talk to your digital twin.")

    def authorised(
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> None:
        if not options.api_keys:
            return
        given = x_api_key or (authorization or "").removeprefix("Bearer ").strip()
        if not any(secrets.compare_digest(given, key) for key in options.api_keys):
            raise HTTPException(401, "missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})

    def lang_of(request: Request) -> str:
        return user_language(request.headers.get("accept-language", ""))

    def wants_mp4(request: Request) -> bool:
        return "video/mp4" in request.headers.get("accept", "")

    @app.exception_handler(TalkTwinError)
    async def user_error(request: Request, exc: TalkTwinError) -> JSONResponse:
        return JSONResponse(
            {"error": exc.code, "message": exc.user_message(lang_of(request))},
            status_code=STATUS.get(exc.code, 400),
        )

    async def read_upload(upload: UploadFile | None) -> bytes | None:
        if upload is None:
            return None
        data = await upload.read(upload_limit + 1)
        if len(data) > upload_limit:
            raise FileTooLarge(size_mb=len(data) / 1e6, limit_mb=upload_limit / 1e6)
        return data

    def checked_user(user_id: str) -> str:
        if not USER_ID.fullmatch(user_id):
            raise HTTPException(422, "user ids are 1-64 letters, digits, '_' or '-'")
        return user_key("http", user_id)

    claims = threading.Lock()

    def claim(
        key: str, idempotency_key: str, text: str | None, audio: bytes | None
    ) -> tuple[int | None, OutputSpec | None, Job | None]:
        """Record the request as a job and mark it in work: (job id, the output decided for it
        before, if any, None) to answer it, or (None, None, the job recorded earlier) when it is
        answered already, in work, or given up. The core counts each attempt when it admits it."""
        with claims:  # accepting and marking in work is one step: two identical requests never both run
            job_id = jobs.accept("http", key, idempotency_key, key, key, text=text, audio=audio)
            job = None if job_id is not None else jobs.find("http", key, idempotency_key)
            spec = None
            if (
                job is not None
                and job.status != "done"
                and job.id not in in_work
                and job.attempts < MAX_ATTEMPTS
            ):
                # accepted before a crash or a refusal: answer it now, as decided when first admitted
                spec = OutputSpec(**json.loads(job.spec)) if job.spec else None
                job_id, job = job.id, None
            if job_id is not None:
                in_work.add(job_id)
            return job_id, spec, job

    def earlier_response(job: Job, lang: str, mp4: bool) -> Response:
        """What a repeated request gets: the first response, or why there is none (yet)."""
        if job.status != "done" and job.id in in_work:
            return JSONResponse(
                {"error": "in_progress", "message": "this request is still being answered"},
                status_code=409,
                headers={"Retry-After": "5"},
            )
        if job.status != "done":  # it crashed the service MAX_ATTEMPTS times
            lost = {"error": "job_lost", "message": InternalFailure().user_message(lang)}
            jobs.finish(job.id, json.dumps({"status": 500, "body": lost}))
            return JSONResponse(lost, status_code=500)
        saved = json.loads(job.result or "{}")
        body, status = saved.get("body", {}), saved.get("status", 500)
        media = media_dir / (body.get("media_url") or "").rsplit("/", 1)[-1]
        replayed = {"Idempotent-Replayed": "true"}
        if mp4 and MEDIA_NAME.fullmatch(media.name) and media.is_file():
            return FileResponse(media, media_type="video/mp4", headers=replayed)
        return JSONResponse(body, status_code=status, headers=replayed)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(await asyncio.to_thread(PAGE.read_text, encoding="utf-8"))

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "queue_depth": components.service.queue_depth()}

    @app.get("/metrics", dependencies=[Depends(authorised)])
    async def metrics() -> Response:
        return Response(components.service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/reply", dependencies=[Depends(authorised)])
    async def reply(
        request: Request,
        user: Annotated[str, Form()],
        text: Annotated[str | None, Form()] = None,
        format: Annotated[str, Form()] = "video",
        subtitles: Annotated[bool | None, Form()] = None,
        audio: Annotated[UploadFile | None, File()] = None,
        avatar: Annotated[UploadFile | None, File()] = None,
    ) -> Response:
        """Answer a text or spoken question: JSON with the answer and a media URL, or the mp4 itself
        when the request says `Accept: video/mp4`. With an `Idempotency-Key` header, a repeated
        request gets the first response again (header `Idempotent-Replayed: true`)."""
        key = checked_user(user)
        if format not in FORMATS:
            raise HTTPException(422, f"format must be one of {FORMATS}")
        if (text is None) == (audio is None):
            raise HTTPException(422, "send exactly one of `text` and `audio`")
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise HTTPException(422, "Idempotency-Key: 1-100 letters, digits, '_', '-', '.' or ':'")
        audio_bytes, avatar_bytes = await read_upload(audio), await read_upload(avatar)
        job_id, spec = None, None
        if idempotency_key is not None:
            job_id, spec, earlier = await asyncio.to_thread(claim, key, idempotency_key, text, audio_bytes)
            if earlier is not None:
                return await asyncio.to_thread(
                    earlier_response, earlier, lang_of(request), wants_mp4(request)
                )
        spec = spec or output_for(format, capabilities, core.frame)
        try:
            outcome = await answer(
                key, user, text, audio_bytes, avatar_bytes, spec, subtitles, job_id, lang_of(request)
            )
            if job_id is not None and outcome.status != 429:  # a refused request may come again, same key
                saved = json.dumps({"status": outcome.status, "body": outcome.body})
                await asyncio.to_thread(jobs.finish, job_id, saved)
        except Exception:
            log.exception("reply failed")  # the job stays open: a retry with the same key tries again
            raise InternalFailure() from None
        finally:
            in_work.discard(job_id or -1)  # after `finish`: a repeat meanwhile is told "in progress"
        if outcome.media is not None and wants_mp4(request):
            return FileResponse(outcome.media, media_type="video/mp4")
        return JSONResponse(outcome.body, status_code=outcome.status, headers=outcome.headers)

    async def answer(
        key: str,
        user: str,
        text: str | None,
        audio: bytes | None,
        avatar: bytes | None,
        spec: OutputSpec,
        subtitles: bool | None,
        job_id: int | None,
        lang: str,
    ) -> _Outcome:
        """Run one reply through the core: the response, a refusal (429) or a user error."""
        own_avatar = None
        try:
            job = await core.new_job(
                key, key, spec, text=text, audio=audio, subtitles=subtitles, job_id=job_id
            )
            if avatar is not None:  # for this reply only: a blob of the job's own, deleted after it
                own_avatar = await asyncio.to_thread(core.blobs.put, avatar)
                job = replace(job, avatar=own_avatar)
            done = await core.run(job, job_id=job_id)
        except Refused as refusal:
            wait = max(1, round(refusal.retry_s)) if refusal.verdict is not Admission.BUSY else 5
            body = {"error": refusal.verdict.value, "message": f"busy, try again in {wait} s"}
            return _Outcome(429, body, headers={"Retry-After": str(wait)})
        except TalkTwinError as e:
            return _Outcome(STATUS.get(e.code, 400), {"error": e.code, "message": e.user_message(lang)})
        finally:
            await asyncio.to_thread(core.blobs.delete, own_avatar)
        media = await asyncio.to_thread(keep_media, done) if done.media is not None else None
        transcript = (
            {"text": done.transcript, "language": done.transcript_language}
            if done.transcript is not None
            else None
        )
        return _Outcome(200, {
            "user": user,
            "question": done.question,
            "transcript": transcript,
            "answer": done.answer,
            "language": done.language,
            "format": done.kind,
            "duration": round(done.duration, 3),
            "truncated": done.truncated,
            "timings": done.timings,
            "media_url": f"/v1/media/{media.name}" if media else None,
        }, media)  # fmt: skip

    def keep_media(outcome: ReplyOutcome) -> Path:
        """Move a rendered answer out of the core's blob store into the media folder, under a new
        random name; media older than the time-to-live go."""
        assert outcome.media is not None
        try:
            _purge(media_dir, options.media_ttl_s)
            source = core.blobs.path(outcome.media)
            target = media_dir / f"{secrets.token_hex(16)}.{'ogg' if outcome.kind == 'voice' else 'mp4'}"
            try:
                os.replace(source, target)
            except OSError:  # another file system
                shutil.copyfile(source, target)
            return target
        finally:
            core.blobs.delete(outcome.media)

    @app.get("/v1/media/{name}", dependencies=[Depends(authorised)])
    async def media(name: str) -> FileResponse:
        path = media_dir / name
        if not MEDIA_NAME.fullmatch(name) or not await asyncio.to_thread(path.is_file):
            raise HTTPException(404, "no such media (they expire after an hour)")
        return FileResponse(path, media_type="video/mp4" if name.endswith(".mp4") else "audio/ogg")

    @app.post("/v1/live", dependencies=[Depends(authorised)])
    async def live(request: Request) -> JSONResponse:
        """A live conversation over WebRTC: the browser's SDP offer `{"sdp", "type": "offer", "user"}`
        in, `{"sdp", "type": "answer"}` out; events on its `events` data channel (bots/live)."""
        from bots.live import answer_offer

        status, body = await answer_offer(components, await request.body(), lang_of(request), USER_ID)
        headers = {"Retry-After": str(body["retry_after_s"])} if "retry_after_s" in body else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.put("/v1/users/{user_id}/avatar", dependencies=[Depends(authorised)])
    async def set_avatar(user_id: str, image: Annotated[UploadFile, File()]) -> dict:
        """Check the photo (a face must be found) and make it the user's avatar."""
        key = checked_user(user_id)
        data = await read_upload(image)
        assert data is not None
        await asyncio.to_thread(core.check_photo, data)
        await asyncio.to_thread(components.memory.set_avatar, key, data)
        return {"user": user_id, "avatar": "set"}

    @app.delete("/v1/users/{user_id}", dependencies=[Depends(authorised)])
    async def forget(user_id: str) -> dict:
        """Delete everything about the user: memory, profile, avatar, documents, media, jobs."""
        await core.forget(checked_user(user_id))
        return {"user": user_id, "deleted": True}

    return app


def _purge(folder: Path, ttl_s: float) -> None:
    """Drop generated media older than the time-to-live."""
    cutoff = time.time() - ttl_s
    for path in folder.iterdir():
        if MEDIA_NAME.fullmatch(path.name) and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
