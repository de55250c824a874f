"""The Discord adapter (discord.py): messages and slash commands in, the pipeline's media out.

No model code lives here. Each handler works out who is talking (user key, memory thread, language),
admits the job (the Discord gate, then the shared ReplyService) and sends back what the pipeline made.
Text and audio messages are durable jobs (bots/jobs.py): recorded before any model work, skipped when
Discord delivers them twice, and answered after a restart when a crash interrupted them. The twin
(avatar, voice, documents) follows the Discord user everywhere; conversation memory is per channel and
user in guilds and per DM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import discord
import yarl
from discord import app_commands

from bots.discord.commands import ForgetView, TextsTranslator, register_commands
from bots.discord.delivery import MessageTarget, Target, send_result, send_text_ephemeral
from bots.discord.gate import Gate, UserGate
from bots.discord.inputs import is_audio, is_document, is_image, reply_format
from bots.discord.options import DiscordOptions
from bots.jobs import MAX_ATTEMPTS, Job, JobStore
from bots.service import Admission, ReplyService
from bots.texts import t, user_language
from memory.keys import conversation_key, user_key
from pipeline.cancel import CancelToken
from pipeline.errors import EmptyText, FileTooLarge, InternalFailure, TalkTwinError
from pipeline.orchestrator import ReplyPipeline, ReplyRequest, ReplyResult

log = logging.getLogger(__name__)

PLATFORM = "discord"
AVATAR_WORDS = ("avatar", "头像")
Say = Callable[[str], Awaitable[Any]]
Work = Callable[[Path, CancelToken], ReplyResult]  # runs on the worker thread
JobMaker = Callable[[], Awaitable[Work]]


def portal_help(application_id: int | None) -> str:
    """What to tell the operator when Discord refuses the message-content intent (close 4014)."""
    where = f"https://discord.com/developers/applications/{application_id or '<APPLICATION_ID>'}/bot"
    return (
        "Discord refused the privileged message-content intent (close code 4014); running without it, "
        "so in guild channels the bot only sees messages that mention it. To answer every message in "
        f"DISCORD_CHANNEL_IDS, open {where}, enable 'Message Content Intent' under 'Privileged Gateway "
        "Intents', save, and restart. (Or set [discord] message_content_intent = false to silence this.)"
    )


class _Client(discord.Client):
    """discord.py's client, wired to a DiscordBot; rebuilt when the intents change."""

    def __init__(self, bot: DiscordBot, message_content: bool) -> None:
        intents = discord.Intents.default()  # no members/presences: those are privileged too
        intents.message_content = message_content
        super().__init__(
            intents=intents,
            guild_ready_timeout=bot.options.guild_ready_timeout_s,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, replied_user=False),
        )
        self.bot = bot
        self.tree = app_commands.CommandTree(self)
        self.tree.on_error = bot.on_command_error  # type: ignore[method-assign]

    async def setup_hook(self) -> None:
        self.add_view(ForgetView(self.bot))  # persistent: the buttons work after a restart too
        register_commands(self.tree, self.bot)
        await self.tree.set_translator(TextsTranslator())
        await self.tree.sync()

    async def on_ready(self) -> None:
        log.info("discord bot %s ready in %d guild(s)", self.user, len(self.guilds))
        self.bot.ready.set()

    async def on_message(self, message: discord.Message) -> None:
        await self.bot.on_message(message)


