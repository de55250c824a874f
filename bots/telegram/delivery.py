"""Sending a finished reply back to Telegram: the right kind of message, within Telegram's limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from telegram import Bot, ReplyParameters
from telegram.error import TelegramError

from bots.texts import t
from pipeline.media.ffmpeg import run_ffmpeg
from pipeline.orchestrator import ReplyResult

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


async def send_result(
    bot: Bot,
    chat_id: int | str,
    reply_to: int | None,
    result: ReplyResult,
    mode: str,
    upload_limit_mb: float,
    lang: str,
) -> None:
    """Video note when it fits (square, ≤ 60 s), else a video with the answer as caption; voice; text.

    Sent as a reply to the user's message `reply_to` (still sent if that message is gone). Probing and
    converting media run off the event loop.
    """
    reply = (
        {"reply_parameters": ReplyParameters(reply_to, allow_sending_without_reply=True)} if reply_to else {}
    )
    if result.media_path is None:
        await _send_text(bot, chat_id, result.answer, reply)
        return
    path = result.media_path
    if path.stat().st_size > upload_limit_mb * 1e6:
        log.warning(
            "reply of %.1f MB is over the upload limit; sending voice and text", path.stat().st_size / 1e6
        )
        await bot.send_message(chat_id, t("answer_too_big", lang), **reply)
        path = await asyncio.to_thread(_voice_from, path)
        mode = "voice"
    data = await asyncio.to_thread(path.read_bytes)
    duration = round(result.duration)
    if mode == "voice":
        await bot.send_voice(chat_id, data, duration=duration, caption=_caption(result.answer), **reply)
        if len(result.answer) > CAPTION_MAX:
            await _send_text(bot, chat_id, result.answer, {})
        return
    width, height = await asyncio.to_thread(_video_dimensions, path)
    if mode == "video_note" and result.duration <= VIDEO_NOTE_MAX_S and width == height:
        await bot.send_video_note(chat_id, data, duration=duration, length=width, **reply)
    else:  # a whole-photo frame is not square: Telegram would crop it into a circle
        await bot.send_video(
            chat_id,
            data,
            duration=duration,
            width=width,
            height=height,
            caption=_caption(result.answer),
            supports_streaming=True,
            **reply,
        )
        if len(result.answer) > CAPTION_MAX:
            await _send_text(bot, chat_id, result.answer, {})


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
