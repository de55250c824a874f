"""The HTTP adapter (FastAPI): the reply API, user management, health, metrics and the web page.

Like the bots it only normalises requests and returns what the pipeline made. Users are named by
the caller (`user` field / path), stored as "http:<id>"; ids are validated, never joined into paths.
Generated media is kept under data/media/ by random token for a while and served from there.

A client may send an `Idempotency-Key` header with a reply request. The job is then recorded before
any work: the same key again gets the first response back instead of a second answer, and after a
crash the retried request is answered (at most MAX_ATTEMPTS tries).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from bots.jobs import MAX_ATTEMPTS, Job
from bots.service import Admission
from bots.texts import user_language
from memory.keys import user_key
from pipeline.errors import ConfigError, FileTooLarge, InternalFailure, TalkTwinError
from pipeline.orchestrator import ReplyRequest

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MEDIA_NAME = re.compile(r"^[0-9a-f]{32}\.(mp4|ogg)$")
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
FORMATS = ("video", "video_note", "voice", "text")
STATUS = {
    "file_too_large": 413,
    "audio_too_long": 413,
    "text_too_long": 413,
    "model_missing": 503,
    "chat_model_crashed": 503,
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
    """The FastAPI app over shared `components` (pipeline, memory, knowledge, service)."""
    settings = components.pipeline.settings
    media_dir = settings.resolve(settings.paths.data_dir) / "media"
    media_dir.mkdir(parents=True, exist_ok=True)
    upload_limit = int(settings.limits.max_upload_mb * 1e6)
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
    ) -> tuple[int | None, Job | None]:
        """Record the request as a job and mark it in work: (job id, None) to answer it, or
        (None, the job recorded earlier) when it is answered already, in work, or given up."""
        with claims:  # accepting and marking in work is one step: two identical requests never both run
            job_id = jobs.accept("http", key, idempotency_key, key, key, text=text, audio=audio)
            job = None if job_id is not None else jobs.find("http", key, idempotency_key)
            if (
                job is not None
                and job.status != "done"
                and job.id not in in_work
                and job.attempts < MAX_ATTEMPTS
            ):
                job_id, job = job.id, None  # accepted before a crash or a refusal: answer it now
            if job_id is not None:
                in_work.add(job_id)
                jobs.start(job_id)
            return job_id, job

    def earlier_response(job: Job, request: Request) -> Response:
        """What a repeated request gets: the first response, or why there is none (yet)."""
        if job.status != "done" and job.id in in_work:
            return JSONResponse(
                {"error": "in_progress", "message": "this request is still being answered"},
                status_code=409,
                headers={"Retry-After": "5"},
            )
        if job.status != "done":  # it crashed the service MAX_ATTEMPTS times
            lost = {"error": "job_lost", "message": InternalFailure().user_message(lang_of(request))}
            jobs.finish(job.id, json.dumps({"status": 500, "body": lost}))
            return JSONResponse(lost, status_code=500)
        saved = json.loads(job.result or "{}")
        body, status = saved.get("body", {}), saved.get("status", 500)
        media = media_dir / (body.get("media_url") or "").rsplit("/", 1)[-1]
        replayed = {"Idempotent-Replayed": "true"}
        if (
            "video/mp4" in request.headers.get("accept", "")
            and MEDIA_NAME.fullmatch(media.name)
            and media.is_file()
        ):
            return FileResponse(media, media_type="video/mp4", headers=replayed)
        return JSONResponse(body, status_code=status, headers=replayed)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

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
        job_id = None
        if idempotency_key is not None:
            job_id, earlier = await components.service.call(claim, key, idempotency_key, text, audio_bytes)
            if earlier is not None:
                return earlier_response(earlier, request)
        try:
            outcome = await answer(key, user, text, audio_bytes, avatar_bytes, format, subtitles)
        except TalkTwinError as e:
            outcome = _Outcome(
                STATUS.get(e.code, 400), {"error": e.code, "message": e.user_message(lang_of(request))}
            )
        except Exception:
            log.exception("reply failed")  # the job stays open: a retry with the same key tries again
            raise InternalFailure() from None
        finally:
            in_work.discard(job_id or -1)
        if job_id is not None and outcome.status != 429:  # a refused request may come again, same key
            saved = json.dumps({"status": outcome.status, "body": outcome.body})
            await components.service.call(jobs.finish, job_id, saved)
        if outcome.media is not None and "video/mp4" in request.headers.get("accept", ""):
            return FileResponse(outcome.media, media_type="video/mp4")
        return JSONResponse(outcome.body, status_code=outcome.status, headers=outcome.headers)

    async def answer(
        key: str,
        user: str,
        text: str | None,
        audio: bytes | None,
        avatar: bytes | None,
        format: str,
        subtitles: bool | None,
    ) -> _Outcome:
        """Admit and run one reply."""
        verdict, retry_s = components.service.admit(key)
        if verdict in (Admission.BUSY, Admission.FULL, Admission.RATE_LIMITED):
            wait = max(1, round(retry_s)) if verdict is not Admission.BUSY else 5
            body = {"error": verdict.value, "message": f"busy, try again in {wait} s"}
            return _Outcome(429, body, headers={"Retry-After": str(wait)})
        _purge(media_dir, options.media_ttl_s)
        out = media_dir / f"{secrets.token_hex(16)}.{'ogg' if format == 'voice' else 'mp4'}"
        profile = components.memory.profile(key)
        req = ReplyRequest(
            user=key,
            text=text,
            audio=audio,
            avatar=avatar or components.memory.avatar(key),
            voice=profile.voice,
            format=format,
            subtitles=subtitles,
        )
        result = await components.service.run(key, components.pipeline.reply, req, out)
        transcript = result.transcript
        return _Outcome(200, {
            "user": user,
            "question": result.question,
            "transcript": {"text": transcript.text, "language": transcript.language} if transcript else None,
            "answer": result.answer,
            "language": result.language,
            "format": result.format,
            "duration": round(result.duration, 3),
            "truncated": result.truncated,
            "timings": result.timings.as_dict(),
            "media_url": f"/v1/media/{result.media_path.name}" if result.media_path else None,
        }, result.media_path)  # fmt: skip

    @app.get("/v1/media/{name}", dependencies=[Depends(authorised)])
    async def media(name: str) -> FileResponse:
        path = media_dir / name
        if not MEDIA_NAME.fullmatch(name) or not path.is_file():
            raise HTTPException(404, "no such media (they expire after an hour)")
        return FileResponse(path, media_type="video/mp4" if name.endswith(".mp4") else "audio/ogg")

    @app.put("/v1/users/{user_id}/avatar", dependencies=[Depends(authorised)])
    async def set_avatar(user_id: str, image: Annotated[UploadFile, File()]) -> dict:
        """Check the photo (a face must be found) and make it the user's avatar."""
        key = checked_user(user_id)
        data = await read_upload(image)
        assert data is not None
        await components.service.call(components.pipeline.prepare_avatar, data)
        await components.service.call(components.memory.set_avatar, key, data)
        return {"user": user_id, "avatar": "set"}

    @app.delete("/v1/users/{user_id}", dependencies=[Depends(authorised)])
    async def forget(user_id: str) -> dict:
        """Delete everything about the user: memory, profile, avatar, documents, media."""
        key = checked_user(user_id)
        await components.service.call(components.memory.forget, key)
        await components.service.call(jobs.forget, key)
        return {"user": user_id, "deleted": True}

    return app


def _purge(folder: Path, ttl_s: float) -> None:
    """Drop generated media older than the time-to-live."""
    cutoff = time.time() - ttl_s
    for path in folder.iterdir():
        if MEDIA_NAME.fullmatch(path.name) and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
