"""Conversations: the application core. Every adapter hands it messages; it owns what follows.

For each message: record it as a durable job before any model work (a redelivered update is
skipped), keep the user's messages in arrival order, admit it (rate limit, per-user and global
queues), decide the output once from the user's reply mode and the platform's capabilities, run it
through the execution backend, deliver through the adapter's sink, and mark it finished. After a
crash, `resume` answers what was left. Every refusal and failure reaches the user as one clear line
in their language; nothing here knows a platform.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from bots.core.blobs import FolderBlobStore
from bots.core.execution import JobExecutor
from bots.core.messages import Capabilities, IncomingMessage, ReplySink
from bots.core.reply_job import OutputSpec, ReplyJob, ReplyOutcome, decide_output
from bots.jobs import MAX_ATTEMPTS, Job, JobStore
from bots.service import Admission, ReplyService
from bots.texts import t, user_language
from knowledge.base import KnowledgeBase
from memory.store import MemoryStore
from pipeline.cancel import CancelToken
from pipeline.errors import EmptyText, InternalFailure, TalkTwinError
from pipeline.types import VoiceSettings

log = logging.getLogger(__name__)
PURGE_EVERY_S = 3600
BLOB_TTL_S = 86400  # no job lives this long; an avatar in use is written again by its next job


@dataclass(frozen=True)
class _Content:
    text: str | None = None
    audio: bytes | None = None
    say: str | None = None  # speak this instead of answering (the greeting in a new face)


class Refused(Exception):
    """Admission said no: rate-limited, the user's queue or the service's queue is full."""

    def __init__(self, verdict: Admission, retry_s: float) -> None:
        super().__init__(verdict.value)
        self.verdict = verdict
        self.retry_s = retry_s


class _Turn:
    """A user's place in arrival order, given up once their job is queued (or when it never will be)."""

    def __init__(self, lock: asyncio.Lock) -> None:
        self.lock = lock
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self.lock.release()


