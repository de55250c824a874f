"""Sending a finished reply back to Telegram: the right kind of message, within Telegram's limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from telegram import Bot, ReplyParameters
from telegram.constants import ChatAction
from telegram.error import TelegramError

from bots.core.messages import Capabilities, RoundVideo
from bots.core.reply_job import OutputSpec, ReplyOutcome
from bots.telegram.options import TelegramOptions
from bots.texts import t
from pipeline.media.ffmpeg import run_ffmpeg

log = logging.getLogger(__name__)

VIDEO_NOTE_MAX_S = 60  # Telegram's limit for round video notes
CAPTION_MAX = 1024
MESSAGE_MAX = 4096
ACTION_EVERY_S = 4.5  # a chat action shows for about 5 s


@contextlib.asynccontextmanager
async def keep_chat_action(
    bot: Bot, chat_id: int, action: str, *, progress_after_s: float, progress_text: str
) -> AsyncIterator[None]:
    """Keep "recording video…" visible while the reply is made; say so once if it takes long."""

    async def pulse() -> None:
        waited = 0.0
        while True:
            with contextlib.suppress(TelegramError):
                await bot.send_chat_action(chat_id, action)
            await asyncio.sleep(ACTION_EVERY_S)
            waited += ACTION_EVERY_S
            if progress_after_s and waited >= progress_after_s > waited - ACTION_EVERY_S:
                with contextlib.suppress(TelegramError):
                    await bot.send_message(chat_id, progress_text)

    task = asyncio.create_task(pulse())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class TelegramSink:
    """Answers to one Telegram chat, as replies to the user's message when there is one."""

    def __init__(self, bot: Bot, chat_id: int, reply_to: int | None, options: TelegramOptions) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self.reply_to = reply_to
        self.options = options
        self.capabilities = Capabilities(
            max_upload_mb=options.upload_limit_mb,
            text_limit=MESSAGE_MAX,
            round_video=RoundVideo(max_seconds=VIDEO_NOTE_MAX_S),
        )

    def _reply(self) -> dict:
        if not self.reply_to:
            return {}
        return {"reply_parameters": ReplyParameters(self.reply_to, allow_sending_without_reply=True)}

    async def send_text(self, text: str) -> None:
        await _send_text(self.bot, self.chat_id, text, self._reply())

    def working(self, spec: OutputSpec, lang: str) -> contextlib.AbstractAsyncContextManager[None]:
        if spec.kind == "voice":
            action = ChatAction.RECORD_VOICE
        elif spec.kind == "text":
            action = ChatAction.TYPING
        else:
            action = ChatAction.RECORD_VIDEO_NOTE if spec.round else ChatAction.UPLOAD_VIDEO
        return keep_chat_action(
            self.bot,
            self.chat_id,
            action,
            progress_after_s=self.options.progress_after_s,
            progress_text=t("working", lang),
        )

    async def send_media(self, outcome: ReplyOutcome, media: Path, spec: OutputSpec, lang: str) -> None:
        """A round video note when it fits (square, short enough), else a video with the answer as
        caption; a voice message. Over the upload limit: the answer as voice and text. Probing and
        converting media run off the event loop."""
        bot, chat_id, reply = self.bot, self.chat_id, self._reply()
        kind = spec.kind
        size = (await asyncio.to_thread(media.stat)).st_size
        if size > spec.max_mb * 1e6:
            log.warning("reply of %.1f MB is over the upload limit; sending voice and text", size / 1e6)
            await bot.send_message(chat_id, t("answer_too_big", lang), **reply)
            media = await asyncio.to_thread(_voice_from, media)
            kind = "voice"
        data = await asyncio.to_thread(media.read_bytes)
        duration = round(outcome.duration)
        if kind == "voice":
            await bot.send_voice(chat_id, data, duration=duration, caption=_caption(outcome.answer), **reply)
            if len(outcome.answer) > CAPTION_MAX:
                await _send_text(bot, chat_id, outcome.answer, {})
            return
        width, height = await asyncio.to_thread(_video_dimensions, media)
        max_s = spec.max_seconds or VIDEO_NOTE_MAX_S
        if spec.round and outcome.duration <= max_s and width == height:
            await bot.send_video_note(chat_id, data, duration=duration, length=width, **reply)
            return
        await bot.send_video(  # Telegram would crop a non-square or long one into a circle
            chat_id,
            data,
            duration=duration,
            width=width,
            height=height,
            caption=_caption(outcome.answer),
            supports_streaming=True,
            **reply,
        )
        if len(outcome.answer) > CAPTION_MAX:
            await _send_text(bot, chat_id, outcome.answer, {})


def _caption(text: str) -> str:
    return text if len(text) <= CAPTION_MAX else text[: CAPTION_MAX - 1] + "…"


async def _send_text(bot: Bot, chat_id: int | str, text: str, reply: dict) -> None:
    for i in range(0, len(text), MESSAGE_MAX):
        await bot.send_message(chat_id, text[i : i + MESSAGE_MAX], **(reply if i == 0 else {}))


def _video_dimensions(path: Path) -> tuple[int, int]:
    import av

    with av.open(str(path)) as box:
        context = box.streams.video[0].codec_context
        return context.width, context.height


def _voice_from(mp4: Path) -> Path:
    ogg = mp4.with_suffix(".ogg")
    run_ffmpeg(["-y", "-i", str(mp4), "-vn", "-c:a", "libopus", "-b:a", "32k", str(ogg)])
    return ogg
