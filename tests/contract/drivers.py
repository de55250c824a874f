"""One driver per platform for the adapter contract, all with the same interface.

A driver plays a user of its platform: it sends what that user would send (a text, a voice message,
a photo, the same message again), changes settings the way that platform lets them be changed, and
reports what came back to the user (`answers`). It asserts nothing about the answers; the scenarios
in tests/test_adapter_contract.py do.

Each driver is thin over the set-up the platform's own tests use: Telegram and Discord reuse their
`Harness` (the real python-telegram-bot / discord.py against the fake servers), HTTP builds the
components as tests/test_http.py does and talks through FastAPI's TestClient, and the CLI runs
`run_bots.py reply` in process (as tests/test_cli.py does) with the models swapped for hermetic ones.
All four run the real pipeline (TTS, renderer at 256 px, encoder, memory) behind `RuleChat`.

`supports` says which scenarios a platform can be asked to play at all:
  reply_to    answers are replies that point at the user's message
  redelivery  the platform can deliver the same message twice (and must answer it once)
  avatar      a photo can become the user's avatar (kept for their later replies)
  greeting    a new avatar is shown at once: a greeting video in the new face
  forget      the user can have all their data deleted
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import re
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from bots.texts import t
from tests.bot_helpers import RuleChat

Mode = Literal["text", "default"]
Scenario = Callable[["Driver"], Awaitable[None]]
LANGUAGES = ("en", "zh")
PHOTO_QUESTION = "Hello, who is this?"  # the CLI takes a photo only along with a question


@dataclass(frozen=True)
class Sent:
    """A message the driver sent: `id` is the platform's id for it (what a reply points at)."""

    user: str
    id: str


@dataclass(frozen=True)
class Media:
    kind: str  # "video_note", "video", "voice", "photo"
    data: bytes
    caption: str  # the text that came with it ("" when the platform shows none)
    declared_s: float | None  # the duration the adapter declared for it, where it declares one
    reply_to: str | None  # the id of the message it answers, where the platform links them
    ref: str  # identifies this delivery (a replayed HTTP response has the first one's)
    replayed: bool = False  # an HTTP response replayed for a repeated request


@dataclass(frozen=True)
class Text:
    text: str
    reply_to: str | None
    replayed: bool = False


@dataclass(frozen=True)
class Answers:
    """Everything that reached one user, in order (answers to the driver's own set-up excluded)."""

    items: tuple[Media | Text, ...]

    @property
    def media(self) -> list[Media]:
        return [i for i in self.items if isinstance(i, Media)]

    @property
    def texts(self) -> list[str]:
        return [i.text for i in self.items if isinstance(i, Text)]

    @property
    def fresh(self) -> list[Media | Text]:
        """Answers made for the user, not replays of an earlier response."""
        return [i for i in self.items if not i.replayed]


class Driver:
    name: ClassVar[str]
    supports: ClassVar[frozenset[str]]
    answer_kind: ClassVar[str]  # what an answer to a question is by default on this platform
    upload_limit_mb: float  # the largest file the platform's adapter takes from a user
    chat: RuleChat  # the chat model behind the pipeline: its prompts show what the model was given

    def run(self, scenario: Scenario) -> None:
        raise NotImplementedError

    async def send_text(self, user: str, text: str, locale: str = "en") -> Sent:
        raise NotImplementedError

    async def send_voice(self, user: str, data: bytes, locale: str = "en") -> Sent:
        raise NotImplementedError

    async def send_photo(self, user: str, data: bytes, locale: str = "en") -> Sent:
        raise NotImplementedError

    async def resend_last(self, user: str) -> None:
        """Deliver the user's last message again, exactly as before."""
        raise NotImplementedError

    async def set_mode(self, user: str, mode: Mode) -> None:
        """Text answers, or the platform's default (a video); returns once the platform took it."""
        raise NotImplementedError

    async def forget(self, user: str) -> None:
        """Delete all of the user's data, as the user would; returns once the platform confirmed it."""
        raise NotImplementedError

    def answers(self, user: str) -> Answers:
        raise NotImplementedError

    async def settle(self) -> None:
        """Wait until nothing is in work any more and late answers would have arrived."""
        raise NotImplementedError

    def _failed(self) -> BaseException | None:
        return None

    async def wait(self, user: str, *, media: int = 0, texts: int = 0, timeout: float = 120) -> Answers:
        """The user's answers, once at least `media` media and `texts` texts have arrived."""
        deadline = time.monotonic() + timeout
        while True:
            failure = self._failed()
            if failure is not None:
                raise failure
            got = self.answers(user)
            if len(got.media) >= media and len(got.texts) >= texts:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: expected {media} media and {texts} texts for {user}: {got}")
            await asyncio.sleep(0.05)