class Conversations:
    """The job lifecycle, texts and errors for every platform."""

    def __init__(
        self,
        *,
        memory: MemoryStore,
        knowledge: KnowledgeBase,
        jobs: JobStore,
        service: ReplyService,
        executor: JobExecutor,
        blobs: FolderBlobStore,
        check_photo: Callable[[bytes], object],
        frame: str = "square",
        job_patience_s: float = 420.0,
        default_voice: VoiceSettings | None = None,
    ) -> None:
        self.memory = memory
        self.knowledge = knowledge
        self.jobs = jobs
        self.service = service
        self.executor = executor
        self.blobs = blobs
        self.check_photo = check_photo  # raises NoFaceFound and friends for a photo that cannot be used
        self.frame = frame
        self.job_patience_s = job_patience_s  # from acceptance until an answer is no use any more
        self.default_voice = default_voice or VoiceSettings()  # [tts]: for users who chose none
        self._arrivals: dict[str, asyncio.Lock] = {}
        self._one_off: set[str] = set()  # blob refs of avatars sent for one reply only
        self._purged_at = 0.0

    # ------------------------------------------------------------------ who is talking
    def voice_of(self, user: str) -> VoiceSettings:
        """The voice the user hears: their own (/voice), else the configured one."""
        return self.memory.profile(user).chosen_voice or self.default_voice

    def set_voice(self, user: str, voice: VoiceSettings | None) -> VoiceSettings:
        """Keep the user's voice (None: back to the configured one); returns the voice they now hear.
        A choice equal to the configured voice is kept as no choice, so it follows the settings."""
        own = VoiceSettings() if voice is None or voice == self.default_voice else voice
        return self.memory.update_profile(user, voice=own).chosen_voice or self.default_voice

    async def language(self, user: str, locale: str | None = None) -> str:
        """The user's language: their /lang choice, else the platform's locale, else English."""
        profile = await asyncio.to_thread(self.memory.profile, user)
        return user_language(locale, profile.language)

    # ------------------------------------------------------------------ messages
    async def handle(self, message: IncomingMessage, sink: ReplySink) -> None:
        """Everything that happens to one message; failures become a clear line, never an exception."""
        # Updates may be handled concurrently: a user's questions take their place in the reply queue
        # in the order they arrived. The place is taken before the first await (asyncio.Lock wakes
        # its waiters first come, first served); a thread hop before it could let a later one pass.
        arrival = _Turn(self._arrivals.setdefault(message.user, asyncio.Lock()))
        await arrival.lock.acquire()
        try:
            await self._handle(message, sink, arrival)
        finally:
            arrival.release()

    async def _handle(self, message: IncomingMessage, sink: ReplySink, arrival: _Turn) -> None:
        if message.audio is None and (message.text is None or message.photo is not None):
            arrival.release()  # not a question: nothing to keep in order behind it
        lang = await self.language(message.user, message.locale)
        try:
            if message.photo is not None:
                await self._set_avatar(message, sink, lang)
            elif message.document is not None:
                info = await asyncio.to_thread(
                    self.knowledge.add_document, message.user, message.document.name, message.document.data
                )
                await sink.send_text(
                    t("kb_added", lang, name=info.name, pages=info.pages, chunks=info.chunks)
                )
            elif message.audio is not None or (message.text or "").strip():
                await self._answer(message, sink, lang, arrival)
            else:
                raise EmptyText("empty message")
        except Exception as e:
            await self.tell_failure(sink, lang, e)

    async def tell_failure(self, sink: ReplySink, lang: str, error: Exception) -> None:
        """One line for the user; the traceback goes to the log when the failure is unexpected."""
        if isinstance(error, TalkTwinError):
            log.info("user error %s: %s", error.code, error)
            line = error.user_message(lang)
        else:
            log.error("message failed", exc_info=error)
            line = InternalFailure().user_message(lang)
        try:
            await sink.send_text(line)
        except Exception:
            log.warning("could not tell the user about a failure", exc_info=True)

    async def _accept(self, message: IncomingMessage, **content: bytes | str | None) -> int | None:
        """Record the message in the job ledger; None when it was recorded before (a redelivery)."""
        job_id = await asyncio.to_thread(
            self.jobs.accept,
            message.platform,
            message.chat,
            message.message_id,
            message.user,
            message.conversation,
            **content,
        )
        if job_id is None:
            log.info(
                "message %s in %s was already accepted; not answering twice", message.message_id, message.chat
            )
        return job_id

    async def _answer(self, message: IncomingMessage, sink: ReplySink, lang: str, arrival: _Turn) -> None:
        """A question: durable job first, then the answer; a redelivered message is skipped."""
        content = {"text": message.text} if message.audio is None else {"audio": message.audio}
        try:
            job_id = await self._accept(message, **content)
            if job_id is None:
                return
            await self._settle(
                job_id, message.user, message.conversation, lang, sink, _Content(**content), arrival
            )
        finally:
            arrival.release()

    async def _settle(
        self,
        job_id: int,
        user: str,
        conversation: str,
        lang: str,
        sink: ReplySink,
        content: _Content,
        arrival: _Turn | None = None,
        spec: OutputSpec | None = None,
    ) -> None:
        """Answer an accepted job or say why not, then mark it finished. No `finally`: a shutdown
        mid-reply (CancelledError) leaves the job unfinished, so the restarted service answers it."""
        try:
            await self._reply(
                user, conversation, lang, sink, content, job_id=job_id, arrival=arrival, spec=spec
            )
        except Exception as e:
            await self.tell_failure(sink, lang, e)
        await asyncio.to_thread(self.jobs.finish, job_id)

    async def _set_avatar(self, message: IncomingMessage, sink: ReplySink, lang: str) -> None:
        """Check the face, store the photo, and greet the user in the new face; a photo delivered
        twice is recognised in the job ledger and answered once (its bytes are not kept there: were
        the service to crash meanwhile, the user is asked to send it again)."""
        job_id = await self._accept(message)
        if job_id is None:
            return
        try:
            await self._greet_in_new_face(message, sink, lang)
        except Exception as e:
            await self.tell_failure(sink, lang, e)
        await asyncio.to_thread(self.jobs.finish, job_id)

    async def _greet_in_new_face(self, message: IncomingMessage, sink: ReplySink, lang: str) -> None:
        assert message.photo is not None
        await asyncio.to_thread(self.check_photo, message.photo)
        await asyncio.to_thread(self.memory.set_avatar, message.user, message.photo)
        await self._reply(
            message.user,
            message.conversation,
            lang,
            sink,
            _Content(say=t("avatar_greeting", lang)),
            notice=t("avatar_set", lang),
        )

    # ------------------------------------------------------------------ one reply
    async def _reply(
        self,
        user: str,
        conversation: str,
        lang: str,
        sink: ReplySink,
        content: _Content,
        *,
        job_id: int | None = None,
        arrival: _Turn | None = None,
        spec: OutputSpec | None = None,
        notice: str = "",
    ) -> None:
        """Admit, run wherever the executor runs jobs, and deliver.

        The output is decided here, once (or taken from the job when it was decided before a crash):
        the executor makes and the sink sends the same kind, whatever /mode says meanwhile."""
        if spec is None:
            mode = (await asyncio.to_thread(self.memory.profile, user)).mode
            if content.say is not None and mode not in ("video_note", "video"):
                mode = "video"  # a greeting in a new face is shown, whatever the reply mode
            spec = output_for(mode, sink.capabilities, self.frame)
        job = await self.new_job(
            user, conversation, spec, text=content.text, audio=content.audio, say=content.say, job_id=job_id
        )
        try:
            async with sink.working(spec, lang):
                outcome = await self.run(
                    job, job_id=job_id, arrival=arrival, on_queued=lambda: sink.send_text(t("queued", lang))
                )
        except Refused as refusal:
            await sink.send_text(admission_text(refusal.verdict, refusal.retry_s, lang) or "")
            return
        try:
            if notice:
                await sink.send_text(notice)
            await self.deliver(sink, outcome, spec, lang)
        finally:
            self.blobs.delete(outcome.media)

    async def new_job(
        self,
        user: str,
        conversation: str,
        spec: OutputSpec,
        *,
        text: str | None = None,
        audio: bytes | None = None,
        say: str | None = None,
        avatar: bytes | None = None,
        subtitles: bool | None = None,
        job_id: int | None = None,
    ) -> ReplyJob:
        """A job for the user with their voice and avatar (or `avatar`, for this reply only); the
        media go into the blob store."""
        if time.monotonic() - self._purged_at > PURGE_EVERY_S:  # what crashed or abandoned jobs left
            self._purged_at = time.monotonic()
            await asyncio.to_thread(self.blobs.purge, BLOB_TTL_S)
        profile = await asyncio.to_thread(self.memory.profile, user)
        if avatar is not None:  # this reply's own: dropped with the job, like its audio
            avatar_ref: str | None = await asyncio.to_thread(self.blobs.put, avatar)
            self._one_off.add(avatar_ref)
        else:
            stored = await asyncio.to_thread(self.memory.avatar, user)
            avatar_ref = None
            if stored is not None:
                avatar_ref = await asyncio.to_thread(self.blobs.put_shared, stored)
        return ReplyJob(
            id=str(job_id) if job_id is not None else f"x{secrets.token_hex(8)}",
            user=user,
            conversation=conversation,
            output=spec,
            text=text,
            audio=await asyncio.to_thread(self.blobs.put, audio) if audio is not None else None,
            avatar=avatar_ref,
            voice=profile.chosen_voice,
            say=say,
            subtitles=subtitles,
            deadline=time.time() + self.job_patience_s,
        )

    async def run(
        self,
        job: ReplyJob,
        *,
        job_id: int | None = None,
        arrival: _Turn | None = None,
        on_queued: Callable[[], Awaitable[object]] | None = None,
    ) -> ReplyOutcome:
        """Admit a job and run it after the user's earlier ones; raises `Refused` when it is not let
        in. `job_id` is the durable job this is an attempt of. The job's audio is dropped after."""
        try:
            verdict, retry_s = self.service.admit(job.user)
            if verdict not in (Admission.RUN_NOW, Admission.QUEUED):
                raise Refused(verdict, retry_s)
            token = CancelToken()
            try:
                if job_id is not None:
                    await asyncio.to_thread(self.jobs.start, job_id, _spec_json(job.output))
                running = asyncio.ensure_future(
                    self.service.run_job(job.user, lambda: self.executor.run(job, token), token)
                )
            except BaseException:
                self.service.release(job.user)
                raise
            if arrival is not None:
                await asyncio.sleep(0)  # the job has taken its place in the user's queue
                arrival.release()
            if verdict is Admission.QUEUED and on_queued is not None:
                try:
                    await on_queued()
                except Exception:
                    log.warning("could not tell %s their message is queued", job.user, exc_info=True)
            return await running
        finally:
            self.blobs.delete(job.audio)
            if job.avatar in self._one_off:
                self._one_off.discard(job.avatar)
                self.blobs.delete(job.avatar)

    async def deliver(self, sink: ReplySink, outcome: ReplyOutcome, spec: OutputSpec, lang: str) -> None:
        if outcome.media is None:
            await sink.send_text(outcome.answer)
        else:
            await sink.send_media(outcome, self.blobs.path(outcome.media), spec, lang)

    # ------------------------------------------------------------------ after a crash
    async def unfinished(self, platform: str) -> list[Job]:
        """Jobs of `platform` a crash interrupted; take them before accepting new messages."""
        return await asyncio.to_thread(self.jobs.unfinished, platform)

    async def resume(self, interrupted: list[Job], sink_for: Callable[[Job], ReplySink]) -> None:
        """Answer the jobs a crash interrupted; tell the user about those that keep failing."""
        for job in interrupted:
            sink = sink_for(job)
            lang = await self.language(job.user)
            if job.attempts >= MAX_ATTEMPTS or (job.text is None and job.audio is None):
                log.warning("job %s of %s is lost after %d attempt(s)", job.id, job.user, job.attempts)
                try:
                    await sink.send_text(t("job_lost", lang))
                except Exception:
                    log.warning("could not tell %s about lost job %s", job.user, job.id, exc_info=True)
                await asyncio.to_thread(self.jobs.finish, job.id)
                continue
            log.info("resuming job %s for %s", job.id, job.user)
            spec = OutputSpec(**json.loads(job.spec)) if job.spec else None
            content = _Content(text=job.text) if job.text is not None else _Content(audio=job.audio)
            await self._settle(job.id, job.user, job.conversation, lang, sink, content, spec=spec)

    # ------------------------------------------------------------------ the user's own data
    def cancel(self, user: str) -> bool:
        """Stop the user's replies waiting or in work; False when there is none."""
        return self.service.cancel(user)

    async def forget(self, user: str) -> None:
        """Delete everything about the user in every store: memory, knowledge, jobs, avatar blobs."""
        self.service.cancel(user)
        avatar = await asyncio.to_thread(self.memory.avatar, user)
        await asyncio.to_thread(self.memory.forget, user)
        await asyncio.to_thread(self.jobs.forget, user)
        if avatar is not None:
            self.blobs.delete(self.blobs.shared_ref(avatar))


def output_for(mode: str, capabilities: Capabilities, frame: str) -> OutputSpec:
    return decide_output(
        mode,
        max_upload_mb=capabilities.max_upload_mb,
        round_video_s=capabilities.round_video.max_seconds if capabilities.round_video else None,
        frame=frame,
    )


def admission_text(verdict: Admission, retry_s: float, lang: str) -> str | None:
    """What a refused user is told; None when the job was let in."""
    seconds = max(1, round(retry_s))
    if verdict is Admission.RATE_LIMITED:
        return t("rate_limited", lang, seconds=seconds)
    if verdict is Admission.BUSY:
        return t("busy", lang)
    if verdict is Admission.FULL:
        return t("full", lang, seconds=seconds)
    return None


def _spec_json(spec: OutputSpec) -> str:
    return json.dumps(asdict(spec))
