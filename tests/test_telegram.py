"""The Telegram bot end to end: real python-telegram-bot against a fake Bot API server on 127.0.0.1.

The pipeline behind it is real (TTS, renderer, encoder, memory, knowledge base); the hermetic tier
swaps only the chat model for a rule-based one so answers are predictable. The real tier runs
Whisper and Qwen on a spoken voice note.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image

from bots.jobs import JobStore
from bots.runtime import Components
from bots.service import ReplyService
from bots.telegram.bot import TelegramBot
from bots.telegram.options import TelegramOptions
from knowledge.base import KnowledgeBase
from memory.keys import user_key
from memory.store import MemoryStore
from pipeline.config import Settings, load_settings
from pipeline.llm.base import ChatMessage
from pipeline.orchestrator import ReplyPipeline
from pipeline.types import VoiceSettings
from tests.bot_helpers import AnswerRecorder, RuleChat, SlowJobStore, portrait, probe_mp4_bytes
from tests.fakes.telegram_server import (
    BOT_ID,
    BOT_USERNAME,
    TOKEN,
    FakeBotApi,
    callback_update,
    command,
    message_update,
    user,
)
from tests.helpers import NoRecognizer, voice_note


@pytest.fixture(scope="module")
def server() -> Iterator[FakeBotApi]:
    api = FakeBotApi().start()
    yield api
    api.stop()


def options(server: FakeBotApi, **changes) -> TelegramOptions:
    base = TelegramOptions(
        token=TOKEN, api_base_url=server.base_url, file_base_url=server.file_base_url, progress_after_s=0
    )
    return replace(base, **changes)


class Harness:
    """One bot with its own data directory, run inside a scenario coroutine."""

    def __init__(self, server: FakeBotApi, settings: Settings, stages, chat=None, recognizer=None, **opts):
        self.server = server
        self.chat = chat or RuleChat()
        self.knowledge = KnowledgeBase.from_settings(settings)
        self.memory = MemoryStore.from_settings(settings, knowledge=self.knowledge)
        synthesizer, renderer = stages
        self.pipeline = ReplyPipeline(
            settings,
            recognizer=recognizer or NoRecognizer(),
            chat_model=self.chat,
            synthesizer=synthesizer,
            renderer=renderer,
            context=self.memory,
        )
        opts.setdefault("max_pending", 3)
        self.service = ReplyService(max_pending=opts["max_pending"], rate_limit=opts.pop("rate_limit", 30))
        self.jobs = JobStore(self.memory.engine, settings.resolve(settings.paths.data_dir) / "jobs")
        self.components = Components(self.pipeline, self.memory, self.knowledge, self.service, self.jobs)
        self.bot = TelegramBot(options(server, **opts), self.components)

    def run(self, scenario: Callable[[Harness], Awaitable[None]]) -> None:
        async def main() -> None:
            await self.bot.start()
            try:
                await scenario(self)
            finally:
                await self.bot.stop()
                self.service.shutdown()
                self.memory.close()

        asyncio.run(main())

    async def wait(self, method: str, count: int = 1, chat_id: int | None = None, timeout: float = 120):
        return await asyncio.to_thread(self.server.wait_for, method, count, timeout, chat_id)

    async def wait_texts(self, chat_id: int, *expected: str) -> list[str]:
        return await asyncio.to_thread(self.server.wait_texts, chat_id, list(expected))


def test_text_message_gets_a_square_video_note_with_audio(server, small_settings, stages):
    alice = user(101)

    async def scenario(h: Harness) -> None:
        server.push(message_update(alice, text="Hello twin!"))
        (call,) = await h.wait("sendVideoNote", chat_id=101)
        info = probe_mp4_bytes(call.files["video_note"])
        assert info.width == info.height == 256 and info.audio_codec == "aac" and info.duration <= 60
        assert int(call.params["length"]) == 256
        actions = [c.params["action"] for c in server.find("sendChatAction", 101)]
        assert actions and set(actions) == {"record_video_note"}
        menus = {c.params.get("language_code") for c in server.find("setMyCommands")}
        assert {None, "zh"} <= menus

    Harness(server, small_settings, stages).run(scenario)


def test_a_whole_photo_frame_is_sent_as_a_video_never_a_round_note(server, tmp_path: Path, stages):
    from pipeline.config import PROJECT_ROOT

    photo = tmp_path / "portrait.jpg"  # a 4:5 portrait: its whole-photo frame is not square
    Image.open(PROJECT_ROOT / "assets" / "avatar.jpg").crop((51, 0, 461, 512)).save(photo)
    settings = load_settings(
        environ={
            "TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data"),
            "TALKTWIN_RENDER__SIZE": "256",
            "TALKTWIN_RENDER__FRAME": "photo",
            "TALKTWIN_RENDER__AVATAR": str(photo),
        }
    )
    from pipeline.render.factory import build_renderer

    synthesizer, _ = stages
    ann = user(131)

    async def scenario(h: Harness) -> None:
        server.push(message_update(ann, text="Hello in full frame!"))
        (call,) = await h.wait("sendVideo", chat_id=131)
        info = probe_mp4_bytes(call.files["video"])
        assert info.width != info.height and server.find("sendVideoNote", 131) == []
        assert (int(call.params["width"]), int(call.params["height"])) == (info.width, info.height)

    Harness(server, settings, (synthesizer, build_renderer(settings))).run(scenario)


def test_a_mode_change_while_a_reply_waits_applies_to_the_next_reply(server, small_settings, stages):
    bea = user(132)

    async def scenario(h: Harness) -> None:
        server.push(message_update(bea, text="Tell me something."))
        await h.wait("sendChatAction", chat_id=132)  # in work: the model is writing (slowly)
        server.push(message_update(bea, text="And one more thing."))
        await h.wait_texts(132, "I'm still answering your previous message; this one is next.")
        server.push(message_update(bea, **command("/mode voice")))
        await h.wait_texts(132, "Replies will now come as: voice message.")
        h.chat.delay_s = 0  # the first reply is still in work and the second waits: the rest need not be slow
        notes = await h.wait("sendVideoNote", count=2, chat_id=132)
        for note in notes:  # mp4s, as admitted; not an OGG written into a video note
            info = probe_mp4_bytes(note.files["video_note"])
            assert info.width == info.height and info.audio_codec == "aac"
        server.push(message_update(bea, text="And now?"))
        (voice,) = await h.wait("sendVoice", chat_id=132)
        assert voice.files["voice"][:4] == b"OggS"

    Harness(server, small_settings, stages, chat=RuleChat(delay_s=3)).run(scenario)


def test_commands_answer_in_the_users_language(server, small_settings, stages):
    li = user(102, lang="zh-hans", name="李")

    async def scenario(h: Harness) -> None:
        server.push(message_update(li, **command("/start")))
        (start,) = await h.wait("sendMessage", chat_id=102)
        assert start.params["text"].startswith("你好，李！")
        server.push(message_update(li, **command("/nonsense")))
        await h.wait("sendMessage", 2, chat_id=102)
        assert server.texts(102)[1] == "我不认识命令 /nonsense。/help 可以查看所有命令。"
        server.push(message_update(li, **command("/lang en")))
        server.push(message_update(li, **command("/voice rate +30")))
        await h.wait("sendMessage", 4, chat_id=102)
        assert server.texts(102)[2] == "I'll talk to you in English."
        assert "rate +30%" in server.texts(102)[3]
        assert h.memory.profile(user_key("telegram", 102)).voice.rate == 30
        server.push(message_update(li, **command("/voice rate 900")))
        await h.wait("sendMessage", 5, chat_id=102)
        assert server.texts(102)[4].startswith("I didn't understand that.")

    Harness(server, small_settings, stages).run(scenario)


def test_voice_shows_and_changes_the_voice_the_user_hears(server, tmp_path: Path, stages):
    """/voice starts from the configured voice ([tts] rate 10, pitch 5), not from zero offsets, and a
    change keeps the configured parts; reset goes back to following the settings."""
    settings = load_settings(
        environ={
            "TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data"),
            "TALKTWIN_RENDER__SIZE": "256",
            "TALKTWIN_TTS__RATE": "10",
            "TALKTWIN_TTS__PITCH": "5",
        }
    )
    mia = user(109)
    key = user_key("telegram", 109)

    async def scenario(h: Harness) -> None:
        async def say(line: str, n: int) -> str:
            server.push(message_update(mia, **command(line)))
            await h.wait("sendMessage", n, chat_id=109)
            return server.texts(109)[n - 1]

        assert "rate +10%, pitch +5 Hz, volume 100" in await say("/voice", 1)
        assert "rate +10%, pitch +5 Hz, volume 80" in await say("/voice volume 80", 2)
        assert h.memory.profile(key).chosen_voice == VoiceSettings("", 10, 80, 5)
        assert "rate +10%, pitch +5 Hz, volume 100" in await say("/voice reset", 3)
        assert h.memory.profile(key).chosen_voice is None  # follows the settings again

    Harness(server, settings, stages).run(scenario)


def test_photo_becomes_the_avatar_used_for_the_next_reply(server, small_settings, stages):
    bob = user(103)
    photo = portrait(mirror=True)

    async def scenario(h: Harness) -> None:
        server.push(message_update(bob, text="Hi"))
        (before,) = await h.wait("sendVideoNote", chat_id=103)
        server.push(
            message_update(
                bob,
                photo=[
                    {
                        "file_id": server.add_file(photo),
                        "file_unique_id": "p1",
                        "width": 492,
                        "height": 492,
                        "file_size": len(photo),
                    }
                ],
            )
        )
        await h.wait("sendVideoNote", 2, chat_id=103)  # the greeting with the new face
        assert "Your new avatar is ready." in server.texts(103)
        assert h.memory.avatar(user_key("telegram", 103)) == photo
        server.push(message_update(bob, text="Hi again"))
        after = (await h.wait("sendVideoNote", 3, chat_id=103))[2]
        first = probe_mp4_bytes(before.files["video_note"]).frames[0].astype(float)
        second = probe_mp4_bytes(after.files["video_note"]).frames[0].astype(float)
        assert np.abs(first - second).mean() > 10  # a different picture, not the default avatar

    Harness(server, small_settings, stages).run(scenario)


def test_bad_inputs_get_clear_replies_and_the_bot_stays_up(server, small_settings, stages):
    carol = user(104)
    blank = io.BytesIO()
    Image.new("RGB", (300, 300), (90, 120, 200)).save(blank, format="PNG")

    async def scenario(h: Harness) -> None:
        corrupt = server.add_file(b"OggS" + bytes(range(256)) * 8)
        server.push(message_update(carol, voice={"file_id": corrupt, "file_unique_id": "c", "duration": 2}))
        empty = server.add_file(b"")
        server.push(message_update(carol, voice={"file_id": empty, "file_unique_id": "e", "duration": 1}))
        server.push(
            message_update(
                carol,
                voice={"file_id": "huge", "file_unique_id": "h", "duration": 300, "file_size": 300_000_000},
            )
        )
        server.push(
            message_update(
                carol,
                sticker={
                    "file_id": "s",
                    "file_unique_id": "s",
                    "type": "regular",
                    "width": 1,
                    "height": 1,
                    "is_animated": False,
                    "is_video": False,
                },
            )
        )
        server.push(
            message_update(
                carol,
                photo=[
                    {
                        "file_id": server.add_file(blank.getvalue()),
                        "file_unique_id": "b",
                        "width": 300,
                        "height": 300,
                    }
                ],
            )
        )
        server.push(message_update(carol, text="   "))
        expected = [
            "I could not read that audio. Please send a voice message or an audio file.",
            "That recording is empty or silent. Please try again.",
            "That file is too large (300.0 MB)",
            "I can't use that kind of message.",
            "I could not find a face in that photo.",
            "Your message is empty.",
        ]
        await h.wait_texts(104, *expected)
        assert "huge" not in [c.params.get("file_id") for c in server.find("getFile")]  # never downloaded
        server.push(message_update(carol, text="Still there?"))
        await h.wait("sendVideoNote", chat_id=104)

    Harness(server, small_settings, stages).run(scenario)


def test_two_users_interleaved_never_see_each_other(server, small_settings, stages):
    ada, ben = user(105, name="Ada"), user(106, name="Ben")

    async def scenario(h: Harness) -> None:
        for u in (ada, ben):
            server.push(message_update(u, **command("/mode text")))
        await h.wait("sendMessage", 1, chat_id=105)
        await h.wait("sendMessage", 1, chat_id=106)
        server.push(message_update(ada, text="Hello, my name is Ada"))
        server.push(message_update(ben, text="Hello, my name is Ben"))
        server.push(message_update(ada, text="What is my name?"))
        server.push(message_update(ben, text="What is my name?"))
        ada_texts = await h.wait_texts(105, "Your name is Ada.")
        ben_texts = await h.wait_texts(106, "Your name is Ben.")
        assert not any("Ben" in x for x in ada_texts) and not any("Ada" in x for x in ben_texts)
        for prompt in h.chat.prompts:
            text = " ".join(m.content for m in prompt)
            assert not ("Ada" in text and "Ben" in text)

    Harness(server, small_settings, stages).run(scenario)


def test_document_feeds_the_answer_and_forget_removes_everything(server, small_settings, stages):
    dan, eve = user(107), user(108)
    doc = b"Project Falcon notes.\nThe vault code for Project Falcon is 4711.\n"

    async def scenario(h: Harness) -> None:
        server.push(
            message_update(
                dan,
                document={
                    "file_id": server.add_file(doc),
                    "file_unique_id": "d",
                    "file_name": "falcon.txt",
                    "mime_type": "text/plain",
                    "file_size": len(doc),
                },
            )
        )
        (added,) = await h.wait("sendMessage", chat_id=107)
        assert added.params["text"].startswith("I've read falcon.txt")
        server.push(message_update(dan, text="What is the vault code for Project Falcon?"))
        await h.wait("sendVideoNote", chat_id=107)
        assert "4711" in h.chat.prompts[-1][0].content  # the passage reached the model, quoted
        server.push(message_update(eve, text="What is the vault code for Project Falcon?"))
        await h.wait("sendVideoNote", chat_id=108)
        assert "4711" not in " ".join(m.content for m in h.chat.prompts[-1])  # not Eve's document

        server.push(message_update(dan, **command("/forget")))
        await h.wait("sendMessage", 2, chat_id=107)
        keyboard = server.find("sendMessage", 107)[-1].params["reply_markup"]["inline_keyboard"]
        assert keyboard[0][0]["callback_data"] == "forget:yes"
        server.push(callback_update(dan, "forget:yes"))
        (done,) = await h.wait("editMessageText", chat_id=107)
        assert done.params["text"] == "Done. I've deleted all your data."
        key = user_key("telegram", 107)
        assert h.knowledge.documents(key) == [] and h.memory.avatar(key) is None
        assert h.memory.export(key)["conversations"] in ([], {})

    Harness(server, small_settings, stages).run(scenario)


def test_groups_answer_only_when_addressed(server, small_settings, stages):
    fay = user(109)
    group = {"id": -100777, "type": "supergroup", "title": "Twins"}

    async def scenario(h: Harness) -> None:
        server.push(message_update(fay, chat=group, text="just chatting among humans"))
        mention = f"@{BOT_USERNAME} hello"
        server.push(
            message_update(
                fay,
                chat=group,
                text=mention,
                entities=[{"type": "mention", "offset": 0, "length": len(BOT_USERNAME) + 1}],
            )
        )
        await h.wait("sendVideoNote", chat_id=-100777)
        reply_to_bot = {
            "message_id": 1,
            "date": 0,
            "chat": group,
            "from": {"id": BOT_ID, "is_bot": True, "first_name": "Twin"},
        }
        server.push(message_update(fay, chat=group, text="and you?", reply_to_message=reply_to_bot))
        await h.wait("sendVideoNote", 2, chat_id=-100777)
        await asyncio.sleep(1.0)
        assert len(server.find("sendVideoNote", -100777)) == 2  # the unaddressed message got nothing
        user_prompts = [p[-1].content for p in h.chat.prompts]
        assert user_prompts == ["hello", "and you?"]

    Harness(server, small_settings, stages).run(scenario)


def test_a_second_message_is_queued_and_floods_are_refused(server, small_settings, stages):
    gus = user(110)

    async def scenario(h: Harness) -> None:
        server.push(message_update(gus, text="first"))
        server.push(message_update(gus, text="second"))
        server.push(message_update(gus, text="third"))
        await h.wait("sendVideoNote", 2, chat_id=110)
        texts = server.texts(110)
        assert "I'm still answering your previous message; this one is next." in texts
        assert any(x.startswith("You're sending messages faster than I can answer.") for x in texts)

    Harness(server, small_settings, stages, chat=RuleChat(delay_s=1.0), rate_limit=2).run(scenario)


def test_webhook_mode_checks_the_secret(server, small_settings, stages, unused_tcp_port: int):
    hal = user(111)

    async def scenario(h: Harness) -> None:
        assert server.webhook["url"] == "https://twin.example/telegram"
        assert server.webhook["secret_token"] == "s3cret"
        url = f"http://127.0.0.1:{unused_tcp_port}/telegram"
        update = {"update_id": 1, **message_update(hal, **command("/help"))}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"}) as r:
                assert r.status == 403
            async with http.post(
                url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret"}
            ) as r:
                assert r.status == 200
        (help_text,) = await h.wait("sendMessage", chat_id=111)
        assert help_text.params["text"].startswith("/avatar")

    Harness(
        server,
        small_settings,
        stages,
        webhook_url="https://twin.example/telegram",
        webhook_secret="s3cret",
        webhook_port=unused_tcp_port,
    ).run(scenario)


@pytest.mark.real_models
def test_voice_note_gets_a_video_note_answer(server, models_installed, embedded_chat, stages, tmp_path: Path):
    from pipeline.asr.whisper import WhisperRecognizer

    settings = load_settings(
        environ={
            "TALKTWIN_PATHS__DATA_DIR": str(tmp_path),
            "TALKTWIN_RENDER__SIZE": "256",
            "TALKTWIN_LLM__TEMPERATURE": "0",
        }
    )
    synthesizer, _ = stages
    voice = voice_note(synthesizer, "What is the capital city of France?", "en", tmp_path)
    ivy = user(112)

    async def scenario(h: Harness) -> None:
        server.push(
            message_update(
                ivy,
                voice={
                    "file_id": server.add_file(voice),
                    "file_unique_id": "v",
                    "duration": 2,
                    "mime_type": "audio/ogg",
                },
            )
        )
        (note,) = await h.wait("sendVideoNote", chat_id=112, timeout=180)
        info = probe_mp4_bytes(note.files["video_note"])
        assert info.width == info.height and info.audio_codec == "aac" and 1 < info.duration <= 60
        heard = h.chat.prompts[-1][-1].content.lower()  # what Whisper made of the voice note
        assert "capital" in heard and "".join(h.chat_answers).strip()

    whisper = WhisperRecognizer(str(settings.resolve(settings.asr.model)))
    chat = AnswerRecorder(embedded_chat)
    harness = Harness(server, settings, stages, chat=chat, recognizer=whisper)
    harness.chat_answers = chat.answers
    harness.run(scenario)


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LongChat(RuleChat):
    """Answers with a fixed text (long ones included) and records prompts."""

    def __init__(self, answer: str) -> None:
        super().__init__()
        self.answer = answer

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> Iterator[str]:
        self.prompts.append(list(messages))
        yield from (w + " " for w in self.answer.split(" "))


def test_reply_modes_video_voice_and_long_answers(server, small_settings, stages):
    jo = user(113)
    sentence = "This is a rather long answer that keeps going so that the video gets longer than a minute. "
    long_answer = sentence * 14  # about 70 s of speech

    async def scenario(h: Harness) -> None:
        server.push(message_update(jo, text="Tell me everything."))  # video-note mode, answer over 60 s
        (video,) = await h.wait("sendVideo", chat_id=113, timeout=240)
        assert video.params["caption"].startswith(long_answer[:1000].strip()[:50])
        assert len(video.params["caption"]) <= 1024
        assert server.find("sendVideoNote", 113) == []
        info = probe_mp4_bytes(video.files["video"])
        assert info.duration > 60 and info.width == info.height
        full = await h.wait_texts(113, long_answer.strip()[:100])  # the rest of a caption-sized answer
        assert any(len(x) > 1024 for x in full)
        h.chat.answer = "Short and sweet."
        server.push(message_update(jo, **command("/mode voice")))
        await h.wait_texts(113, "Replies will now come as: voice message.")
        server.push(message_update(jo, text="Again, briefly."))
        (voice,) = await h.wait("sendVoice", chat_id=113)
        assert voice.params["caption"] == "Short and sweet." and voice.files["voice"][:4] == b"OggS"

    Harness(server, small_settings, stages, chat=LongChat(long_answer)).run(scenario)


def test_kb_reset_and_avatar_commands(server, small_settings, stages):
    kim = user(114)
    doc = b"Kim's garden has seven apple trees."

    async def scenario(h: Harness) -> None:
        key = user_key("telegram", 114)
        server.push(
            message_update(
                kim,
                document={
                    "file_id": server.add_file(doc),
                    "file_unique_id": "k",
                    "file_name": "../../etc/garden notes.txt",
                    "file_size": len(doc),
                },
            )
        )
        await h.wait_texts(114, "I've read")
        (name,) = [d.name for d in h.knowledge.documents(key)]
        assert "/" not in name and ".." not in name  # the user's file name never reaches a path
        server.push(message_update(kim, **command("/kb")))
        await h.wait_texts(114, "Your documents:")
        server.push(message_update(kim, **command(f"/kb remove {name}")))
        await h.wait_texts(114, f"Removed {name}.")
        assert h.knowledge.documents(key) == []
        server.push(message_update(kim, **command("/kb remove nothing.txt")))
        await h.wait_texts(114, "You have no document called nothing.txt.")

        h.memory.record_turn(key, key, "My name is Kim", "Hello Kim.")
        server.push(message_update(kim, **command("/reset")))
        await h.wait_texts(114, "OK, a fresh start.")
        assert h.memory.context_for(key, key, "What is my name?").history == ()

        h.memory.set_avatar(key, portrait(mirror=True))
        server.push(message_update(kim, **command("/avatar")))
        (shown,) = await h.wait("sendPhoto", chat_id=114)
        assert shown.files["photo"] == portrait(mirror=True)
        server.push(message_update(kim, **command("/avatar reset")))
        await h.wait_texts(114, "Back to the default avatar.")
        assert h.memory.avatar(key) is None

    Harness(server, small_settings, stages).run(scenario)


def test_allow_list_keeps_strangers_out(server, small_settings, stages):
    friend, stranger = user(115), user(116)

    async def scenario(h: Harness) -> None:
        server.push(message_update(stranger, text="Hi, who are you?"))
        server.push(message_update(friend, **command("/help")))
        await h.wait_texts(116, "Sorry, this bot is private.")
        await h.wait_texts(115, "/avatar")
        assert h.chat.prompts == [] and server.find("sendVideoNote", 116) == []

    Harness(server, small_settings, stages, allowed_users=frozenset({115})).run(scenario)


def test_a_redelivered_update_is_answered_once(server, small_settings, stages):
    kay = user(117)

    async def scenario(h: Harness) -> None:
        update = message_update(kay, text="Only once, please.")
        server.push(update)
        server.push(update)  # Telegram redelivers when a crash kept the offset from being confirmed
        await h.wait("sendVideoNote", chat_id=117)
        await asyncio.sleep(2.0)
        assert len(server.find("sendVideoNote", 117)) == 1 and len(h.chat.prompts) == 1

    Harness(server, small_settings, stages).run(scenario)


def test_jobs_interrupted_by_a_crash_are_answered_after_restart(server, small_settings, stages):
    harness = Harness(server, small_settings, stages)
    # what a crashed process left behind: one job started once, one that already failed twice
    first = harness.jobs.accept(
        "telegram", 118, 5001, user_key("telegram", 118), user_key("telegram", 118), text="Are you back?"
    )
    harness.jobs.start(first)
    second = harness.jobs.accept(
        "telegram",
        119,
        5002,
        user_key("telegram", 119),
        user_key("telegram", 119),
        text="This one keeps crashing.",
    )
    harness.jobs.start(second)
    harness.jobs.start(second)

    async def scenario(h: Harness) -> None:
        (note,) = await h.wait("sendVideoNote", chat_id=118)
        assert note.params["reply_parameters"]["message_id"] == 5001
        await h.wait_texts(119, "Sorry, I couldn't answer one of your earlier messages.")
        assert [p[-1].content for p in h.chat.prompts] == ["Are you back?"]
        for _ in range(50):  # both are marked finished right after their message went out
            if not h.jobs.unfinished("telegram"):
                break
            await asyncio.sleep(0.1)
        assert h.jobs.unfinished("telegram") == []

    harness.run(scenario)


def test_a_message_arriving_during_recovery_is_answered_once(server, small_settings, stages):
    eli = user(122)
    harness = Harness(server, small_settings, stages)
    harness.jobs = harness.bot.core.jobs = SlowJobStore(harness.jobs.engine, harness.jobs.payload_dir)

    async def scenario(h: Harness) -> None:
        await h.wait("sendVideoNote", chat_id=122)
        for _ in range(100):  # until nothing is admitted any more: a second answer would be queued
            if h.service.queue_depth() == 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)
        assert len(server.find("sendVideoNote", 122)) == 1 and len(h.chat.prompts) == 1
        assert "I'm still answering your previous message; this one is next." not in server.texts(122)

    server.push(message_update(eli, text="Are you there?"))  # waiting before the bot starts
    harness.run(scenario)


@pytest.mark.real_models
def test_killed_mid_reply_the_service_answers_exactly_once_after_restart(server, models_installed, tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys

    from pipeline.config import PROJECT_ROOT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_BASE_URL": server.base_url,
        "TELEGRAM_FILE_BASE_URL": server.file_base_url,
        "TALKTWIN_PATHS__DATA_DIR": str(tmp_path),
        "TALKTWIN_HTTP_PORT": str(port),
        "TALKTWIN_RENDER__SIZE": "256",
        "TALKTWIN_LLM__MAX_TOKENS": "64",  # two sentences or so: the reply only has to be in work when killed
        "TALKTWIN_OUTPUT__FORMAT": "video",
    }

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "run_bots.py")],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    ned = user(120)
    service = start()
    try:
        server.push(message_update(ned, text="Please tell me a long story about a lighthouse keeper."))
        server.wait_for("sendChatAction", chat_id=120, timeout=120)  # the reply is in work
        service.kill()  # kill -9, mid-reply
        service.wait(10)
        assert server.find("sendVideoNote", 120) == []
        service = start()
        server.wait_for("sendVideoNote", chat_id=120, timeout=180)
        time.sleep(3)
        assert len(server.find("sendVideoNote", 120)) == 1
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            assert service.wait(60) == 0  # a clean stop on SIGTERM
        finally:
            service.kill()


def test_cancel_stops_the_reply_in_work(server, small_settings, stages):
    ola = user(121)

    async def scenario(h: Harness) -> None:
        server.push(message_update(ola, **command("/cancel")))
        await h.wait_texts(121, "There is nothing to stop.")
        server.push(message_update(ola, text="Take your time with this one."))
        await h.wait("sendChatAction", chat_id=121)
        server.push(message_update(ola, **command("/cancel")))
        await h.wait_texts(121, "Okay, I stopped working on that.")
        await asyncio.sleep(1.5)
        assert server.find("sendVideoNote", 121) == []

    Harness(server, small_settings, stages, chat=RuleChat(delay_s=3.0)).run(scenario)
