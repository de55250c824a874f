"""Sending a finished reply to Discord: one attachment within the upload limit, text in 2,000-char parts.

A reply goes to a Target: the user's message (a reply that references it) or a slash command (a
follow-up). Videos over the limit are re-encoded at the bitrate that fits; when even that fails, or
Discord still refuses the upload, the answer goes out as audio and text instead.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path
from typing import Protocol

import discord

from bots.texts import t
from pipeline.media.ffmpeg import run_ffmpeg
from pipeline.orchestrator import ReplyResult

log = logging.getLogger(__name__)

MESSAGE_MAX = 2000
DEFAULT_LIMIT = 10 * 1024 * 1024  # Discord's attachment limit without boosts
AUDIO_KBPS = 48
MIN_VIDEO_KBPS = 20  # below this the face is mush: send audio instead


class Target(Protocol):
    """Where a reply goes; `filesize_limit` is what Discord accepts there, in bytes."""

    filesize_limit: int

    async def send(self, content: str | None = None, file: discord.File | None = None) -> None: ...


class MessageTarget:
    """Replies to a user's message: the first part references it, later parts follow in the channel.

    The message may be partial (only its id and channel, as for a job resumed after a restart)."""

    def __init__(self, message: discord.Message | discord.PartialMessage, cap: int) -> None:
        self.message = message
        guild_limit = message.guild.filesize_limit if message.guild else DEFAULT_LIMIT
        self.filesize_limit = min(guild_limit, cap)
        self._replied = False

    async def reply(self, content: str | None = None, file: discord.File | None = None) -> None:
        """A message that references the user's; still sent when theirs was deleted meanwhile."""
        kwargs = {"file": file} if file is not None else {}
        reference = self.message.to_reference(fail_if_not_exists=False)
        await self.message.channel.send(content, reference=reference, mention_author=False, **kwargs)

    async def send(self, content: str | None = None, file: discord.File | None = None) -> None:
        if not self._replied:
            await self.reply(content, file)
            self._replied = True
        else:
            await self.message.channel.send(content, **({"file": file} if file is not None else {}))


class InteractionTarget:
    """Follow-ups to a (deferred) slash command."""

    def __init__(self, interaction: discord.Interaction, cap: int) -> None:
        self.interaction = interaction
        self.filesize_limit = min(interaction.filesize_limit or DEFAULT_LIMIT, cap)

    async def send(self, content: str | None = None, file: discord.File | None = None) -> None:
        kwargs = {"file": file} if file is not None else {}
        await self.interaction.followup.send(content or discord.utils.MISSING, **kwargs)


def split_text(text: str, limit: int = MESSAGE_MAX) -> list[str]:
    """Parts of at most `limit` characters, cut at a line break or space where there is one."""
    parts: list[str] = []
    text = text.strip()
    while len(text) > limit:
        cut = max(text.rfind("\n", 0, limit), text.rfind(" ", 0, limit))
        cut = cut if cut > limit // 2 else limit
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        parts.append(text)
    return parts


async def send_text(target: Target, text: str) -> None:
    for part in split_text(text):
        await target.send(part)


async def send_result(target: Target, result: ReplyResult, lang: str) -> None:
    """The media as an attachment with the answer's first part, the rest of the answer after it."""
    parts = split_text(result.answer) or [""]
    if result.media_path is None:
        await send_text(target, result.answer)
        return
    path = result.media_path
    limit = target.filesize_limit
    if path.suffix == ".mp4" and path.stat().st_size > limit:
        path = await asyncio.to_thread(shrink_video, path, result.duration, limit) or path
    if path.stat().st_size <= limit:
        try:
            await target.send(parts[0] or None, file=discord.File(path, filename=f"reply{path.suffix}"))
        except discord.HTTPException as e:
            if e.status != 413:
                raise
            log.warning("upload of %d bytes refused (%s); sending audio and text", path.stat().st_size, e)
        else:
            for part in parts[1:]:
                await target.send(part)
            return
    await _send_audio_fallback(target, result, limit, lang)


async def _send_audio_fallback(target: Target, result: ReplyResult, limit: int, lang: str) -> None:
    assert result.media_path is not None
    log.warning(
        "reply of %d bytes does not fit %d; sending audio and text", result.media_path.stat().st_size, limit
    )
    await target.send(t("answer_too_big", lang))
    audio = result.media_path
    if audio.suffix != ".ogg":
        audio = await asyncio.to_thread(_audio_from, audio)
    if audio is not None and audio.stat().st_size <= limit:
        try:
            await target.send(None, file=discord.File(audio, filename="reply.ogg"))
        except discord.HTTPException as e:
            if e.status != 413:
                raise
    await send_text(target, result.answer)


def shrink_video(path: Path, duration: float, limit: int) -> Path | None:
    """Re-encode at the bitrate that fits `limit` bytes (smaller picture and audio when the budget is
    tight); a second, leaner try when the encoder overshoots. None when no acceptable encode fits."""
    budget_kbps = limit * 8 * 0.9 / max(duration, 0.5) / 1000  # 10% for the container
    audio_kbps = AUDIO_KBPS if budget_kbps > 200 else 24
    out = path.with_name(path.stem + "-small.mp4")
    for _ in range(3):
        video_kbps = int(budget_kbps - audio_kbps)
        if video_kbps < MIN_VIDEO_KBPS:
            return None
        scale = "scale=trunc(iw/4)*2:trunc(ih/4)*2" if video_kbps < 300 else "scale=iw:ih"
        args = ["-y", "-i", str(path), "-vf", scale, "-c:v", "libx264", "-preset", "veryfast"]
        args += ["-b:v", f"{video_kbps}k", "-maxrate", f"{video_kbps}k", "-bufsize", f"{video_kbps}k"]
        args += ["-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", f"{audio_kbps}k"]
        args += ["-movflags", "+faststart", str(out)]
        try:
            run_ffmpeg(args)
        except subprocess.CalledProcessError as e:
            log.warning("re-encoding failed: %s", e.stderr.decode(errors="replace")[-300:])
            return None
        size = out.stat().st_size
        log.info("re-encoded reply %d -> %d bytes (limit %d)", path.stat().st_size, size, limit)
        if size <= limit:
            return out
        budget_kbps *= limit / size * 0.9
    return None


def _audio_from(mp4: Path) -> Path | None:
    ogg = mp4.with_name(mp4.stem + "-audio.ogg")
    try:
        run_ffmpeg(["-y", "-i", str(mp4), "-vn", "-c:a", "libopus", "-b:a", "32k", str(ogg)])
    except subprocess.CalledProcessError as e:
        log.error("could not extract the audio of %s: %s", mp4, e.stderr.decode(errors="replace")[-300:])
        return None
    return ogg


async def send_text_ephemeral(interaction: discord.Interaction, text: str) -> None:
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)