class DiscordBot:
    """Runs a discord.py client for TalkTwin."""

    def __init__(
        self,
        options: DiscordOptions,
        pipeline: ReplyPipeline,
        memory,
        knowledge,
        service: ReplyService,
        jobs: JobStore,
    ) -> None:
        self.options = options
        self.pipeline = pipeline
        self.memory = memory
        self.knowledge = knowledge
        self.service = service
        self.jobs = jobs
        self.gate = UserGate(max_pending=options.max_pending, cooldown_s=options.cooldown_s)
        self.message_content = options.message_content_intent  # False once Discord refused it
        self.client: _Client | None = None
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resuming: asyncio.Task[None] | None = None
        self._locales: dict[int, str] = {}  # user id -> the locale their last slash command carried

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Log in, sync the slash commands, connect; returns once the guilds are loaded, with the jobs a
        crash interrupted being answered in the background."""
        if self.options.api_base_url:  # class attributes: discord.py has no per-client setting
            discord.http.Route.BASE = self.options.api_base_url
        if self.options.gateway_url:
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.options.gateway_url)
        # Taken before connecting: a job accepted from now on belongs to its live handler only.
        interrupted = await self.service.call(self.jobs.unfinished, PLATFORM)
        self.ready.clear()
        self._task = asyncio.create_task(self._run(), name="discord-client")
        ready = asyncio.create_task(self.ready.wait())
        await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._task.done():
            self._task.result()  # a bad token and the like: raise here, at start
        self._resuming = asyncio.create_task(self._resume(interrupted), name="discord-resume")

    async def _run(self) -> None:
        content = self.options.message_content_intent
        while True:
            self.client = _Client(self, content)
            try:
                async with self.client:
                    await self.client.start(self.options.token)
                return
            except discord.PrivilegedIntentsRequired:
                if not content:
                    raise
                log.warning(portal_help(self.client.application_id))
                content = self.message_content = False

    def describe(self) -> str:
        client = self.client
        guilds = len(client.guilds) if client is not None else 0
        reads = "every message in its channels" if self.message_content else "mentions and DMs only"
        return f"Discord            {client.user if client else '?'} in {guilds} guild(s), {reads}"

    async def stop(self) -> None:
        if self._resuming is not None:
            await self._resuming
        if self.client is not None:
            await self.client.close()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task

    # ------------------------------------------------------------------ who is talking
    def user_key(self, user: discord.abc.User) -> str:
        return user_key(PLATFORM, user.id)

    def thread(self, user: discord.abc.User, guild_id: int | None, channel_id: int | None) -> str:
        if guild_id is None or channel_id is None:
            return conversation_key(PLATFORM, user.id)
        return conversation_key(
            PLATFORM, user.id, channel_id, group=True, shared_group=self.options.group_shared_memory
        )

    def language_of(self, user: discord.abc.User, locale: str | None = None) -> str:
        if locale:
            self._locales[user.id] = locale
        preferred = self.memory.profile(self.user_key(user)).language
        return user_language(locale or self._locales.get(user.id), preferred)

    def allowed(self, user_id: int, guild_id: int | None) -> bool:
        opts = self.options
        if not opts.allowed_users and not opts.allowed_guilds:
            return True
        return user_id in opts.allowed_users or (guild_id is not None and guild_id in opts.allowed_guilds)

    def _mentioned(self, message: discord.Message) -> bool:
        me = self.client.user if self.client else None
        if me is None:
            return False
        if any(u.id == me.id for u in message.mentions):
            return True
        ref = message.reference.resolved if message.reference else None
        return isinstance(ref, discord.Message) and ref.author.id == me.id

    def _addressed(self, message: discord.Message) -> bool:
        """DMs, mentions (and replies to the bot), and every message in the configured channels."""
        if message.guild is None or self._mentioned(message):
            return True
        # without the content intent, unmentioned guild messages arrive empty: nothing to answer
        return self.message_content and message.channel.id in self.options.channel_ids

    def _strip_mention(self, text: str) -> str:
        me = self.client.user if self.client else None
        if me is not None:
            text = text.replace(f"<@{me.id}>", "").replace(f"<@!{me.id}>", "")
        return text.strip()

    def request(self, key: str, thread: str, **fields: Any) -> ReplyRequest:
        profile = self.memory.profile(key)
        fields.setdefault("format", reply_format(profile.mode))
        return ReplyRequest(
            user=key, conversation=thread, avatar=self.memory.avatar(key), voice=profile.voice, **fields
        )

    # ------------------------------------------------------------------ messages
    async def on_message(self, message: discord.Message) -> None:
        author = message.author
        if author.bot or not self._addressed(message):
            return
        guild_id = message.guild.id if message.guild else None
        lang = self.language_of(author)
        if not self.allowed(author.id, guild_id):
            if guild_id is None:
                await message.reply(t("not_allowed", lang), mention_author=False)
            return
        target = MessageTarget(message, self.options.upload_limit_bytes)
        try:
            await self._handle_message(message, lang, target)
        except Exception as e:
            await self._tell_failure(target.reply, lang, e)

    async def _handle_message(self, message: discord.Message, lang: str, target: MessageTarget) -> None:
        text = self._strip_mention(message.content)
        guild_id = message.guild.id if message.guild else None
        thread = self.thread(message.author, guild_id, message.channel.id)
        say = target.reply
        audio = [a for a in message.attachments if is_audio(a)]
        images = [a for a in message.attachments if is_image(a)]
        documents = [a for a in message.attachments if is_document(a)]
        if audio:
            await self._answer(message, thread, lang, target, audio=await self.download(audio[0]))
        elif images:
            wants_avatar = guild_id is None or any(w in text.lower() for w in AVATAR_WORDS)
            if not wants_avatar:
                await say(t("dc_avatar_hint", lang))
                return
            await self.set_avatar(
                message.author, images[0], thread, lang, target, say, typing=message.channel
            )
        elif documents:
            for doc in documents:
                await self.add_document(message.author, doc, say, lang)
        elif message.attachments:
            await say(t("dc_unsupported", lang))
        else:
            if not text:
                raise EmptyText("empty message")
            await self._answer(message, thread, lang, target, text=text)

    # ------------------------------------------------------------------ durable jobs
    async def _answer(
        self, message: discord.Message, thread: str, lang: str, target: MessageTarget, **content: Any
    ) -> None:
        """Record the message as a durable job first, then answer it; a redelivered message is skipped."""
        key, channel_id = self.user_key(message.author), message.channel.id
        job_id = await self.service.call(
            lambda: self.jobs.accept(PLATFORM, channel_id, message.id, key, thread, **content)
        )
        if job_id is None:
            log.info(
                "message %s in channel %s was already accepted; not answering twice", message.id, channel_id
            )
            return
        await self._settle(job_id, key, thread, lang, target, content)

    async def _resume(self, interrupted: list[Job]) -> None:
        """Answer the jobs a crash interrupted, each as a reply to its message; tell the user about
        those that keep failing or whose audio is gone."""
        assert self.client is not None
        for job in interrupted:
            channel = self.client.get_partial_messageable(int(job.chat_id))
            target = MessageTarget(
                channel.get_partial_message(int(job.message_id)), self.options.upload_limit_bytes
            )
            lang = user_language(None, self.memory.profile(job.user).language)
            if job.attempts >= MAX_ATTEMPTS or (job.text is None and job.audio is None):
                log.warning("job %s of %s is lost after %d attempt(s)", job.id, job.user, job.attempts)
                try:
                    await target.reply(t("job_lost", lang))
                except discord.HTTPException as e:
                    log.warning("could not tell %s about lost job %s: %s", job.user, job.id, e)
                await self.service.call(self.jobs.finish, job.id)
                continue
            log.info("resuming job %s for %s", job.id, job.user)
            content = {"text": job.text} if job.text is not None else {"audio": job.audio}
            await self._settle(job.id, job.user, job.conversation, lang, target, content, gated=False)

    async def _settle(
        self,
        job_id: int,
        key: str,
        thread: str,
        lang: str,
        target: MessageTarget,
        content: dict[str, Any],
        *,
        gated: bool = True,
    ) -> None:
        """Answer an accepted job, or tell the user clearly why not, then mark it finished. No `finally`:
        a shutdown mid-reply (CancelledError) leaves the job unfinished, so the restart answers it."""

        async def work() -> Work:
            return lambda out, token: self.pipeline.reply(
                self.request(key, thread, cancel=token, **content), out
            )

        try:
            await self.run_job(
                key,
                lang,
                target,
                target.reply,
                work,
                typing=target.message.channel,
                job_id=job_id,
                gated=gated,
            )
        except Exception as e:
            await self._tell_failure(target.reply, lang, e)
        await self.service.call(self.jobs.finish, job_id)

    async def _tell_failure(self, say: Say, lang: str, error: Exception) -> None:
        """A clear line for the user; the traceback goes to the log when the failure is unexpected."""
        if isinstance(error, TalkTwinError):
            log.info("user error %s: %s", error.code, error)
            line = error.user_message(lang)
        else:
            log.error("discord message failed", exc_info=error)
            line = InternalFailure().user_message(lang)
        with contextlib.suppress(Exception):
            await say(line)

    # ------------------------------------------------------------------ shared by messages and commands
    async def set_avatar(
        self,
        user: discord.abc.User,
        image: discord.Attachment,
        thread: str,
        lang: str,
        target: Target,
        say: Say,
        typing: discord.abc.Messageable | None = None,
        before: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        """Check the face, store the photo, and answer with a short greeting in the new face."""
        key = self.user_key(user)

        async def greeting() -> Work:
            data = await self.download(image)
            await self.service.call(self.pipeline.prepare_avatar, data)  # raises NoFaceFound and friends
            await self.service.call(self.memory.set_avatar, key, data)
            return lambda out, token: self.pipeline.speak(
                t("avatar_greeting", lang), self.request(key, thread, format="video", cancel=token), out
            )

        await self.run_job(
            key,
            lang,
            target,
            say,
            greeting,
            typing=typing,
            notice=t("avatar_set", lang),
            fmt="video",
            before=before,
        )

    async def add_document(
        self, user: discord.abc.User, doc: discord.Attachment, say: Say, lang: str
    ) -> None:
        data = await self.download(doc)
        info = await self.service.call(self.knowledge.add_document, self.user_key(user), doc.filename, data)
        await say(t("kb_added", lang, name=info.name, pages=info.pages, chunks=info.chunks))

    async def _gate(self, key: str, lang: str, say: Say) -> bool:
        """The Discord gate: one job per user at a time, and a cooldown between them."""
        verdict, wait_s = self.gate.enter(key)
        if verdict is Gate.BUSY:
            await say(t("busy", lang))
        elif verdict is Gate.COOLDOWN:
            await say(t("dc_cooldown", lang, seconds=max(1, math.ceil(wait_s))))
        return verdict is Gate.OPEN

    async def _admit(self, key: str, lang: str, say: Say) -> bool:
        """The shared service's admission (its rate limit and queue across adapters)."""
        admission, retry_s = self.service.admit(key)
        if admission is Admission.RATE_LIMITED:
            await say(t("rate_limited", lang, seconds=max(1, round(retry_s))))
        elif admission is Admission.BUSY:
            await say(t("busy", lang))
        elif admission is Admission.FULL:
            await say(t("full", lang, seconds=max(1, round(retry_s))))
        elif admission is Admission.QUEUED:
            await say(t("queued", lang))
        return admission in (Admission.RUN_NOW, Admission.QUEUED)

    async def run_job(
        self,
        key: str,
        lang: str,
        target: Target,
        say: Say,
        make_job: JobMaker,
        *,
        typing: discord.abc.Messageable | None = None,
        notice: str = "",
        before: Callable[[], Awaitable[Any]] | None = None,
        fmt: str | None = None,
        job_id: int | None = None,
        gated: bool = True,
    ) -> None:
        """Gate; prepare (downloads, checks); admit; run on the worker with "typing…"; send the result.

        `before` runs once the gate let the job in (a slash command defers there). The run carries a
        CancelToken, so /cancel stops it; `job_id` is the durable job whose attempt this is. A job
        resumed after a restart is not `gated`: the user sent it long ago, no cooldown applies."""
        if gated and not await self._gate(key, lang, say):
            return
        try:
            if before is not None:
                await before()
            job = await make_job()
            if not await self._admit(key, lang, say):
                return
            if job_id is not None:
                await self.service.call(self.jobs.start, job_id)
            fmt = fmt or reply_format(self.memory.profile(key).mode)
            with tempfile.TemporaryDirectory(prefix="talktwin-dc-") as tmp:
                out = Path(tmp) / ("reply.ogg" if fmt == "voice" else "reply.mp4")
                async with typing.typing() if typing is not None else contextlib.nullcontext():
                    token = CancelToken()
                    result = await self.service.run(key, job, out, token, token=token)
                if notice:
                    await target.send(notice)
                await send_result(target, result, lang)
        finally:
            if gated:
                self.gate.leave(key)

    async def download(self, attachment: discord.Attachment) -> bytes:
        limit = self.options.download_limit_mb
        if attachment.size > limit * 1e6:
            raise FileTooLarge(size_mb=attachment.size / 1e6, limit_mb=limit)
        data = await attachment.read()
        if len(data) > limit * 1e6:
            raise FileTooLarge(size_mb=len(data) / 1e6, limit_mb=limit)
        return data

    async def on_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        """Slash-command failures: a clear ephemeral line for the user, the traceback for the log."""
        cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        lang = self.language_of(interaction.user, str(interaction.locale))
        if isinstance(cause, TalkTwinError):
            log.info("user error %s for %s: %s", cause.code, interaction.user.id, cause)
            line = cause.user_message(lang)
        else:
            log.error("slash command failed", exc_info=cause)
            line = InternalFailure().user_message(lang)
        with contextlib.suppress(Exception):
            await send_text_ephemeral(interaction, line)
