"""The Telegram adapter (python-telegram-bot): updates in as platform-neutral messages, answers out.

No model code and no job workflow live here: each handler works out who is talking (user key, memory
thread, language), turns the update into an `IncomingMessage` and hands it to the application core
(bots/core/conversations.py) with a `TelegramSink` for the answers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from telegram import BotCommand, Update, User
from telegram.constants import ChatType, MessageEntityType
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bots.core.messages import Document, IncomingMessage
from bots.jobs import Job
from bots.telegram.commands import COMMANDS, CommandHandlers
from bots.telegram.delivery import TelegramSink
from bots.telegram.guard import guarded
from bots.telegram.options import TelegramOptions
from bots.texts import t, user_language
from memory.keys import conversation_key, user_key
from pipeline.errors import FileTooLarge

if TYPE_CHECKING:
    from bots.runtime import Components

log = logging.getLogger(__name__)


PLATFORM = "telegram"


class TelegramBot(CommandHandlers):
    """Builds and runs the python-telegram-bot Application for TalkTwin."""

    def __init__(self, options: TelegramOptions, components: Components):
        self.options = options
        self.core = components.core
        self.memory = components.memory
        self.knowledge = components.knowledge
        self.service = components.service
        self._resuming: asyncio.Task | None = None
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
        interrupted = await self.core.unfinished(PLATFORM)
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
        self._resuming = asyncio.create_task(self.core.resume(interrupted, self._sink_for_job))
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
    def _message(self, update: Update, **content) -> IncomingMessage:
        message, user = update.effective_message, update.effective_user
        assert message is not None and user is not None
        return IncomingMessage(
            platform=PLATFORM,
            chat=str(message.chat_id),
            message_id=str(message.message_id),
            user=self._user(user),
            conversation=self._thread(update),
            locale=user.language_code,
            **content,
        )

    def _sink(self, update: Update) -> TelegramSink:
        message = update.effective_message
        assert message is not None
        return TelegramSink(self.app.bot, message.chat_id, message.message_id, self.options)

    def _sink_for_job(self, job: Job) -> TelegramSink:
        return TelegramSink(self.app.bot, int(job.chat_id), int(job.message_id), self.options)

    @guarded
    async def on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not self._addressed(update):
            return
        message = update.effective_message
        assert message is not None and message.text is not None
        text = self._strip_mention(message.text)
        await self.core.handle(self._message(update, text=text), self._sink(update))

    @guarded
    async def on_audio(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not self._addressed(update):
            return
        message = update.effective_message
        assert message is not None
        media = message.voice or message.audio or message.video_note or message.video or message.document
        assert media is not None
        data = await self._download(media.file_id, media.file_size)
        await self.core.handle(self._message(update, audio=data), self._sink(update))

    @guarded
    async def on_photo(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not self._addressed(update):
            return
        message = update.effective_message
        assert message is not None
        photo = message.photo[-1] if message.photo else message.document
        assert photo is not None
        image = await self._download(photo.file_id, photo.file_size)
        await self.core.handle(self._message(update, photo=image), self._sink(update))

    @guarded
    async def on_document(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not self._addressed(update):
            return
        message = update.effective_message
        assert message is not None and message.document is not None
        document = message.document
        data = await self._download(document.file_id, document.file_size)
        content = Document(document.file_name or "document", data)
        await self.core.handle(self._message(update, document=content), self._sink(update))

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

    # ------------------------------------------------------------------ files
    async def _download(self, file_id: str, size: int | None) -> bytes:
        limit = self.options.download_limit_mb
        if size is not None and size > limit * 1e6:
            raise FileTooLarge(size_mb=size / 1e6, limit_mb=limit)
        file = await self.app.bot.get_file(file_id)
        data = bytes(await file.download_as_bytearray())
        if len(data) > limit * 1e6:
            raise FileTooLarge(size_mb=len(data) / 1e6, limit_mb=limit)
        return data
