"""The adapter contract: what any reply sink must do for its users, on Telegram, Discord, HTTP and the CLI.

One suite of user-visible scenarios, each run through every platform's driver (tests/contract/drivers.py)
that can play it at all: a platform that cannot (the CLI has no message to deliver twice, keeps no
avatar and has no /forget) is not parametrized for that scenario. Everything behind the adapters is
real (TTS, renderer at 256 px, encoder, memory, job ledger) except the chat model, a rule-based one
that recalls "my name is X" from the user's conversation.

A broken promise fails with a dedicated exception (`NotAReply`, `AnsweredTwice`) that names it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bots.texts import t
from pipeline.config import load_settings
from pipeline.errors import EmptyText, FileTooLarge, NoFaceFound
from pipeline.types import VoiceSettings
from tests.bot_helpers import portrait, probe_mp4_bytes
from tests.contract.drivers import (
    DRIVERS,
    CliDriver,
    DiscordDriver,
    Driver,
    HttpDriver,
    Media,
    Sent,
    TelegramDriver,
    Text,
)
from tests.helpers import probe_mp4

ANSWER = "Nice to hear from you. Let me think about that."  # RuleChat, to anything but "what is my name"
SAME_FACE = 10.0  # mean absolute difference of first frames: below, the same picture; above, another


class NotAReply(AssertionError):
    """An answer that does not point at the message it answers, on a platform where answers do."""


class AnsweredTwice(AssertionError):
    """One message, delivered more than once, got more than one answer."""


def platforms(*needs: str) -> list:
    """The drivers whose platform can play a scenario that needs `needs`."""
    return [pytest.param(cls, id=cls.name) for cls in DRIVERS if set(needs) <= cls.supports]


def check_reply(d: Driver, item: Media | Text, sent: Sent) -> None:
    if "reply_to" in d.supports and item.reply_to != sent.id:
        raise NotAReply(f"{d.name}: {item!r:.200} does not reply to message {sent.id}")


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def telegram_api() -> Iterator:
    from tests.fakes.telegram_server import FakeBotApi

    api = FakeBotApi().start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def discord_api() -> Iterator:
    from tests.fakes.discord_server import FakeDiscord

    api = FakeDiscord().start()
    yield api
    api.stop()


@pytest.fixture
def driver(request, small_settings, stages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Driver:
    cls = request.param
    if cls is TelegramDriver:
        return TelegramDriver(request.getfixturevalue("telegram_api"), small_settings, stages)
    if cls is DiscordDriver:
        server = request.getfixturevalue("discord_api")
        server.reset()
        return DiscordDriver(server, small_settings, stages)
    if cls is HttpDriver:
        return HttpDriver(small_settings, stages)
    assert cls is CliDriver
    folder = tmp_path / "cli"
    folder.mkdir()
    return CliDriver(small_settings, stages, monkeypatch, folder)


@pytest.fixture(scope="module")
def default_face(stages, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The first frame of a video in the default avatar, made by the pipeline itself."""
    from memory.store import MemoryStore
    from pipeline.orchestrator import ReplyPipeline, ReplyRequest
    from tests.helpers import NoRecognizer, ScriptedChat

    folder = tmp_path_factory.mktemp("default-face")
    settings = load_settings(
        environ={"TALKTWIN_PATHS__DATA_DIR": str(folder / "data"), "TALKTWIN_RENDER__SIZE": "256"}
    )
    memory = MemoryStore.from_settings(settings)
    synthesizer, renderer = stages
    pipeline = ReplyPipeline(
        settings,
        recognizer=NoRecognizer(),
        chat_model=ScriptedChat(""),
        synthesizer=synthesizer,
        renderer=renderer,
        context=memory,
    )
    try:
        pipeline.speak("Hello there.", ReplyRequest(user="test:face", format="video"), folder / "face.mp4")
    finally:
        memory.close()
    return probe_mp4(folder / "face.mp4").frames[0].astype(float)


def face_distance(media: Media, face: np.ndarray) -> float:
    return float(np.abs(probe_mp4_bytes(media.data).frames[0].astype(float) - face).mean())


