"""Sending answers to Discord: one attachment within the upload limit, text in 2,000-char parts.

`DiscordSink` is the application core's ReplySink (bots/core/messages.py) for Discord. It sends to a
Target: the user's message (a reply that references it) or a slash command (a follow-up). Videos
over the limit are re-encoded at the bitrate that fits; when even that fails, or Discord still
refuses the upload, the answer goes out as audio and text instead.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import tempfile
from contextlib import AbstractAsyncContextManager, nullcontext
from pathlib import Path
from typing import Protocol

import discord

from bots.core.messages import Capabilities
from bots.core.reply_job import OutputSpec, ReplyOutcome
from bots.texts import t
from pipeline.media.ffmpeg import run_ffmpeg

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


class DiscordSink:
    """The core's ReplySink over a Target: texts in 2,000-character parts, "typing…" in `typing` (a
    slash command has its deferred "thinking…" instead), the answer's media within the upload limit."""

    def __init__(self, target: Target, typing: discord.abc.Messageable | None = None) -> None:
        self.target = target
        self.typing = typing
        # MB as the output spec counts them: the limit there (the guild's, capped by the options)
        self.capabilities = Capabilities(max_upload_mb=target.filesize_limit / 1e6, text_limit=MESSAGE_MAX)

    async def send_text(self, text: str) -> None:
        for part in split_text(text, self.capabilities.text_limit):
            await self.target.send(part)

    def working(self, spec: OutputSpec, lang: str) -> AbstractAsyncContextManager[None]:
        return self.typing.typing() if self.typing is not None else nullcontext()

    async def send_media(self, outcome: ReplyOutcome, media: Path, spec: OutputSpec, lang: str) -> None:
        """The media as an attachment with the answer's first part, the rest of the answer after it; a
        video over the limit re-encoded to fit, else (or when Discord refuses it) audio and text."""
        limit = min(self.target.filesize_limit, int(spec.max_mb * 1e6))
        parts = split_text(outcome.answer) or [""]
        with tempfile.TemporaryDirectory(prefix="talktwin-dc-") as tmp:  # never beside the blob
            path = media
            if path.suffix == ".mp4" and (await asyncio.to_thread(path.stat)).st_size > limit:
                shrunk = await asyncio.to_thread(shrink_video, media, outcome.duration, limit, Path(tmp))
                path = shrunk or media
            size = (await asyncio.to_thread(path.stat)).st_size
            if size <= limit:
                file = discord.File(path, filename=f"reply{path.suffix}")
                try:
                    await self.target.send(parts[0] or None, file=file)
                except discord.HTTPException as e:
                    if e.status != 413:
                        raise
                    log.warning("upload of %d bytes refused (%s); sending audio and text", size, e)
                else:
                    for part in parts[1:]:
                        await self.target.send(part)
                    return
            await self._audio_fallback(outcome, media, limit, lang, Path(tmp))

    async def _audio_fallback(
        self, outcome: ReplyOutcome, media: Path, limit: int, lang: str, tmp: Path
    ) -> None:
        log.warning("reply of %d bytes does not fit %d; sending audio and text", media.stat().st_size, limit)
        await self.target.send(t("answer_too_big", lang))
        audio: Path | None = media
        if media.suffix != ".ogg":
            audio = await asyncio.to_thread(_audio_from, media, tmp)
        if audio is not None and audio.stat().st_size <= limit:
            try:
                await self.target.send(None, file=discord.File(audio, filename="reply.ogg"))
            except discord.HTTPException as e:
                if e.status != 413:
                    raise
        await self.send_text(outcome.answer)


def message_sink(message: discord.Message | discord.PartialMessage, cap: int) -> DiscordSink:
    """Answers as replies to a user's message, with "typing…" in its channel while they are made."""
    return DiscordSink(MessageTarget(message, cap), typing=message.channel)


def interaction_sink(interaction: discord.Interaction, cap: int) -> DiscordSink:
    return DiscordSink(InteractionTarget(interaction, cap))


def shrink_video(path: Path, duration: float, limit: int, folder: Path) -> Path | None:
    """Re-encode at the bitrate that fits `limit` bytes (smaller picture and audio when the budget is
    tight), into `folder`; a second, leaner try when the encoder overshoots. None when no acceptable
    encode fits."""
    budget_kbps = limit * 8 * 0.9 / max(duration, 0.5) / 1000  # 10% for the container
    audio_kbps = AUDIO_KBPS if budget_kbps > 200 else 24
    out = folder / "reply-small.mp4"
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


def _audio_from(mp4: Path, folder: Path) -> Path | None:
    ogg = folder / "reply-audio.ogg"
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
