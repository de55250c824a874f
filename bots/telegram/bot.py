"""The Telegram adapter (python-telegram-bot): updates in, normalised requests to the pipeline, media out.

No model code lives here. Each handler works out who is talking (user key, memory thread, language),
admits the job through the shared ReplyService, and sends back what the pipeline made.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from telegram import (
    BotCommand,
    Update,
    User,
)
from telegram.constants import ChatAction, ChatType, MessageEntityType
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bots.jobs import MAX_ATTEMPTS, Job, JobStore
from bots.service import Admission, ReplyService
from bots.telegram.commands import COMMANDS, CommandHandlers
from bots.telegram.delivery import keep_chat_action, send_result
from bots.telegram.guard import guarded
from bots.telegram.options import TelegramOptions
from bots.texts import t, user_language
from memory.keys import conversation_key, user_key
from pipeline.cancel import CancelToken
from pipeline.errors import FileTooLarge, InternalFailure, TalkTwinError
from pipeline.orchestrator import ReplyPipeline, ReplyRequest

log = logging.getLogger(__name__)


class _Turn:
    """A user's place in arrival order, given up once their job is queued (or when it never will be)."""

    def __init__(self, lock: asyncio.Lock) -> None:
        self.lock = lock
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self.lock.release()


def pipeline_format(mode: str) -> str:
    """The pipeline format for a reply mode: a video note is made as a video, delivery decides."""
    return "video" if mode == "video_note" else mode


PLATFORM = "telegram"


