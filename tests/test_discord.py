"""The Discord bot end to end: real discord.py against a fake REST API + gateway on 127.0.0.1.

The pipeline behind it is real (TTS, renderer, encoder, memory, knowledge base); the chat model is a
rule-based one and ASR a fixed transcript, so answers are predictable. Assertions are on what the
fake captured: uploads, message references, interaction callbacks, IDENTIFY payloads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from bots.discord.bot import DiscordBot
from bots.discord.options import DiscordOptions
from bots.jobs import JobRow, JobStore
from bots.runtime import Components
from bots.service import ReplyService
from bots.texts import TEXTS
from knowledge.base import KnowledgeBase
from memory.keys import conversation_key, user_key
from memory.store import MemoryStore
from pipeline.config import Settings
from pipeline.orchestrator import ReplyPipeline
from tests.bot_helpers import (
    AnswerRecorder,
    FixedRecognizer,
    RuleChat,
    SlowJobStore,
    portrait,
    probe_mp4_bytes,
)
from tests.fakes.discord_server import (
    BOT_ID,
    CHANNEL_ID,
    MESSAGE_CONTENT,
    OPEN_CHANNEL_ID,
    TOKEN,
    Call,
    FakeDiscord,
    MiB,
    attachment,
    button,
    message,
    slash,
    user,
)
from tests.helpers import ScriptedChat, make_tone, voice_note

MENTION = {"id": str(BOT_ID), "username": "TalkTwin", "discriminator": "0", "avatar": None, "bot": True}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeDiscord]:
    api = FakeDiscord().start()
    yield api
    api.stop()


@pytest.fixture
def server(fake: FakeDiscord) -> FakeDiscord:
    fake.reset()
    return fake


@pytest.fixture(scope="module")
def tone(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("audio") / "voice.ogg"
    return make_tone(path, 1.5, ["-c:a", "libopus"]).read_bytes()


class Harness:
    """One bot with its own data directory, run inside a scenario coroutine."""

    def __init__(self, server: FakeDiscord, settings: Settings, stages, chat=None, recognizer=None, **opts):
        self.server = server
        self.chat = chat or RuleChat()
        self.recognizer = recognizer or FixedRecognizer("tell me about the moon")
        self.knowledge = KnowledgeBase.from_settings(settings)
        self.memory = MemoryStore.from_settings(settings, knowledge=self.knowledge)
        synthesizer, renderer = stages
        self.pipeline = ReplyPipeline(
            settings,
            recognizer=self.recognizer,
            chat_model=self.chat,
            synthesizer=synthesizer,
            renderer=renderer,
            context=self.memory,
        )
        self.service = ReplyService(max_pending=3, rate_limit=opts.pop("rate_limit", 60))
        base = DiscordOptions(
            token=TOKEN,
            channel_ids=frozenset({OPEN_CHANNEL_ID}),
            api_base_url=server.api_base_url,
            gateway_url=server.gateway_url,
            cooldown_s=0,
            guild_ready_timeout_s=0.1,
        )
        self.jobs = JobStore(self.memory.engine, settings.resolve(settings.paths.data_dir) / "jobs")
        self.components = Components(self.pipeline, self.memory, self.knowledge, self.service, self.jobs)
        self.bot = DiscordBot(replace(base, **opts), self.components)

    def run(self, scenario: Callable[[Harness], Awaitable[None]]) -> None:
        async def main() -> None:
            await asyncio.wait_for(self.bot.start(), 30)
            try:
                await scenario(self)
            finally:
                await self.bot.stop()
                self.service.shutdown()
                self.memory.close()

        asyncio.run(main())

    async def send(self, data: dict) -> dict:
        await asyncio.to_thread(self.server.dispatch, "MESSAGE_CREATE", data)
        return data

    async def interact(self, data: dict) -> dict:
        await asyncio.to_thread(self.server.dispatch, "INTERACTION_CREATE", data)
        return data

    async def replies(self, channel_id: int, count: int = 1, timeout: float = 120) -> list[Call]:
        return await asyncio.to_thread(self.server.wait_messages, channel_id, count, timeout)

    async def texts(self, channel_id: int, *expected: str) -> list[str]:
        return await asyncio.to_thread(self.server.wait_texts, channel_id, *expected)

    async def videos(self, channel_id: int, count: int = 1, timeout: float = 120) -> list[Call]:
        def has_video(c: Call) -> bool:
            return c.channel_id == channel_id and any(n.endswith(".mp4") for n, _ in c.files.values())

        return await asyncio.to_thread(self.server.wait_for, has_video, count, timeout)

    async def until(self, condition: Callable[[], object], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition never became true"
            await asyncio.sleep(0.1)


def dm_channel(uid: int) -> int:
    return 800_000_000_000_000_000 + uid


def dm(sender: dict, content: str = "", **kw) -> dict:
    return message(sender, dm_channel(int(sender["id"])), content, **kw)


def in_guild(sender: dict, content: str = "", channel: int = CHANNEL_ID, mention: bool = False, **kw) -> dict:
    if mention:
        content = f"<@{BOT_ID}> {content}"
        kw["mentions"] = [MENTION]
    return message(sender, channel, content, guild=True, **kw)


def file_of(call: Call) -> tuple[str, bytes]:
    (item,) = call.files.values()
    return item


def jobs_of(h: Harness, key: str) -> list[JobRow]:
    with Session(h.jobs.engine) as s:
        return list(s.scalars(select(JobRow).where(JobRow.user == key)))


def reference_of(call: Call) -> str | None:
    ref = call.payload.get("message_reference") or {}
    return str(ref["message_id"]) if "message_id" in ref else None


# ---------------------------------------------------------------------- tests
def test_dm_text_gets_an_mp4_reply_with_audio_to_that_message(server, small_settings, stages):
    ann = user(300001, "ann")

    async def scenario(h: Harness) -> None:
        identify = server.identify[-1]
        assert int(identify["intents"]) & MESSAGE_CONTENT  # asked for, as configured
        (sync,) = server.find("PUT", "/commands")
        assert {c["name"] for c in sync.payload["_list"]} == {
            "ask",
            "avatar",
            "voice",
            "mode",
            "reset",
            "forget",
            "kb",
            "cancel",
        }
        sent = await h.send(dm(ann, "Hello twin!"))
        (reply,) = await h.videos(dm_channel(300001))
        name, data = file_of(reply)
        assert name == "reply.mp4" and len(data) <= 10 * MiB
        info = probe_mp4_bytes(data)
        assert info.video_codec == "h264" and info.audio_codec == "aac" and info.audio_duration > 0.5
        assert info.width == info.height == 256
        assert reference_of(reply) == sent["id"]  # a reply to the user's message
        assert reply.payload["content"] == "Nice to hear from you. Let me think about that."
        assert server.find("POST", f"/channels/{dm_channel(300001)}/typing")  # "typing…" while working

    Harness(server, small_settings, stages).run(scenario)


def test_guild_answers_mentions_and_open_channels_only(server, small_settings, stages):
    bea = user(300002, "bea")

    async def scenario(h: Harness) -> None:
        await h.send(in_guild(bea, "just chatting among humans"))
        sent = await h.send(in_guild(bea, "hello", mention=True))
        (reply,) = await h.videos(CHANNEL_ID)
        assert reference_of(reply) == sent["id"]
        await h.send(in_guild(bea, "and in the twin channel", channel=OPEN_CHANNEL_ID))
        await h.videos(OPEN_CHANNEL_ID)
        await asyncio.sleep(0.5)
        assert len(server.messages(CHANNEL_ID)) == 1  # the unmentioned message got nothing
        assert [p[-1].content for p in h.chat.prompts] == ["hello", "and in the twin channel"]

    Harness(server, small_settings, stages).run(scenario)


def test_refused_content_intent_starts_without_it_and_says_what_to_enable(
    server, small_settings, stages, caplog: pytest.LogCaptureFixture
):
    cy = user(300003, "cy")
    server.refuse_message_content = True

    async def scenario(h: Harness) -> None:
        first, second = server.identify[-2:]
        assert int(first["intents"]) & MESSAGE_CONTENT and not int(second["intents"]) & MESSAGE_CONTENT
        assert "Message Content Intent" in caplog.text and "Privileged Gateway Intents" in caplog.text
        assert "developers/applications" in caplog.text
        await h.send(in_guild(cy, "is anyone there", channel=OPEN_CHANNEL_ID))  # arrives empty now
        await h.send(in_guild(cy, "hi", mention=True, channel=OPEN_CHANNEL_ID))
        await h.videos(OPEN_CHANNEL_ID)
        await h.send(dm(cy, "and in private"))  # DMs keep their content without the intent
        await h.videos(dm_channel(300003))
        await asyncio.sleep(0.5)
        assert [p[-1].content for p in h.chat.prompts] == ["hi", "and in private"]
        assert len(server.messages(OPEN_CHANNEL_ID)) == 1

    with caplog.at_level(logging.WARNING):
        Harness(server, small_settings, stages).run(scenario)


def test_voice_message_and_audio_file_go_through_asr(server, small_settings, stages, tone):
    dee = user(300004, "dee")

    async def scenario(h: Harness) -> None:
        url = server.add_file("voice-message.ogg", tone)
        voice = attachment(
            url, "voice-message.ogg", len(tone), "audio/ogg", duration_secs=1.5, waveform="AAAA"
        )
        sent = await h.send(dm(dee, attachments=[voice], flags=8192))
        (reply,) = await h.videos(dm_channel(300004))
        assert reference_of(reply) == sent["id"]
        assert h.chat.prompts[-1][-1].content == "tell me about the moon"  # the transcript reached the model
        assert reply.payload["content"] == "Nice to hear from you. Let me think about that."
        mp3 = attachment(server.add_file("question.ogg", tone), "question.ogg", len(tone), "audio/ogg")
        await h.send(in_guild(dee, "", mention=True, attachments=[mp3]))
        await h.videos(CHANNEL_ID)
        assert h.recognizer.calls == 2

    Harness(server, small_settings, stages).run(scenario)


def test_slash_commands_ask_settings_and_forget(server, small_settings, stages):
    eli = user(300005, "eli")
    chan = dm_channel(300005)
    doc = b"Project Falcon notes.\nThe vault code for Project Falcon is 4711.\n"

    async def scenario(h: Harness) -> None:
        key = user_key("discord", 300005)
        await h.interact(
            slash(eli, "ask", [{"name": "question", "type": 3, "value": "Hi there"}], channel_id=chan)
        )
        (deferred, answer) = await h.replies(chan, 1) and await asyncio.to_thread(
            server.wait_for, lambda c: c.channel_id == chan, 2
        )
        assert deferred.path.endswith("/callback") and deferred.payload["type"] == 5  # "thinking…"
        assert answer.path.startswith("/webhooks/") and file_of(answer)[0] == "reply.mp4"
        assert probe_mp4_bytes(file_of(answer)[1]).audio_codec == "aac"

        options = [{"name": "mode", "type": 3, "value": "text"}]
        await h.interact(slash(eli, "mode", options, channel_id=chan, locale="zh-CN"))
        texts = await h.texts(chan, "回复方式已改为：文字。")
        settings_reply = server.messages(chan)[-1]
        assert int(settings_reply.payload["flags"]) & 64  # ephemeral
        assert h.memory.profile(key).mode == "text" and texts
        await h.interact(slash(eli, "voice", [{"name": "rate", "type": 4, "value": 30}], channel_id=chan))
        await h.texts(chan, "Voice: default for the language; rate +30%")
        assert h.memory.profile(key).voice.rate == 30

        url = server.add_file("falcon.txt", doc)
        await h.send(dm(eli, attachments=[attachment(url, "falcon.txt", len(doc), "text/plain")]))
        await h.texts(chan, "I've read falcon.txt")
        await h.interact(slash(eli, "kb", channel_id=chan))
        await h.texts(chan, "Your documents:\n• falcon.txt")
        before = len(server.messages(chan))
        await h.send(dm(eli, "What is the vault code for Project Falcon?"))
        await h.replies(chan, before + 1)
        assert "4711" in h.chat.prompts[-1][0].content  # the passage reached the model

        assert jobs_of(h, key)  # the vault question was a durable job
        await h.interact(slash(eli, "forget", channel_id=chan))
        await h.texts(chan, "This deletes everything")
        prompt = server.messages(chan)[-1]
        buttons = [b["custom_id"] for row in prompt.payload["components"] for b in row["components"]]
        assert buttons == ["talktwin:forget:yes", "talktwin:forget:no"]
        await h.interact(button(eli, "talktwin:forget:yes", channel_id=chan))
        (done,) = await asyncio.to_thread(server.wait_for, lambda c: c.payload.get("type") == 7)
        assert done.payload["content"] == "Done. I've deleted all your data."
        assert h.knowledge.documents(key) == [] and h.memory.profile(key).mode == "video_note"
        assert jobs_of(h, key) == []

    Harness(server, small_settings, stages).run(scenario)


def test_photo_sets_the_avatar_in_dms_and_with_the_word_in_guilds(server, small_settings, stages):
    fay = user(300006, "fay")
    photo = portrait(mirror=True)

    async def scenario(h: Harness) -> None:
        key = user_key("discord", 300006)
        pic = attachment(server.add_file("me.jpg", photo), "me.jpg", len(photo), "image/jpeg")
        await h.send(in_guild(fay, "look at this", mention=True, attachments=[pic]))
        await h.texts(CHANNEL_ID, "To make a photo your avatar")
        assert h.memory.avatar(key) is None
        await h.send(in_guild(fay, "avatar", mention=True, attachments=[pic]))
        await h.texts(CHANNEL_ID, "Your new avatar is ready.")
        greeting = (await h.videos(CHANNEL_ID))[0]
        assert h.memory.avatar(key) == photo
        await h.send(dm(fay, "Hi"))  # the twin follows the user from the guild into DMs
        (in_dm,) = await h.videos(dm_channel(300006))
        first = probe_mp4_bytes(file_of(greeting)[1]).frames[0].astype(float)
        second = probe_mp4_bytes(file_of(in_dm)[1]).frames[0].astype(float)
        assert abs(first - second).mean() < 10  # the same (new) face in both places

        await h.interact(
            slash(
                fay,
                "avatar",
                [{"name": "reset", "type": 5, "value": True}],
                channel_id=CHANNEL_ID,
                guild=True,
            )
        )
        await h.texts(CHANNEL_ID, "Back to the default avatar.")
        assert h.memory.avatar(key) is None

    Harness(server, small_settings, stages).run(scenario)


def test_two_users_interleaved_never_see_each_other(server, small_settings, stages):
    ada, ben = user(300007, "ada"), user(300008, "ben")

    async def scenario(h: Harness) -> None:
        for u in (ada, ben):
            await h.interact(
                slash(
                    u,
                    "mode",
                    [{"name": "mode", "type": 3, "value": "text"}],
                    channel_id=CHANNEL_ID,
                    guild=True,
                )
            )
        await h.send(in_guild(ada, "Hello, my name is Ada", mention=True))
        await h.send(in_guild(ben, "Hello, my name is Ben", mention=True))
        await h.texts(CHANNEL_ID, "Nice to hear from you.")
        await asyncio.to_thread(server.wait_for, lambda c: c.payload.get("content", "").startswith("Nice"), 2)
        a = await h.send(in_guild(ada, "What is my name?", mention=True))
        b = await h.send(in_guild(ben, "What is my name?", mention=True))
        await h.texts(CHANNEL_ID, "Your name is Ada.", "Your name is Ben.")
        by_ref = {reference_of(c): c.payload["content"] for c in server.messages(CHANNEL_ID)}
        assert by_ref[a["id"]] == "Your name is Ada." and by_ref[b["id"]] == "Your name is Ben."
        for prompt in h.chat.prompts:
            text = " ".join(m.content for m in prompt)
            assert not ("Ada" in text and "Ben" in text)

    Harness(server, small_settings, stages).run(scenario)


def test_big_videos_are_reencoded_or_sent_as_audio_and_text(server, small_settings, stages):
    gus = user(300009, "gus")
    chan = dm_channel(300009)

    async def scenario(h: Harness) -> None:
        await h.send(dm(gus, "Hello"))
        (full,) = await h.videos(chan)
        size = len(file_of(full)[1])
        h.bot.options = replace(h.bot.options, upload_limit_mb=size * 0.6 / MiB)
        await h.send(dm(gus, "Hello again"))
        (_, small) = await h.videos(chan, 2)
        data = file_of(small)[1]
        assert len(data) <= size * 0.6 and probe_mp4_bytes(data).audio_codec == "aac"
        server.upload_limit = 2000  # Discord itself refuses anything bigger now
        await h.send(dm(gus, "And once more"))
        answer = "Nice to hear from you. Let me think about that."
        await asyncio.to_thread(
            server.wait_for, lambda c: c.payload.get("_message") and c.payload["content"] == answer, 3
        )
        texts = server.texts(chan)
        assert texts[-2:] == [
            "The video came out too large to send, so here is the answer as voice and text.",
            answer,
        ]
        assert all(len(d) <= 2000 for c in server.messages(chan)[2:] for _, d in c.files.values())

    Harness(server, small_settings, stages).run(scenario)


def test_bad_inputs_get_clear_replies_and_the_bot_stays_up(server, small_settings, stages):
    hal = user(300010, "hal")
    chan = dm_channel(300010)

    async def scenario(h: Harness) -> None:
        corrupt = b"OggS" + bytes(range(256)) * 8
        bad = attachment(server.add_file("broken.ogg", corrupt), "broken.ogg", len(corrupt), "audio/ogg")
        await h.send(dm(hal, attachments=[bad]))
        await h.texts(chan, "I could not read that audio.")
        huge = attachment(server.add_file("huge.mp3", b"x"), "huge.mp3", 300_000_000, "audio/mpeg")
        await h.send(dm(hal, attachments=[huge]))
        await h.texts(chan, "That file is too large (300.0 MB)")
        z = attachment(server.add_file("stuff.zip", b"PK"), "stuff.zip", 2, "application/zip")
        await h.send(dm(hal, attachments=[z]))
        await h.texts(chan, "I can't use that file.")
        await h.send(in_guild(hal, "", mention=True))
        await h.texts(CHANNEL_ID, "Your message is empty.")
        await h.send(dm(hal, "Still there?"))
        await h.videos(chan)

    Harness(server, small_settings, stages).run(scenario)


def test_allow_list_cooldown_and_one_job_at_a_time(server, small_settings, stages):
    friend, stranger = user(300011, "friend"), user(300012, "stranger")

    async def scenario(h: Harness) -> None:
        await h.send(dm(stranger, "Hi, who are you?"))
        await h.texts(dm_channel(300012), "Sorry, this bot is private.")
        await h.send(in_guild(stranger, "hello?", mention=True))
        await h.send(dm(friend, "first"))
        await h.send(dm(friend, "second"))  # while the first is in work
        texts = await h.texts(dm_channel(300011), "I'm still working on your earlier messages.")
        await h.videos(dm_channel(300011))
        await h.send(dm(friend, "third"))  # right after: the cooldown
        await h.texts(dm_channel(300011), "One moment please: you can send the next message in")
        assert server.messages(CHANNEL_ID) == [] and texts
        assert [p[-1].content for p in h.chat.prompts] == ["first"]

    Harness(
        server,
        small_settings,
        stages,
        chat=RuleChat(delay_s=1.0),
        allowed_users=frozenset({300011}),
        cooldown_s=60,
    ).run(scenario)


def test_a_users_messages_pass_the_gate_in_the_order_they_came(server, small_settings, stages):
    """The first message's language lookup is slow (a thread hop on a busy machine): the second may
    not overtake it at the gate, so the first is answered and the second told to wait."""
    gus = user(300018, "gus")

    async def scenario(h: Harness) -> None:
        language = h.bot.core.language
        calls = 0

        async def slow_first(user: str, locale: str | None = None) -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                await asyncio.sleep(0.5)
            return await language(user, locale)

        h.bot.core.language = slow_first  # type: ignore[method-assign]
        await h.send(dm(gus, "first"))
        await h.send(dm(gus, "second"))
        await h.texts(dm_channel(300018), "I'm still working on your earlier messages.")
        await h.videos(dm_channel(300018))
        assert [p[-1].content for p in h.chat.prompts] == ["first"]

    Harness(server, small_settings, stages, chat=RuleChat(delay_s=1.0)).run(scenario)


def test_long_answers_are_split_at_2000_characters(server, small_settings, stages):
    ivy = user(300013, "ivy")
    chan = dm_channel(300013)
    answer = "This answer goes on and on. " * 100  # 2,800 characters

    async def scenario(h: Harness) -> None:
        await h.interact(slash(ivy, "mode", [{"name": "mode", "type": 3, "value": "text"}], channel_id=chan))
        await h.texts(chan, "Replies will now come as: text.")
        await h.send(dm(ivy, "Tell me everything."))
        parts = [c.payload["content"] for c in await h.replies(chan, 3)][1:]
        assert len(parts) == 2 and all(len(p) <= 2000 for p in parts)
        assert " ".join(parts) == answer.strip()

    Harness(server, small_settings, stages, chat=ScriptedChat(answer)).run(scenario)


def test_a_redelivered_message_is_answered_once(server, small_settings, stages):
    kay = user(300014, "kay")
    chan = dm_channel(300014)

    async def scenario(h: Harness) -> None:
        sent = dm(kay, "Only once, please.")
        await h.send(sent)
        await h.send(sent)  # the gateway replays events after a reconnect
        (reply,) = await h.videos(chan)
        assert reference_of(reply) == sent["id"]
        await asyncio.sleep(2.0)
        assert len(server.messages(chan)) == 1 and len(h.chat.prompts) == 1  # no second answer, no "busy"

    Harness(server, small_settings, stages).run(scenario)


def test_jobs_interrupted_by_a_crash_are_answered_after_restart(server, small_settings, stages, tone):
    harness = Harness(server, small_settings, stages)
    lia, mo, ned = (user_key("discord", uid) for uid in (300015, 300016, 300017))
    # what a crashed process left behind: a text job started once, an audio job not started yet,
    # and one that already failed twice (in a guild channel)
    first = harness.jobs.accept("discord", dm_channel(300015), 5001, lia, lia, text="Are you back?")
    harness.jobs.start(first)
    harness.jobs.accept("discord", dm_channel(300016), 5002, mo, mo, audio=tone)
    thread = conversation_key("discord", 300017, CHANNEL_ID, group=True)
    third = harness.jobs.accept("discord", CHANNEL_ID, 5003, ned, thread, text="This one keeps crashing.")
    harness.jobs.start(third)
    harness.jobs.start(third)

    async def scenario(h: Harness) -> None:
        (text_reply,) = await h.videos(dm_channel(300015))
        assert reference_of(text_reply) == "5001"
        (audio_reply,) = await h.videos(dm_channel(300016))
        assert reference_of(audio_reply) == "5002"
        await h.texts(CHANNEL_ID, "Sorry, I couldn't answer one of your earlier messages.")
        (lost,) = server.messages(CHANNEL_ID)
        assert reference_of(lost) == "5003" and not lost.files
        assert [p[-1].content for p in h.chat.prompts] == ["Are you back?", "tell me about the moon"]
        await h.until(lambda: h.jobs.unfinished("discord") == [])  # each finished once answered

    harness.run(scenario)


def test_a_message_arriving_during_recovery_is_answered_once(server, small_settings, stages):
    eli = user(300019, "eli")
    chan = dm_channel(300019)
    harness = Harness(server, small_settings, stages)
    harness.jobs = harness.bot.core.jobs = SlowJobStore(harness.jobs.engine, harness.jobs.payload_dir)
    sent = dm(eli, "Are you there?")

    def as_soon_as_connected() -> None:
        while not server.identify:
            time.sleep(0.02)
        time.sleep(0.3)  # READY is out: the bot takes messages now
        server.dispatch("MESSAGE_CREATE", sent)

    sender = threading.Thread(target=as_soon_as_connected)
    sender.start()

    async def scenario(h: Harness) -> None:
        await asyncio.to_thread(sender.join)
        await h.videos(chan)
        await h.until(lambda: h.service.queue_depth() == 0)  # a second answer would be queued
        await asyncio.sleep(2.0)
        assert len(server.messages(chan)) == 1 and len(h.chat.prompts) == 1

    harness.run(scenario)


def test_cancel_stops_the_reply_in_work(server, small_settings, stages):
    ola = user(300018, "ola")
    chan = dm_channel(300018)
    stopped = "Okay, I stopped working on that."

    async def scenario(h: Harness) -> None:
        await h.interact(slash(ola, "cancel", channel_id=chan))
        await h.texts(chan, "There is nothing to stop.")
        sent = await h.send(dm(ola, "Take your time with this one."))
        await h.until(lambda: h.chat.prompts)  # the model is at work on it
        await h.interact(slash(ola, "cancel", channel_id=chan))
        await h.texts(chan, "Stopping your reply in work; it will not be sent.", stopped)
        said = {c.payload["content"]: c for c in server.messages(chan)}
        assert int(said["Stopping your reply in work; it will not be sent."].payload["flags"]) & 64
        assert reference_of(said[stopped]) == sent["id"]
        await asyncio.sleep(1.5)
        assert not [c for c in server.messages(chan) if c.files]  # no video for the stopped reply
        assert h.jobs.unfinished("discord") == []

    Harness(server, small_settings, stages, chat=RuleChat(delay_s=3.0)).run(scenario)


def test_slash_commands_are_described_in_chinese_too(server, small_settings, stages):
    async def scenario(h: Harness) -> None:
        (sync,) = server.find("PUT", "/commands")
        commands = {c["name"]: c for c in sync.payload["_list"]}
        assert commands["cancel"]["description"] == "Stop the reply in work"
        assert commands["cancel"]["description_localizations"]["zh-CN"] == "停止正在生成的回复"
        rate = next(o for o in commands["voice"]["options"] if o["name"] == "rate")
        assert rate["description_localizations"]["zh-CN"] == "语速，百分比（-50..100）"
        chinese = {v["zh"] for k, v in TEXTS.items() if k.startswith(("dc_cmd_", "dc_opt_", "cmd_"))}
        for described in [*commands.values(), *(o for c in commands.values() for o in c["options"])]:
            localized = described["description_localizations"]
            assert localized["zh-CN"] == localized["zh-TW"] != described["description"]
            assert localized["zh-CN"] in chinese and set(localized) == {"zh-CN", "zh-TW"}

    Harness(server, small_settings, stages).run(scenario)


@pytest.mark.real_models
def test_a_chinese_voice_message_gets_a_chinese_video_answer(
    server, models_installed, embedded_chat, stages, tmp_path
):
    """Real Whisper and the real embedded model behind the real discord.py client."""
    from pipeline.asr.whisper import WhisperRecognizer
    from pipeline.config import load_settings
    from pipeline.text import detect_language

    settings = load_settings(
        environ={
            "TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data"),
            "TALKTWIN_RENDER__SIZE": "256",
            "TALKTWIN_LLM__TEMPERATURE": "0",
        }
    )
    synthesizer, _ = stages
    # espeak-ng's Mandarin is robotic; Whisper base reliably hears this sentence, not every one
    voice = voice_note(synthesizer, "你好，请介绍一下你自己。", "zh", tmp_path)
    mei = user(300099, "mei")

    async def scenario(h: Harness) -> None:
        url = server.add_file("voice-message.ogg", voice)
        note = attachment(url, "voice-message.ogg", len(voice), "audio/ogg", duration_secs=2, waveform="AAAA")
        sent = await h.send(dm(mei, attachments=[note], flags=8192))
        (reply,) = await h.videos(dm_channel(300099), timeout=240)
        assert reference_of(reply) == sent["id"]
        heard = h.chat.prompts[-1][-1].content
        assert "介绍" in heard  # what Whisper made of the voice message
        assert detect_language(reply.payload["content"]) == "zh"  # the answer, in the user's language
        (name, mp4) = next(iter(reply.files.values()))
        info = probe_mp4_bytes(mp4)
        assert name.endswith(".mp4") and info.audio_codec == "aac" and info.duration > 1

    whisper = WhisperRecognizer(str(settings.resolve(settings.asr.model)))
    Harness(server, settings, stages, chat=AnswerRecorder(embedded_chat), recognizer=whisper).run(scenario)
