"""The Discord adapter (discord.py): messages and slash commands in, answers out.

No model code and no job workflow live here. Each handler works out who is talking (user key, memory
thread, language), applies the Discord gate (one reply per user at a time, a cooldown), turns the
message or slash command into an `IncomingMessage` and hands it to the application core
(bots/core/conversations.py) with a `DiscordSink` for the answers; the core records it as a durable
job, admits, runs and delivers it, and answers after a restart what a crash interrupted. The twin
(avatar, voice, documents) follows the Discord user everywhere; conversation memory is per channel and
user in guilds and per DM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import discord
import yarl

from bots.core.messages import Document, IncomingMessage, ReplySink
from bots.discord.client import DiscordClient, portal_help
from bots.discord.delivery import DiscordSink, message_sink
from bots.discord.gate import AnsweredSink, Gate, UserGate
from bots.discord.inputs import download, is_audio, is_document, is_image
from bots.discord.options import DiscordOptions
from bots.jobs import Job
from bots.texts import t
from memory.keys import conversation_key, user_key

if TYPE_CHECKING:
    from bots.runtime import Components

log = logging.getLogger(__name__)

PLATFORM = "discord"
AVATAR_WORDS = ("avatar", "头像")
Say = Callable[[str], Awaitable[Any]]


class DiscordBot:
    """Runs a discord.py client for TalkTwin."""

    def __init__(self, options: DiscordOptions, components: Components) -> None:
        self.options = options
        self.core = components.core
        self.memory = components.memory
        self.knowledge = components.knowledge
        self.gate = UserGate(max_pending=options.max_pending, cooldown_s=options.cooldown_s)
        self.message_content = options.message_content_intent  # False once Discord refused it
        self.client: DiscordClient | None = None
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resuming: asyncio.Task[None] | None = None
        self._locales: dict[int, str] = {}  # user id -> the locale their last slash command carried
        self._handling: set[str] = set()  # ids of the messages let through the gate, until answered
        # a user's messages reach the gate in the order they came (the language lookup hops to a thread)
        self._arrivals: dict[int, asyncio.Lock] = {}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Log in, sync the slash commands, connect; returns once the guilds are loaded, with the jobs a
        crash interrupted being answered in the background."""
        if self.options.api_base_url:  # class attributes: discord.py has no per-client setting
            discord.http.Route.BASE = self.options.api_base_url
        if self.options.gateway_url:
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.options.gateway_url)
        # Taken before connecting: a job accepted from now on belongs to its live handler only.
        interrupted = await self.core.unfinished(PLATFORM)
        self.ready.clear()
        self._task = asyncio.create_task(self._run(), name="discord-client")
        ready = asyncio.create_task(self.ready.wait())
        await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._task.done():
            self._task.result()  # a bad token and the like: raise here, at start
        resume = self.core.resume(interrupted, self._sink_for_job)  # not gated: sent long ago
        self._resuming = asyncio.create_task(resume, name="discord-resume")

    async def _run(self) -> None:
        content = self.options.message_content_intent
        while True:
            self.client = DiscordClient(self, content)
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

    async def language_of(self, user: discord.abc.User, locale: str | None = None) -> str:
        """Their stored choice, else the locale of their latest slash command (messages carry none)."""
        if locale:
            self._locales[user.id] = locale
        return await self.core.language(self.user_key(user), self._locales.get(user.id))

    def incoming(
        self, user: discord.abc.User, guild_id: int | None, channel_id: int, message_id: int, **content: Any
    ) -> IncomingMessage:
        return IncomingMessage(
            platform=PLATFORM,
            chat=str(channel_id),
            message_id=str(message_id),
            user=self.user_key(user),
            conversation=self.thread(user, guild_id, channel_id),
            locale=self._locales.get(user.id),
            **content,
        )

    def allowed(self, user_id: int, guild_id: int | None) -> bool:
        opts = self.options
        if not opts.allowed_users and not opts.allowed_guilds:
            return True
        return user_id in opts.allowed_users or (guild_id is not None and guild_id in opts.allowed_guilds)

    def _mentioned(self, message: discord.Message) -> bool:
        me = self.client.user if self.client else None
        if me is None:
            return False
        ref = message.reference.resolved if message.reference else None
        mentioned = any(u.id == me.id for u in message.mentions)
        return mentioned or (isinstance(ref, discord.Message) and ref.author.id == me.id)

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

    # ------------------------------------------------------------------ messages
    def _sink_for_job(self, job: Job) -> DiscordSink:
        assert self.client is not None
        channel = self.client.get_partial_messageable(int(job.chat_id))
        return message_sink(channel.get_partial_message(int(job.message_id)), self.options.upload_limit_bytes)

    async def on_message(self, message: discord.Message) -> None:
        author = message.author
        if author.bot or not self._addressed(message):
            return
        arrival = self._arrivals.setdefault(author.id, asyncio.Lock())
        await arrival.acquire()  # first come, first served, taken before anything can overtake

        released = False

        def admitted() -> None:  # past the gate: the user's next message may follow
            nonlocal released
            if not released:
                released = True
                arrival.release()

        try:
            await self._on_message(message, admitted)
        finally:
            admitted()

    async def _on_message(self, message: discord.Message, admitted: Callable[[], None]) -> None:
        author = message.author
        guild_id = message.guild.id if message.guild else None
        lang = await self.language_of(author)
        if not self.allowed(author.id, guild_id):
            if guild_id is None:
                await message.reply(t("not_allowed", lang), mention_author=False)
            return
        sink = message_sink(message, self.options.upload_limit_bytes)
        incoming = self.incoming(author, guild_id, message.channel.id, message.id)
        text = self._strip_mention(message.content)
        audio = [a for a in message.attachments if is_audio(a)]
        images = [a for a in message.attachments if is_image(a)]
        documents = [a for a in message.attachments if is_document(a)]
        if audio:
            await self.submit(incoming, sink, lang, fetch=("audio", audio[0]), admitted=admitted)
        elif images:
            if guild_id is not None and not any(w in text.lower() for w in AVATAR_WORDS):
                await sink.send_text(t("dc_avatar_hint", lang))
                return
            await self.submit(incoming, sink, lang, fetch=("photo", images[0]), admitted=admitted)
        elif documents:
            for doc in documents:
                document = ("document", doc)
                await self.submit(incoming, sink, lang, fetch=document, gated=False, admitted=admitted)
        elif message.attachments:
            await sink.send_text(t("dc_unsupported", lang))
        else:  # an empty one is the core's to answer ("your message is empty"), past no gate
            await self.submit(replace(incoming, text=text), sink, lang, gated=bool(text), admitted=admitted)

    async def submit(
        self,
        message: IncomingMessage,
        sink: ReplySink,
        lang: str,
        *,
        refuse: Say | None = None,
        before: Callable[[], Awaitable[object]] | None = None,
        fetch: tuple[str, discord.Attachment] | None = None,
        gated: bool = True,
        admitted: Callable[[], None] | None = None,
    ) -> None:
        """The Discord gate, then the core. `refuse` says why the gate kept the message out (default:
        the sink); `before` runs once it let it in (a slash command defers there), then `fetch`
        downloads the content; failures of either reach the user as the core's one line."""
        left = not gated

        def leave() -> None:  # when the answer is out, or the message is done with
            nonlocal left
            if not left:
                left = True
                self.gate.leave(message.user)

        if gated:
            if message.message_id in self._handling:
                return  # Discord delivered it twice; the first delivery is being answered
            verdict, wait_s = self.gate.enter(message.user)
            if admitted is not None:
                admitted()
            if verdict is not Gate.OPEN:
                if await self._accepted(message):
                    return  # redelivered after it was answered
                if verdict is Gate.BUSY:
                    line = t("busy", lang)
                else:
                    line = t("dc_cooldown", lang, seconds=max(1, math.ceil(wait_s)))
                await (refuse or sink.send_text)(line)
                return
            self._handling.add(message.message_id)
            sink = AnsweredSink(sink, leave)
        elif admitted is not None:
            admitted()
        try:
            if before is not None:
                await before()
            if fetch is not None:
                kind, attachment = fetch
                data = await download(attachment, self.options.download_limit_mb)
                content = Document(attachment.filename, data) if kind == "document" else data
                message = replace(message, **{kind: content})
            await self.core.handle(message, sink)
        except Exception as e:
            await self.core.tell_failure(sink, lang, e)
        finally:
            if gated:
                self._handling.discard(message.message_id)
            leave()

    async def _accepted(self, message: IncomingMessage) -> bool:
        job = await asyncio.to_thread(self.core.jobs.find, message.platform, message.chat, message.message_id)
        return job is not None
