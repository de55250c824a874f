"""The HTTP adapter (FastAPI): the reply API, user management, health, metrics and the web page.

Like the bots it only normalises requests and returns what the application core (bots/core) made.
Users are named by the caller (`user` field / path), stored as "http:<id>"; ids are validated, never
joined into paths. The page and the answers' media files are served by bots/http/media.py; its
settings are in bots/http/options.py.

A client may send an `Idempotency-Key` header with a reply request. The job is then recorded before
any work: the same key again gets the first response back instead of a second answer, and after a
crash the retried request is answered (at most MAX_ATTEMPTS tries; bots/core/replays.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response

from bots.core.conversations import Refused, output_for
from bots.core.messages import Capabilities
from bots.core.replays import Earlier, KeyedRequests
from bots.core.reply_job import REPLY_MODES, OutputSpec
from bots.http.media import MediaFolder, add_file_routes
from bots.http.options import HttpOptions
from bots.service import Admission
from bots.texts import user_language
from memory.keys import user_key
from pipeline.errors import FileTooLarge, InternalFailure, TalkTwinError

log = logging.getLogger(__name__)

__all__ = ["HttpOptions", "create_app"]
USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
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
class _Outcome:
    """One reply request's response, kept whole so that a repeated request can get it again."""

    status: int
    body: dict
    media: Path | None = None
    headers: dict[str, str] | None = None


def create_app(components, options: HttpOptions) -> FastAPI:
    """The FastAPI app over shared `components`: replies go through `components.core`."""
    # in queue mode there is no pipeline in this process: the settings are the components' own
    settings = getattr(components, "settings", None) or components.pipeline.settings
    core = components.core
    media = MediaFolder(settings.resolve(settings.paths.data_dir) / "media", options.media_ttl_s)
    upload_limit = int(settings.limits.max_upload_mb * 1e6)
    # HTTP has no round video; it takes whatever the service accepts as an upload
    capabilities = Capabilities(max_upload_mb=settings.limits.max_upload_mb, text_limit=TEXT_LIMIT)
    keyed = KeyedRequests(components.jobs, "http")
    app = FastAPI(title="TalkTwin", version="0.1.0", description="Talk to your digital twin.")

    authorised = options.key_check()

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

    def earlier_response(earlier: Earlier, lang: str, mp4: bool) -> Response:
        """What a repeated request gets: the first response, or why there is none (yet)."""
        if earlier.state == "in_progress":
            return JSONResponse(
                {"error": "in_progress", "message": "this request is still being answered"},
                status_code=409,
                headers={"Retry-After": "5"},
            )
        if earlier.state == "lost":  # it crashed the service MAX_ATTEMPTS times
            lost = {"error": "job_lost", "message": InternalFailure().user_message(lang)}
            keyed.finish(earlier.job_id, 500, lost)
            return JSONResponse(lost, status_code=500)
        body, status = earlier.response.get("body", {}), earlier.response.get("status", 500)
        file = media.find((body.get("media_url") or "").rsplit("/", 1)[-1])
        replayed = {"Idempotent-Replayed": "true"}
        if mp4 and file is not None:
            return FileResponse(file, media_type="video/mp4", headers=replayed)
        return JSONResponse(body, status_code=status, headers=replayed)

    add_file_routes(app, media, authorised=authorised)

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
        if format not in REPLY_MODES:  # the user's reply modes: no round video over HTTP (output_for)
            raise HTTPException(422, f"format must be one of {REPLY_MODES}")
        if (text is None) == (audio is None):
            raise HTTPException(422, "send exactly one of `text` and `audio`")
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise HTTPException(422, "Idempotency-Key: 1-100 letters, digits, '_', '-', '.' or ':'")
        audio_bytes, avatar_bytes = await read_upload(audio), await read_upload(avatar)
        job_id, spec = None, None
        if idempotency_key is not None:
            claim = await asyncio.to_thread(keyed.claim, key, idempotency_key, text, audio_bytes)
            if claim.earlier is not None:
                return await asyncio.to_thread(
                    earlier_response, claim.earlier, lang_of(request), wants_mp4(request)
                )
            job_id, spec = claim.job_id, claim.spec
        spec = spec or output_for(format, capabilities, core.frame)
        try:
            outcome = await answer(
                key, user, text, audio_bytes, avatar_bytes, spec, subtitles, job_id, lang_of(request)
            )
            if job_id is not None and outcome.status != 429:  # a refused request may come again, same key
                await asyncio.to_thread(keyed.finish, job_id, outcome.status, outcome.body)
        except Exception:
            log.exception("reply failed")  # the job stays open: a retry with the same key tries again
            raise InternalFailure() from None
        finally:
            keyed.release(job_id)  # after `finish`: a repeat meanwhile is told "in progress"
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
        """Run one reply through the core: the response, a refusal (429) or a user error. An avatar
        sent with the request is for this reply only: the job's own blob, dropped with it."""
        try:
            job = await core.new_job(
                key, key, spec, text=text, audio=audio, avatar=avatar, subtitles=subtitles, job_id=job_id
            )
            done = await core.run(job, job_id=job_id)
        except Refused as refusal:
            wait = max(1, round(refusal.retry_s)) if refusal.verdict is not Admission.BUSY else 5
            body = {"error": refusal.verdict.value, "message": f"busy, try again in {wait} s"}
            return _Outcome(429, body, headers={"Retry-After": str(wait)})
        except TalkTwinError as e:
            return _Outcome(STATUS.get(e.code, 400), {"error": e.code, "message": e.user_message(lang)})
        kept = await asyncio.to_thread(media.keep, done, core.blobs) if done.media is not None else None
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
            "media_url": f"/v1/media/{kept.name}" if kept else None,
        }, kept)  # fmt: skip

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