def _mode_lines(mode: str) -> set[str]:
    return {t("mode_set", lang, mode=t(f"mode_{mode}", lang)) for lang in LANGUAGES}


# ---------------------------------------------------------------------- Telegram
class TelegramDriver(Driver):
    """A private chat with the bot; the user's language travels as `language_code` on every update."""

    name = "telegram"
    supports = frozenset({"reply_to", "redelivery", "avatar", "greeting", "forget"})
    answer_kind = "video_note"
    _uids = itertools.count(150_001)  # unique over the module: the fake server is shared
    LOCALES: ClassVar[dict[str, str]] = {"en": "en", "zh": "zh-hans"}
    MEDIA: ClassVar[dict[str, tuple[str, str]]] = {
        "sendVideoNote": ("video_note", "video_note"),
        "sendVideo": ("video", "video"),
        "sendVoice": ("voice", "voice"),
        "sendPhoto": ("photo", "photo"),
    }

    def __init__(self, server, settings, stages) -> None:
        from tests.test_telegram import Harness

        self.server = server
        self.chat = RuleChat()
        self.harness = Harness(server, settings, stages, chat=self.chat)
        self.upload_limit_mb = self.harness.bot.options.download_limit_mb
        self._uid: dict[str, int] = {}
        self._last: dict[str, dict] = {}
        self._internal: set[int] = set()  # id() of the calls that answered the driver's own set-up

    def run(self, scenario: Scenario) -> None:
        self.harness.run(lambda h: scenario(self))

    def _user(self, user: str, locale: str = "en") -> dict:
        from tests.fakes.telegram_server import user as tg_user

        uid = self._uid.setdefault(user, next(self._uids))
        return tg_user(uid, lang=self.LOCALES[locale], name=user.title())

    async def _send(self, user: str, locale: str, **content) -> Sent:
        from tests.fakes.telegram_server import message_update

        update = message_update(self._user(user, locale), **content)
        self._last[user] = update
        self.server.push(update)
        return Sent(user, str(update["message"]["message_id"]))

    async def send_text(self, user: str, text: str, locale: str = "en") -> Sent:
        return await self._send(user, locale, text=text)

    async def send_voice(self, user: str, data: bytes, locale: str = "en") -> Sent:
        voice = {
            "file_id": self.server.add_file(data),
            "file_unique_id": f"v{len(self.server.files)}",
            "duration": 2,
            "mime_type": "audio/ogg",
            "file_size": len(data),
        }
        return await self._send(user, locale, voice=voice)

    async def send_photo(self, user: str, data: bytes, locale: str = "en") -> Sent:
        from PIL import Image

        width, height = Image.open(io.BytesIO(data)).size
        size = {
            "file_id": self.server.add_file(data),
            "file_unique_id": f"p{len(self.server.files)}",
            "width": width,
            "height": height,
            "file_size": len(data),
        }
        return await self._send(user, locale, photo=[size])

    async def resend_last(self, user: str) -> None:
        self.server.push(self._last[user])  # as Telegram does when the offset was never confirmed

    async def _internal_step(self, user: str, update: dict, done: Callable[[object], bool]) -> None:
        """Push an update of the driver's own and wait for the call that confirms it."""
        uid = self._user(user)["id"]
        start = len(self.server.calls)
        self.server.push(update)
        deadline = time.monotonic() + 60
        while True:
            for call in list(self.server.calls)[start:]:
                if str(call.params.get("chat_id")) == str(uid) and done(call):
                    self._internal.add(id(call))
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"telegram: no confirmation of {update}")
            await asyncio.sleep(0.05)

    async def set_mode(self, user: str, mode: Mode) -> None:
        from tests.fakes.telegram_server import command, message_update

        name = "text" if mode == "text" else "video_note"
        lines = _mode_lines(name)
        await self._internal_step(
            user,
            message_update(self._user(user), **command(f"/mode {name}")),
            lambda c: c.method == "sendMessage" and c.params.get("text") in lines,
        )

    async def forget(self, user: str) -> None:
        from tests.fakes.telegram_server import callback_update, command, message_update

        await self._internal_step(
            user,
            message_update(self._user(user), **command("/forget")),
            lambda c: c.method == "sendMessage" and "reply_markup" in c.params,
        )
        done = {t("forget_done", lang) for lang in LANGUAGES}
        await self._internal_step(
            user,
            callback_update(self._user(user), "forget:yes"),
            lambda c: c.method == "editMessageText" and c.params.get("text") in done,
        )

    def answers(self, user: str) -> Answers:
        from tests.fakes.telegram_server import _video_note_problem

        uid = str(self._uid.get(user))
        items: list[Media | Text] = []
        for call in list(self.server.calls):
            if str(call.params.get("chat_id")) != uid or id(call) in self._internal:
                continue
            reply = (call.params.get("reply_parameters") or {}).get("message_id")
            reply_to = str(reply) if reply is not None else None
            if call.method == "sendMessage":
                items.append(Text(call.params.get("text", ""), reply_to))
            elif call.method in self.MEDIA:
                kind, part = self.MEDIA[call.method]
                data = call.files.get(part, b"")
                if kind == "video_note" and _video_note_problem(data):
                    continue  # Telegram refused it: the user never saw it
                duration = call.params.get("duration")
                items.append(
                    Media(
                        kind,
                        data,
                        call.params.get("caption") or "",
                        float(duration) if duration is not None else None,
                        reply_to,
                        ref=str(id(call)),
                    )
                )
        return Answers(tuple(items))

    async def settle(self) -> None:
        await _quiet(lambda: self.harness.service.queue_depth() == 0)