def blank_photo() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), (90, 120, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def asked(d: Driver) -> list[str]:
    """The user messages the chat model was asked to answer, in order."""
    return [prompt[-1].content for prompt in d.chat.prompts]


# ---------------------------------------------------------------------- 1. one media answer
@pytest.mark.parametrize("driver", platforms(), indirect=True)
def test_a_text_question_gets_exactly_one_media_answer_with_audio_as_long_as_the_answer(driver, stages):
    synthesizer, _ = stages
    spoken = synthesizer.synthesize(ANSWER, "en", VoiceSettings()).duration

    async def scenario(d: Driver) -> None:
        sent = await d.send_text("ann", "Hello twin!")
        await d.wait("ann", media=1)
        await d.settle()
        got = d.answers("ann")
        assert got.texts == [] and len(got.media) == 1, got
        (media,) = got.media
        assert media.kind == d.answer_kind
        check_reply(d, media, sent)
        if media.caption:
            assert media.caption == ANSWER
        info = probe_mp4_bytes(media.data)
        assert (info.video_codec, info.audio_codec) == ("h264", "aac")
        assert info.width == info.height == 256
        assert abs(info.duration - info.audio_duration) < 0.25  # sound all the way through
        if media.declared_s is not None:  # what the adapter said it is (Telegram: whole seconds)
            assert abs(media.declared_s - info.audio_duration) <= 0.55
        assert abs(info.audio_duration - spoken) < max(0.6, 0.15 * spoken), (info.audio_duration, spoken)
        assert float(np.sqrt(np.mean(info.audio**2))) > 0.01  # not silence
        assert asked(d) == ["Hello twin!"]

    driver.run(scenario)


# ---------------------------------------------------------------------- 2. empty text
@pytest.mark.parametrize(("lang", "text"), [("en", "   "), ("zh", " \n\t ")], ids=["en", "zh"])
@pytest.mark.parametrize("driver", platforms(), indirect=True)
def test_an_empty_message_gets_one_clear_line_in_the_users_language(driver, lang: str, text: str):
    async def scenario(d: Driver) -> None:
        sent = await d.send_text("eve", text, locale=lang)
        await d.wait("eve", texts=1)
        await d.settle()
        got = d.answers("eve")
        assert got.texts == [EmptyText().user_message(lang)] and got.media == [], got
        check_reply(d, got.items[0], sent)
        assert d.chat.prompts == []

    driver.run(scenario)


# ---------------------------------------------------------------------- 3. delivered twice
@pytest.mark.parametrize("driver", platforms("redelivery"), indirect=True)
def test_a_message_delivered_twice_is_answered_once(driver):
    async def scenario(d: Driver) -> None:
        await d.set_mode("kay", "text")
        d.chat.delay_s = 1.0  # the second delivery comes while the first is in work
        sent = await d.send_text("kay", "Only once, please.")
        await d.resend_last("kay")
        await d.wait("kay", texts=1)
        await d.settle()
        await d.resend_last("kay")  # and once more after it was answered
        await d.settle()
        got = d.answers("kay")
        (answer,) = got.fresh
        assert isinstance(answer, Text) and answer.text == ANSWER, got
        check_reply(d, answer, sent)
        for again in got.items:  # a replayed HTTP response is the first one again
            assert again.text == answer.text and again.reply_to == answer.reply_to
        assert asked(d) == ["Only once, please."]

    driver.run(scenario)


@pytest.mark.parametrize(
    "driver",
    platforms("redelivery", "greeting"),
    indirect=True,
)
def test_a_photo_delivered_twice_is_answered_once(driver):
    async def scenario(d: Driver) -> None:
        sent = await d.send_photo("pat", portrait(mirror=True))
        await d.resend_last("pat")  # while the first is in work
        await d.wait("pat", media=1)
        await d.settle()
        await d.resend_last("pat")  # after it was answered
        await d.settle()
        got = d.answers("pat")
        if len(got.media) != 1:
            raise AnsweredTwice(f"{d.name}: {len(got.media)} greetings; {got.texts}")
        assert got.texts == [t("avatar_set", "en")] and got.media[0].kind == d.answer_kind, got
        check_reply(d, got.items[0], sent)

    driver.run(scenario)


# ---------------------------------------------------------------------- 4. too large


@pytest.mark.parametrize("driver", platforms(), indirect=True)
def test_an_oversized_upload_gets_the_file_too_large_line_and_the_next_message_an_answer(driver):
    async def scenario(d: Driver) -> None:
        await d.set_mode("max", "text")
        big = b"OggS" + bytes(int(d.upload_limit_mb * 1e6) + 1000)
        sent = await d.send_voice("max", big)
        await d.wait("max", texts=1)
        await d.settle()
        got = d.answers("max")
        too_large = FileTooLarge(size_mb=len(big) / 1e6, limit_mb=d.upload_limit_mb).user_message("en")
        assert got.texts == [too_large] and got.media == [], got
        await d.send_text("max", "Still there?")
        await d.wait("max", texts=2)
        await d.settle()
        assert d.answers("max").texts == [too_large, ANSWER]
        assert asked(d) == ["Still there?"]
        check_reply(d, got.items[0], sent)

    driver.run(scenario)


# ---------------------------------------------------------------------- 5. photos
@pytest.mark.parametrize("driver", platforms(), indirect=True)
def test_a_photo_without_a_face_gets_the_no_face_line(driver):
    async def scenario(d: Driver) -> None:
        sent = await d.send_photo("nia", blank_photo())
        await d.wait("nia", texts=1)
        await d.settle()
        got = d.answers("nia")
        assert got.texts == [NoFaceFound().user_message("en")] and got.media == [], got
        check_reply(d, got.items[0], sent)

    driver.run(scenario)


@pytest.mark.parametrize("driver", platforms("avatar"), indirect=True)
def test_a_photo_with_a_face_becomes_the_avatar(driver, default_face: np.ndarray):
    async def scenario(d: Driver) -> None:
        await d.send_photo("fay", portrait(mirror=True))
        if "greeting" in d.supports:  # shown at once: a greeting in the new face
            got = await d.wait("fay", media=1)
            await d.settle()
            got = d.answers("fay")
            assert got.texts == [t("avatar_set", "en")] and len(got.media) == 1, got
            assert asked(d) == []  # the greeting is said, not asked of the model
        else:  # kept quietly: the next answer is in the new face
            await d.settle()
            assert d.answers("fay").items == ()
            await d.send_text("fay", "Do I look different?")
            got = await d.wait("fay", media=1)
        (video,) = got.media
        assert video.kind == d.answer_kind
        assert face_distance(video, default_face) > SAME_FACE  # not the default avatar

    driver.run(scenario)


# ---------------------------------------------------------------------- 6. users apart
@pytest.mark.parametrize("driver", platforms(), indirect=True)
def test_a_users_data_never_reaches_another_users_answer(driver):
    async def scenario(d: Driver) -> None:
        for name in ("ada", "ben"):
            await d.set_mode(name, "text")
        await d.send_text("ada", "Hello, my name is Ada")
        await d.send_text("ben", "Hello, my name is Ben")
        await d.wait("ada", texts=1)
        await d.wait("ben", texts=1)
        await d.send_text("ada", "What is my name?")
        await d.send_text("ben", "What is my name?")
        await d.wait("ada", texts=2)
        await d.wait("ben", texts=2)
        await d.settle()
        assert d.answers("ada").texts == [ANSWER, "Your name is Ada."]
        assert d.answers("ben").texts == [ANSWER, "Your name is Ben."]
        for prompt in d.chat.prompts:  # nor did the model ever see both
            seen = " ".join(m.content for m in prompt)
            assert not ("Ada" in seen and "Ben" in seen), seen

    driver.run(scenario)


# ---------------------------------------------------------------------- 7. forget
@pytest.mark.parametrize("driver", platforms("forget", "avatar"), indirect=True)
def test_forget_deletes_the_users_memory_and_avatar(driver, default_face: np.ndarray):
    async def scenario(d: Driver) -> None:
        await d.set_mode("zoe", "text")
        await d.send_text("zoe", "Hello, my name is Zoe")
        await d.wait("zoe", texts=1)
        await d.send_photo("zoe", portrait(mirror=True))
        await d.wait("zoe", media=int("greeting" in d.supports))
        await d.settle()
        await d.send_text("zoe", "What is my name?")
        await d.wait("zoe", texts=2 + ("greeting" in d.supports))
        await d.settle()
        before = d.answers("zoe")
        assert "Your name is Zoe." in before.texts, before  # remembered, until forgotten

        await d.forget("zoe")
        asked_before = len(d.chat.prompts)
        await d.set_mode("zoe", "default")
        await d.send_text("zoe", "Hello again")
        await d.wait("zoe", media=len(before.media) + 1)
        await d.set_mode("zoe", "text")
        await d.send_text("zoe", "What is my name?")
        await d.wait("zoe", texts=len(before.texts) + 1)
        await d.settle()
        after = d.answers("zoe").items[len(before.items) :]
        assert [type(i) for i in after] == [Media, Text], after
        video, name = after
        assert face_distance(video, default_face) < SAME_FACE  # the default avatar again
        assert name.text == "I don't know your name yet."
        for prompt in d.chat.prompts[asked_before:]:
            assert "Zoe" not in " ".join(m.content for m in prompt)

    driver.run(scenario)