class TelegramBot(CommandHandlers):
    """Builds and runs the python-telegram-bot Application for TalkTwin."""

    def __init__(
        self,
        options: TelegramOptions,
        pipeline: ReplyPipeline,
        memory,
        knowledge,
        service: ReplyService,
        jobs: JobStore,
    ):
        self.options = options
        self.pipeline = pipeline
        self.memory = memory
        self.knowledge = knowledge
        self.service = service
        self.jobs = jobs
        self._resuming: asyncio.Task | None = None
        self._arrivals: dict[str, asyncio.Lock] = {}  # per user: messages queue in arrival order
        self.app = self._build()

    # ------------------------------------------------------------------ lifecycle
    def _build(self) -> Application:
        app = (
            Application.builder()
            .token(self.options.token)
            .base_url(self.options.api_base_url)
            .base_file_url(self.options.file_base_url)
            .rate_limiter(AIORateLimiter(max_retries=3))
            .concurrent_updates(True)  # a long reply for one user must not hold up everyone else
            .build()
        )
        for name in COMMANDS:
            app.add_handler(CommandHandler(name, getattr(self, f"cmd_{name}")))
        app.add_handler(CallbackQueryHandler(self.on_button))
        media = filters.VOICE | filters.AUDIO | filters.VIDEO_NOTE | filters.VIDEO
        media |= filters.Document.AUDIO | filters.Document.VIDEO
        app.add_handler(MessageHandler(media, self.on_audio))
        app.add_handler(MessageHandler(filters.PHOTO | filters.Document.IMAGE, self.on_photo))
        app.add_handler(MessageHandler(filters.Document.ALL, self.on_document))
        app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, self.on_text))
        app.add_handler(MessageHandler(filters.COMMAND, self.on_unknown_command))
        app.add_handler(MessageHandler(filters.ALL, self.on_unsupported))
        app.add_error_handler(self._on_error)
        return app

    async def start(self) -> None:
        """Connect, publish the command menu, and start long polling or the webhook server."""
        await self.app.initialize()
        await self._publish_commands()
        # Taken before polling starts: a job accepted from now on belongs to its live handler only.
        interrupted = await self.service.call(self.jobs.unfinished, PLATFORM)
        await self.app.start()
        assert self.app.updater is not None
        if self.options.webhook_url:
            await self.app.updater.start_webhook(
                listen=self.options.webhook_listen,
                port=self.options.webhook_port,
                url_path="telegram",
                webhook_url=self.options.webhook_url,
                secret_token=self.options.webhook_secret or None,
                allowed_updates=Update.ALL_TYPES,
            )
        else:
            await self.app.updater.start_polling(allowed_updates=Update.ALL_TYPES)
        self._resuming = asyncio.create_task(self._resume(interrupted))
        log.info(
            "telegram bot @%s running (%s)",
            self.app.bot.username,
            "webhook" if self.options.webhook_url else "long polling",
        )

    def describe(self) -> str:
        how = f"webhook {self.options.webhook_url}" if self.options.webhook_url else "long polling"
        return f"Telegram           @{self.app.bot.username} ({how})"

    async def stop(self) -> None:
        if self._resuming is not None:
            await self._resuming
        if self.app.updater is not None and self.app.updater.running:
            await self.app.updater.stop()
        if self.app.running:
            await self.app.stop()
        await self.app.shutdown()

    async def _publish_commands(self) -> None:
        for lang in ("en", "zh"):
            commands = [BotCommand(name, t(f"cmd_{name}", lang)) for name in COMMANDS]
            await self.app.bot.set_my_commands(commands, language_code=None if lang == "en" else lang)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("telegram error: %s", context.error, exc_info=context.error)

    # ------------------------------------------------------------------ who is talking
    def language_of(self, user: User) -> str:
        return user_language(user.language_code, self.memory.profile(self._user(user)).language)

    def _user(self, user: User) -> str:
        return user_key(PLATFORM, user.id)

    def _thread(self, update: Update) -> str:
        chat, user = update.effective_chat, update.effective_user
        assert chat is not None and user is not None
        if chat.type == ChatType.PRIVATE:
            return conversation_key(PLATFORM, user.id)
        return conversation_key(
            PLATFORM, user.id, chat.id, group=True, shared_group=self.options.group_shared_memory
        )

    def _addressed(self, update: Update) -> bool:
        """In groups, only messages that mention the bot or reply to it are for us."""
        chat, message = update.effective_chat, update.effective_message
        if chat is None or message is None or chat.type == ChatType.PRIVATE:
            return True
        replied = message.reply_to_message
        if replied is not None and replied.from_user is not None and replied.from_user.id == self.app.bot.id:
            return True
        mention = f"@{self.app.bot.username}".lower()
        for entity, text in {**message.parse_entities(), **message.parse_caption_entities()}.items():
            if entity.type == MessageEntityType.MENTION and text.lower() == mention:
                return True
            if (
                entity.type == MessageEntityType.TEXT_MENTION
                and entity.user
                and entity.user.id == self.app.bot.id
            ):
                return True
        return False

    def _strip_mention(self, text: str) -> str:
        return text.replace(f"@{self.app.bot.username}", "").strip()

    # ------------------------------------------------------------------ messages
    @guarded
    async def on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not self._addressed(update):
            return
        message = update.effective_message
        assert message is not None and message.text is not None
        await self._answer(update, text=self._strip_mention(message.text))

    @guarded
    async def on_audio(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not self._addressed(update):
            return
        message = update.effective_message
        assert message is not None
        media = message.voice or message.audio or message.video_note or message.video or message.document
        assert media is not None
        data = await self._download(media.file_id, media.file_size)
        await self._answer(update, audio=data)

    @guarded
    async def on_photo(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not self._addressed(update):
            return
        message = update.effective_message
        assert message is not None and update.effective_user is not None
        if message.photo:
            largest = message.photo[-1]
            file_id, size = largest.file_id, largest.file_size
        else:
            assert message.document is not None
            file_id, size = message.document.file_id, message.document.file_size
        image = await self._download(file_id, size)
        user = self._user(update.effective_user)
        lang = self.language_of(update.effective_user)
        await self.service.call(self.pipeline.prepare_avatar, image)  # raises NoFaceFound and friends
        await self.service.call(self.memory.set_avatar, user, image)
        request = self._request(update)
        await self._run_job(
            message.chat_id,
            message.message_id,
            user,
            lang,
            lambda out, token, mode: self.pipeline.speak(
                t("avatar_greeting", lang), replace(request, cancel=token, format=pipeline_format(mode)), out
            ),
            notice=t("avatar_set", lang),
        )

    @guarded
    async def on_document(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not self._addressed(update):
            return
        message = update.effective_message
        assert message is not None and message.document is not None and update.effective_user is not None
        document = message.document
        data = await self._download(document.file_id, document.file_size)
        user = self._user(update.effective_user)
        info = await self.service.call(
            self.knowledge.add_document, user, document.file_name or "document", data
        )
        await message.reply_text(
            t(
                "kb_added",
                self.language_of(update.effective_user),
                name=info.name,
                pages=info.pages,
                chunks=info.chunks,
            )
        )

    @guarded
    async def on_unsupported(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not self._addressed(update) or update.effective_message is None or update.effective_user is None:
            return
        await update.effective_message.reply_text(t("unsupported", self.language_of(update.effective_user)))

    @guarded
    async def on_unknown_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or message.text is None or update.effective_user is None:
            return
        command = message.text.split()[0]
        if "@" in command and not command.lower().endswith(f"@{self.app.bot.username}".lower()):
            return  # meant for another bot in the group
        await message.reply_text(
            t("unknown_command", self.language_of(update.effective_user), command=command)
        )

    # ------------------------------------------------------------------ replies
    def _request_for(self, user: str, conversation: str, mode: str | None = None, **fields) -> ReplyRequest:
        """The user's request with their avatar and voice; `mode` is the reply mode decided when the
        job was admitted (a /mode sent while it waits must not change what the pipeline writes)."""
        profile = self.memory.profile(user)
        if mode is not None:
            fields.setdefault("format", pipeline_format(mode))
        return ReplyRequest(
            user=user,
            conversation=conversation,
            avatar=self.memory.avatar(user),
            voice=profile.voice,
            **fields,
        )

    def _request(self, update: Update, **fields) -> ReplyRequest:
        assert update.effective_user is not None
        return self._request_for(self._user(update.effective_user), self._thread(update), **fields)

    async def _answer(self, update: Update, **content) -> None:
        """Record the message as a durable job first, then answer it; a redelivered update is skipped."""
        message, user = update.effective_message, update.effective_user
        assert message is not None and user is not None
        key, thread = self._user(user), self._thread(update)
        # Updates are handled concurrently: a user's messages take their place in the reply queue in
        # the order they arrived (asyncio.Lock wakes its waiters first come, first served).
        arrival = _Turn(self._arrivals.setdefault(key, asyncio.Lock()))
        await arrival.lock.acquire()
        try:
            job_id = await self.service.call(
                lambda: self.jobs.accept(
                    PLATFORM, message.chat_id, message.message_id, key, thread, **content
                )
            )
        except BaseException:
            arrival.release()
            raise
        if job_id is None:
            arrival.release()
            log.info(
                "message %s in chat %s was already accepted; not answering twice",
                message.message_id,
                message.chat_id,
            )
            return
        try:
            await self._run_job(
                message.chat_id,
                message.message_id,
                key,
                self.language_of(user),
                lambda out, token, mode: self.pipeline.reply(
                    self._request_for(key, thread, mode, cancel=token, **content), out
                ),
                job_id=job_id,
                arrival=arrival,
            )
        finally:
            arrival.release()
            self.jobs.finish(job_id)

    async def _resume(self, interrupted: list[Job]) -> None:
        """Answer the jobs a crash interrupted; tell the user about those that keep failing."""
        for job in interrupted:
            chat_id, reply_to = int(job.chat_id), int(job.message_id)
            lang = user_language(None, self.memory.profile(job.user).language)
            content = {"text": job.text} if job.text is not None else {"audio": job.audio}
            try:
                if job.attempts >= MAX_ATTEMPTS or (job.text is None and job.audio is None):
                    await self.app.bot.send_message(chat_id, t("job_lost", lang))
                    continue
                log.info("resuming job %s for %s", job.id, job.user)
                await self._run_job(
                    chat_id,
                    reply_to,
                    job.user,
                    lang,
                    lambda out, token, mode, job=job, content=content: self.pipeline.reply(
                        self._request_for(job.user, job.conversation, mode, cancel=token, **content), out
                    ),
                    job_id=job.id,
                )
            except TalkTwinError as e:
                await self.app.bot.send_message(chat_id, e.user_message(lang))
            except Exception:
                log.exception("resumed job %s failed", job.id)
                await self.app.bot.send_message(chat_id, InternalFailure().user_message(lang))
            finally:
                self.jobs.finish(job.id)

    async def _run_job(
        self,
        chat_id: int,
        reply_to: int | None,
        key: str,
        lang: str,
        job: Callable[[Path, CancelToken, str], object],
        *,
        notice: str = "",
        job_id: int | None = None,
        arrival: _Turn | None = None,
    ) -> None:
        """Admit, run on the worker with a chat action kept alive, then send the result.

        The reply mode is read once, here: the pipeline writes and delivery sends the same kind."""
        bot = self.app.bot
        verdict, retry_s = self.service.admit(key)
        if verdict is Admission.RATE_LIMITED:
            await bot.send_message(chat_id, t("rate_limited", lang, seconds=max(1, round(retry_s))))
            return
        if verdict is Admission.BUSY:
            await bot.send_message(chat_id, t("busy", lang))
            return
        if verdict is Admission.FULL:
            await bot.send_message(chat_id, t("full", lang, seconds=max(1, round(retry_s))))
            return
        if verdict is Admission.QUEUED:
            await bot.send_message(chat_id, t("queued", lang))
        mode = (await self.service.call(self.memory.profile, key)).mode
        action = {
            "video_note": ChatAction.RECORD_VIDEO_NOTE,
            "voice": ChatAction.RECORD_VOICE,
            "text": ChatAction.TYPING,
        }.get(mode, ChatAction.UPLOAD_VIDEO)
        if job_id is not None:
            await self.service.call(self.jobs.start, job_id)
        with tempfile.TemporaryDirectory(prefix="talktwin-tg-") as tmp:
            out = Path(tmp) / ("reply.ogg" if mode == "voice" else "reply.mp4")
            async with keep_chat_action(
                bot,
                chat_id,
                action,
                progress_after_s=self.options.progress_after_s,
                progress_text=t("working", lang),
            ):
                token = CancelToken()
                running = asyncio.ensure_future(self.service.run(key, job, out, token, mode, token=token))
                if arrival is not None:
                    await asyncio.sleep(0)  # the job has taken its place in the user's queue
                    arrival.release()
                result = await running
            if notice:
                await bot.send_message(chat_id, notice)
            await send_result(bot, chat_id, reply_to, result, mode, self.options.upload_limit_mb, lang)

    async def _download(self, file_id: str, size: int | None) -> bytes:
        limit = self.options.download_limit_mb
        if size is not None and size > limit * 1e6:
            raise FileTooLarge(size_mb=size / 1e6, limit_mb=limit)
        file = await self.app.bot.get_file(file_id)
        data = bytes(await file.download_as_bytearray())
        if len(data) > limit * 1e6:
            raise FileTooLarge(size_mb=len(data) / 1e6, limit_mb=limit)
        return data