# ---------------------------------------------------------------------- Discord
class DiscordDriver(Driver):
    """Direct messages to the bot. Discord sends the user's locale with slash commands only, so a
    user in another language than English has used one (/mode, here) before their message."""

    name = "discord"
    supports = frozenset({"reply_to", "redelivery", "avatar", "greeting", "forget"})
    answer_kind = "video"
    _uids = itertools.count(310_001)
    LOCALES: ClassVar[dict[str, str]] = {"en": "en-US", "zh": "zh-CN"}
    KINDS: ClassVar[dict[str, str]] = {".mp4": "video", ".ogg": "voice", ".jpg": "photo"}

    def __init__(self, server, settings, stages) -> None:
        from tests.test_discord import Harness

        self.server = server
        self.chat = RuleChat()
        self.harness = Harness(server, settings, stages, chat=self.chat)
        self.upload_limit_mb = self.harness.bot.options.download_limit_mb
        self._uid: dict[str, int] = {}
        self._told: dict[str, str] = {}  # the locale the bot has seen on the user's slash commands
        self._last: dict[str, dict] = {}
        self._internal: set[str] = set()  # tokens of the driver's own interactions

    def run(self, scenario: Scenario) -> None:
        self.harness.run(lambda h: scenario(self))

    def _author(self, user: str) -> dict:
        from tests.fakes.discord_server import user as dc_user

        uid = self._uid.setdefault(user, next(self._uids))
        return dc_user(uid, user)

    def _channel(self, user: str) -> int:
        from tests.test_discord import dm_channel

        return dm_channel(int(self._author(user)["id"]))

    async def _interact(self, user: str, payload: dict, done: Callable[[object], bool]) -> None:
        token = payload["token"]
        self._internal.add(token)
        await asyncio.to_thread(self.server.dispatch, "INTERACTION_CREATE", payload)
        await asyncio.to_thread(self.server.wait_for, lambda c: token in c.path and done(c), 1, 60)

    async def _slash(self, user: str, name: str, options: list[dict] | None = None, locale="en") -> None:
        from tests.fakes.discord_server import slash

        payload = slash(
            self._author(user), name, options, channel_id=self._channel(user), locale=self.LOCALES[locale]
        )
        await self._interact(user, payload, lambda c: bool(c.payload.get("_message")))
        self._told[user] = locale

    async def _speak_as(self, user: str, locale: str) -> None:
        if locale != self._told.get(user, "en"):
            await self._slash(user, "mode", locale=locale)  # shows the mode; carries the locale

    async def _send(self, user: str, locale: str, content: str = "", **kw) -> Sent:
        from tests.fakes.discord_server import message

        await self._speak_as(user, locale)
        data = message(self._author(user), self._channel(user), content, **kw)
        self._last[user] = data
        await asyncio.to_thread(self.server.dispatch, "MESSAGE_CREATE", data)
        return Sent(user, data["id"])

    async def send_text(self, user: str, text: str, locale: str = "en") -> Sent:
        return await self._send(user, locale, text)

    async def send_voice(self, user: str, data: bytes, locale: str = "en") -> Sent:
        from tests.fakes.discord_server import attachment

        url = self.server.add_file("voice-message.ogg", data)
        voice = attachment(url, "voice-message.ogg", len(data), "audio/ogg", duration_secs=2, waveform="AAAA")
        return await self._send(user, locale, attachments=[voice], flags=8192)

    async def send_photo(self, user: str, data: bytes, locale: str = "en") -> Sent:
        from tests.fakes.discord_server import attachment

        url = self.server.add_file("me.jpg", data)
        return await self._send(
            user, locale, attachments=[attachment(url, "me.jpg", len(data), "image/jpeg")]
        )

    async def resend_last(self, user: str) -> None:
        await asyncio.to_thread(self.server.dispatch, "MESSAGE_CREATE", self._last[user])

    async def set_mode(self, user: str, mode: Mode) -> None:
        value = "text" if mode == "text" else "video"
        await self._slash(
            user, "mode", [{"name": "mode", "type": 3, "value": value}], self._told.get(user, "en")
        )

    async def forget(self, user: str) -> None:
        from bots.discord.commands import FORGET_YES
        from tests.fakes.discord_server import button, slash

        locale = self.LOCALES[self._told.get(user, "en")]
        ask = slash(self._author(user), "forget", channel_id=self._channel(user), locale=locale)
        await self._interact(user, ask, lambda c: bool(c.payload.get("components")))
        yes = button(self._author(user), FORGET_YES, channel_id=self._channel(user), locale=locale)
        done = {t("forget_done", lang) for lang in LANGUAGES}
        await self._interact(user, yes, lambda c: c.payload.get("content") in done)
        self._told.pop(user, None)

    def answers(self, user: str) -> Answers:
        from tests.test_discord import reference_of

        if user not in self._uid:
            return Answers(())
        items: list[Media | Text] = []
        for call in self.server.messages(self._channel(user)):
            if any(token in call.path for token in self._internal):
                continue
            content = call.payload.get("content") or ""
            files = list(call.files.values())
            if files:
                name, data = files[0]
                kind = self.KINDS.get(Path(name).suffix, "file")
                items.append(Media(kind, data, content, None, reference_of(call), ref=str(id(call))))
            else:
                items.append(Text(content, reference_of(call)))
        return Answers(tuple(items))

    async def settle(self) -> None:
        bot = self.harness.bot
        await _quiet(lambda: self.harness.service.queue_depth() == 0 and not bot._handling)


# ---------------------------------------------------------------------- HTTP
class HttpDriver(Driver):
    """A client of the reply API. It sends an Idempotency-Key with every request (so it can retry),
    its language as Accept-Language, and waits for a user's response before their next request;
    different users' requests run at the same time. A photo is PUT as the user's avatar."""

    name = "http"
    supports = frozenset({"redelivery", "avatar", "forget"})
    answer_kind = "video"
    LOCALES: ClassVar[dict[str, str]] = {"en": "en-US,en;q=0.9", "zh": "zh-CN,zh;q=0.9"}

    def __init__(self, settings, stages) -> None:
        from bots.jobs import JobStore
        from bots.runtime import Components
        from bots.service import ReplyService
        from memory.store import MemoryStore
        from pipeline.orchestrator import ReplyPipeline
        from tests.helpers import NoRecognizer

        self.chat = RuleChat()
        memory = MemoryStore.from_settings(settings)
        synthesizer, renderer = stages
        pipeline = ReplyPipeline(
            settings,
            recognizer=NoRecognizer(),
            chat_model=self.chat,
            synthesizer=synthesizer,
            renderer=renderer,
            context=memory,
        )
        jobs = JobStore(memory.engine, settings.resolve(settings.paths.data_dir) / "jobs")
        service = ReplyService(max_pending=3)
        self.components = Components(pipeline, memory, memory.knowledge, service, jobs)
        self.upload_limit_mb = settings.limits.max_upload_mb
        self.client = None
        self.retry_later: list[tuple[str, str]] = []  # (user, key) answered 409 "still in progress"
        self._answers: dict[str, list[Media | Text]] = defaultdict(list)
        self._pending: dict[str, list[asyncio.Task]] = defaultdict(list)
        self._modes: dict[str, str] = {}
        self._last: dict[str, tuple[str, dict]] = {}
        self._keys = itertools.count(1)

    def run(self, scenario: Scenario) -> None:
        from fastapi.testclient import TestClient

        from bots.http.app import HttpOptions, create_app

        try:
            with TestClient(create_app(self.components, HttpOptions())) as client:
                self.client = client
                asyncio.run(scenario(self))
        finally:
            self.components.close()

    def _request(self, user: str, key: str, method: str, url: str, kw: dict, *, queue: bool = True) -> None:
        earlier = list(self._pending[user]) if queue else []

        async def go() -> None:
            await asyncio.gather(*earlier, return_exceptions=True)  # the client waits for its answer
            response = await asyncio.to_thread(self.client.request, method, url, **kw)
            await asyncio.to_thread(self._record, user, key, response)

        self._pending[user].append(asyncio.ensure_future(go()))

    def _record(self, user: str, key: str, response) -> None:
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        body = response.json()
        if response.status_code == 409 and body.get("error") == "in_progress":
            self.retry_later.append((user, key))  # "still being answered": no answer, no error
            return
        if response.status_code != 200:
            self._answers[user].append(Text(body.get("message") or str(body.get("detail")), key, replayed))
            return
        if "answer" not in body:  # the avatar was set: 200 and nothing to show
            return
        if body.get("media_url") is None:
            self._answers[user].append(Text(body["answer"], key, replayed))
            return
        media = self.client.get(body["media_url"])
        kind = "video" if body["media_url"].endswith(".mp4") else "voice"
        item = Media(kind, media.content, body["answer"], body["duration"], key, body["media_url"], replayed)
        self._answers[user].append(item)

    def _reply(self, user: str, locale: str, data: dict, files: dict | None = None) -> Sent:
        key = f"{user}-{next(self._keys)}"
        headers = {"Idempotency-Key": key, "Accept-Language": self.LOCALES[locale]}
        kw = {"data": {"user": user, "format": self._modes.get(user, "video"), **data}, "headers": headers}
        if files:
            kw["files"] = files
        self._last[user] = (key, kw)
        self._request(user, key, "POST", "/v1/reply", kw)
        return Sent(user, key)

    async def send_text(self, user: str, text: str, locale: str = "en") -> Sent:
        return self._reply(user, locale, {"text": text})

    async def send_voice(self, user: str, data: bytes, locale: str = "en") -> Sent:
        return self._reply(user, locale, {}, {"audio": ("voice.ogg", data, "audio/ogg")})

    async def send_photo(self, user: str, data: bytes, locale: str = "en") -> Sent:
        key = f"{user}-{next(self._keys)}"
        kw = {
            "files": {"image": ("me.jpg", data, "image/jpeg")},
            "headers": {"Accept-Language": self.LOCALES[locale]},
        }
        self._request(user, key, "PUT", f"/v1/users/{user}/avatar", kw)
        return Sent(user, key)

    async def resend_last(self, user: str) -> None:
        key, kw = self._last[user]
        self._request(user, key, "POST", "/v1/reply", kw, queue=False)  # a retry does not wait

    async def set_mode(self, user: str, mode: Mode) -> None:
        self._modes[user] = "text" if mode == "text" else "video"

    async def forget(self, user: str) -> None:
        await asyncio.gather(*self._pending[user], return_exceptions=True)
        response = await asyncio.to_thread(self.client.delete, f"/v1/users/{user}")
        if response.status_code != 200 or response.json() != {"user": user, "deleted": True}:
            raise AssertionError(
                f"http: DELETE /v1/users/{user} answered {response.status_code} {response.text}"
            )

    def answers(self, user: str) -> Answers:
        return Answers(tuple(self._answers[user]))

    def _failed(self) -> BaseException | None:
        return _first_failure(self._pending)

    async def settle(self) -> None:
        await asyncio.gather(*(task for tasks in self._pending.values() for task in tasks))


# ---------------------------------------------------------------------- CLI
class CliDriver(Driver):
    """`run_bots.py reply` once per message, in process (one at a time), as user `cli:<name>`; the
    language is the terminal's (LANG). Each run's answer is the file at -o with the Q/A lines, or its
    stderr lines (progress lines, starting "· ", are not answers). A photo only comes with a question
    (--avatar, for that reply): the CLI keeps no avatar."""

    name = "cli"
    supports = frozenset()
    answer_kind = "video_note"  # the configured cli.format: a square mp4 of at most 60 s
    LOCALES: ClassVar[dict[str, str]] = {"en": "en_US.UTF-8", "zh": "zh_CN.UTF-8"}
    MEDIA_LINE = re.compile(r"^(?P<path>.+)  \((?P<seconds>[\d.]+) s (?P<kind>\w+)(, voice: .*)?\)$")

    def __init__(self, settings, stages, monkeypatch, folder: Path) -> None:
        from memory.store import MemoryStore
        from pipeline.orchestrator import ReplyPipeline
        from tests.helpers import NoRecognizer

        self.chat = RuleChat()
        chat = self.chat

        def hermetic(s, *, context=None) -> ReplyPipeline:  # over the store the CLI's service built
            synthesizer, renderer = stages
            return ReplyPipeline(
                s,
                recognizer=NoRecognizer(),
                chat_model=chat,
                synthesizer=synthesizer,
                renderer=renderer,
                context=context or MemoryStore.from_settings(s),
            )

        monkeypatch.setattr(ReplyPipeline, "from_settings", hermetic)
        monkeypatch.setenv("TALKTWIN_PATHS__DATA_DIR", str(settings.resolve(settings.paths.data_dir)))
        monkeypatch.setenv("TALKTWIN_RENDER__SIZE", str(settings.render.size))
        monkeypatch.setenv("LANG", self.LOCALES["en"])
        self.monkeypatch = monkeypatch
        self.upload_limit_mb = settings.limits.max_upload_mb
        self.folder = folder
        self.runs: list[tuple[list[str], int, str, str]] = []  # (argv, exit code, stdout, stderr)
        self._answers: dict[str, list[Media | Text]] = defaultdict(list)
        self._pending: dict[str, list[asyncio.Task]] = defaultdict(list)
        self._modes: dict[str, str] = {}
        self._n = itertools.count(1)
        self._lock = threading.Lock()

    def run(self, scenario: Scenario) -> None:
        asyncio.run(scenario(self))

    def _main(self, argv: list[str], locale: str) -> tuple[int, str, str]:
        from bots.cli import main

        with self._lock:  # one process at a time: the terminal's LANG and stdout are the process's
            self.monkeypatch.setenv("LANG", self.LOCALES[locale])
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
            self.runs.append((argv, code, out.getvalue(), err.getvalue()))
            return code, out.getvalue(), err.getvalue()

    def _reply(self, user: str, locale: str, *args: str) -> Sent:
        n = next(self._n)
        output = self.folder / f"{user}-{n}.mp4"
        argv = ["reply", "--user", f"cli:{user}", *args, "-o", str(output)]
        if self._modes.get(user) == "text":
            argv += ["--format", "text"]

        async def go() -> None:
            code, out, err = await asyncio.to_thread(self._main, argv, locale)
            self._answers[user].extend(self._parse(code, out, err, str(n)))

        self._pending[user].append(asyncio.ensure_future(go()))
        return Sent(user, str(n))

    def _parse(self, code: int, out: str, err: str, sent: str) -> list[Media | Text]:
        if code != 0:
            lines = [line for line in err.splitlines() if line.strip() and not line.startswith("· ")]
            return [Text(line.removeprefix("error: "), sent) for line in lines]
        answer = next((line[3:] for line in out.splitlines() if line.startswith("A: ")), "")
        for line in out.splitlines():
            found = self.MEDIA_LINE.match(line)
            if found:
                path = Path(found["path"])
                seconds = float(found["seconds"])
                return [Media(found["kind"], path.read_bytes(), answer, seconds, sent, ref=str(path))]
        return [Text(answer, sent)]

    def _file(self, name: str, data: bytes) -> str:
        path = self.folder / f"{next(self._n)}-{name}"
        path.write_bytes(data)
        return str(path)

    async def send_text(self, user: str, text: str, locale: str = "en") -> Sent:
        return self._reply(user, locale, "--text", text)

    async def send_voice(self, user: str, data: bytes, locale: str = "en") -> Sent:
        return self._reply(user, locale, "--audio", self._file("voice.ogg", data))

    async def send_photo(self, user: str, data: bytes, locale: str = "en") -> Sent:
        return self._reply(user, locale, "--text", PHOTO_QUESTION, "--avatar", self._file("photo.jpg", data))

    async def set_mode(self, user: str, mode: Mode) -> None:
        self._modes[user] = mode

    def answers(self, user: str) -> Answers:
        return Answers(tuple(self._answers[user]))

    def _failed(self) -> BaseException | None:
        return _first_failure(self._pending)

    async def settle(self) -> None:
        await asyncio.gather(*(task for tasks in self._pending.values() for task in tasks))


# ---------------------------------------------------------------------- helpers
async def _quiet(idle: Callable[[], bool], *, timeout: float = 120, grace_s: float = 1.5) -> None:
    """Until `idle()` holds, then a grace period for anything late (a second answer would be)."""
    deadline = time.monotonic() + timeout
    while not idle():
        if time.monotonic() > deadline:
            raise TimeoutError("still busy")
        await asyncio.sleep(0.05)
    await asyncio.sleep(grace_s)
    while not idle():
        if time.monotonic() > deadline:
            raise TimeoutError("still busy")
        await asyncio.sleep(0.05)


def _first_failure(pending: dict[str, list[asyncio.Task]]) -> BaseException | None:
    for task in (task for tasks in pending.values() for task in tasks):
        if task.done() and not task.cancelled() and task.exception() is not None:
            return task.exception()
    return None


DRIVERS: tuple[type[Driver], ...] = (TelegramDriver, DiscordDriver, HttpDriver, CliDriver)
