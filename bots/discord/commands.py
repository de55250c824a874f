"""Slash commands (/ask, /avatar, /voice, /mode, /reset, /forget, /kb) and the /forget buttons.

Settings answers are ephemeral: only the user sees their avatar, voice, documents and the forget
prompt. /ask and /avatar with a photo defer ("thinking…") and answer with a follow-up, as the reply
takes longer than Discord's 3 s to make.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands

from bots.discord.delivery import InteractionTarget, send_text_ephemeral
from bots.discord.inputs import is_image, reply_format
from bots.texts import t, user_language
from pipeline.orchestrator import ReplyResult
from pipeline.types import VoiceSettings

if TYPE_CHECKING:
    from bots.discord.bot import DiscordBot

log = logging.getLogger(__name__)

FORGET_YES = "talktwin:forget:yes"
FORGET_NO = "talktwin:forget:no"


class ForgetView(discord.ui.View):
    """The confirmation under /forget. Persistent (fixed custom ids, no timeout), so a restart between
    the prompt and the click does not strand it; it only ever deletes the data of whoever clicks."""

    def __init__(self, bot: DiscordBot, lang: str = "en") -> None:
        super().__init__(timeout=None)
        self.bot = bot
        yes = discord.ui.Button(
            label=t("forget_yes", lang), style=discord.ButtonStyle.danger, custom_id=FORGET_YES
        )
        no = discord.ui.Button(
            label=t("forget_no", lang), style=discord.ButtonStyle.secondary, custom_id=FORGET_NO
        )
        yes.callback = self._yes  # type: ignore[method-assign]
        no.callback = self._no  # type: ignore[method-assign]
        self.add_item(yes)
        self.add_item(no)

    async def _yes(self, interaction: discord.Interaction) -> None:
        await self.bot.service.call(self.bot.memory.forget, self.bot.user_key(interaction.user))
        lang = user_language(str(interaction.locale))  # the stored preference is gone too
        await interaction.response.edit_message(content=t("forget_done", lang), view=None)

    async def _no(self, interaction: discord.Interaction) -> None:
        lang = self.bot.language_of(interaction.user, str(interaction.locale))
        await interaction.response.edit_message(content=t("forget_cancelled", lang), view=None)

    async def on_error(
        self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item
    ) -> None:
        await self.bot.on_command_error(interaction, app_commands.CommandInvokeError(None, error))  # type: ignore[arg-type]


def register_commands(tree: app_commands.CommandTree, bot: DiscordBot) -> None:
    """Add the commands to `tree`; each checks the allow-list and answers in the user's language."""

    async def enter(interaction: discord.Interaction) -> str | None:
        """The user's language, or None (after saying so) when the allow-list keeps them out."""
        lang = bot.language_of(interaction.user, str(interaction.locale))
        if not bot.allowed(interaction.user.id, interaction.guild_id):
            await interaction.response.send_message(t("not_allowed", lang), ephemeral=True)
            return None
        return lang

    def say_to(interaction: discord.Interaction) -> Callable[[str], object]:
        return lambda line: send_text_ephemeral(interaction, line)

    def thinking(interaction: discord.Interaction):
        return lambda: interaction.response.defer(thinking=True)

    @tree.command(name="ask", description=t("dc_cmd_ask", "en"))
    @app_commands.describe(question="What you want to ask")
    async def ask(interaction: discord.Interaction, question: str) -> None:
        lang = await enter(interaction)
        if lang is None:
            return
        user = interaction.user
        thread = bot.thread(user, interaction.guild_id, interaction.channel_id)

        async def job() -> Callable[[Path], ReplyResult]:
            request = bot.request(user, thread, text=question)
            return lambda out: bot.pipeline.reply(request, out)

        target = InteractionTarget(interaction, bot.options.upload_limit_bytes)
        await bot.run_job(user, lang, target, say_to(interaction), job, before=thinking(interaction))

    @tree.command(name="avatar", description=t("dc_cmd_avatar", "en"))
    @app_commands.describe(image="A front-facing portrait photo", reset="Go back to the default avatar")
    async def avatar(
        interaction: discord.Interaction, image: discord.Attachment | None = None, reset: bool = False
    ) -> None:
        lang = await enter(interaction)
        if lang is None:
            return
        user, key = interaction.user, bot.user_key(interaction.user)
        if reset:
            await bot.service.call(bot.memory.clear_avatar, key)
            await interaction.response.send_message(t("avatar_reset", lang), ephemeral=True)
            return
        if image is not None:
            if not is_image(image):
                await interaction.response.send_message(t("dc_unsupported", lang), ephemeral=True)
                return
            thread = bot.thread(user, interaction.guild_id, interaction.channel_id)
            target = InteractionTarget(interaction, bot.options.upload_limit_bytes)
            await bot.set_avatar(
                user, image, thread, lang, target, say_to(interaction), before=thinking(interaction)
            )
            return
        current = bot.memory.avatar(key)
        if current is None:
            await interaction.response.send_message(t("avatar_default", lang), ephemeral=True)
        else:
            photo = discord.File(io.BytesIO(current), filename="avatar.jpg")
            await interaction.response.send_message(t("dc_avatar_current", lang), file=photo, ephemeral=True)

    @tree.command(name="voice", description=t("dc_cmd_voice", "en"))
    @app_commands.describe(
        name="A voice name, e.g. en-US-AriaNeural",
        rate="Speaking rate in % (-50..100)",
        pitch="Pitch in Hz (-50..50)",
        volume="Volume (10..100)",
        reset="Back to the default voice",
    )
    async def voice(
        interaction: discord.Interaction,
        name: str | None = None,
        rate: app_commands.Range[int, -50, 100] | None = None,
        pitch: app_commands.Range[int, -50, 50] | None = None,
        volume: app_commands.Range[int, 10, 100] | None = None,
        reset: bool = False,
    ) -> None:
        lang = await enter(interaction)
        if lang is None:
            return
        key = bot.user_key(interaction.user)
        current = VoiceSettings() if reset else bot.memory.profile(key).voice
        changed = VoiceSettings(
            name if name is not None else current.voice,
            rate if rate is not None else current.rate,
            volume if volume is not None else current.volume,
            pitch if pitch is not None else current.pitch,
        )
        if changed != bot.memory.profile(key).voice:
            bot.memory.update_profile(key, voice=changed)
        line = t(
            "dc_voice_current",
            lang,
            voice=changed.voice or t("voice_default_name", lang),
            rate=changed.rate,
            pitch=changed.pitch,
            volume=changed.volume,
        )
        await interaction.response.send_message(line, ephemeral=True)

    @tree.command(name="mode", description=t("dc_cmd_mode", "en"))
    @app_commands.describe(mode="How replies come")
    async def mode(
        interaction: discord.Interaction, mode: Literal["video", "voice", "text"] | None = None
    ) -> None:
        lang = await enter(interaction)
        if lang is None:
            return
        key = bot.user_key(interaction.user)
        if mode is None:
            current = reply_format(bot.memory.profile(key).mode)
            line = t("mode_current", lang, mode=t(f"mode_{current}", lang)) + " /mode video | voice | text"
        else:
            bot.memory.update_profile(key, mode=mode)
            line = t("mode_set", lang, mode=t(f"mode_{mode}", lang))
        await interaction.response.send_message(line, ephemeral=True)

    @tree.command(name="reset", description=t("dc_cmd_reset", "en"))
    async def reset(interaction: discord.Interaction) -> None:
        lang = await enter(interaction)
        if lang is None:
            return
        thread = bot.thread(interaction.user, interaction.guild_id, interaction.channel_id)
        await bot.service.call(bot.memory.reset, thread)
        await interaction.response.send_message(t("reset_done", lang), ephemeral=True)

    @tree.command(name="forget", description=t("dc_cmd_forget", "en"))
    async def forget(interaction: discord.Interaction) -> None:
        lang = await enter(interaction)
        if lang is None:
            return
        await interaction.response.send_message(
            t("forget_confirm", lang), view=ForgetView(bot, lang), ephemeral=True
        )

    @tree.command(name="kb", description=t("dc_cmd_kb", "en"))
    @app_commands.describe(remove="The name of a document to remove")
    async def kb(interaction: discord.Interaction, remove: str | None = None) -> None:
        lang = await enter(interaction)
        if lang is None:
            return
        key = bot.user_key(interaction.user)
        if remove:
            removed = await bot.service.call(bot.knowledge.remove_document, key, remove)
            line = t("kb_removed" if removed else "kb_not_found", lang, name=remove)
        else:
            documents = await bot.service.call(bot.knowledge.documents, key)
            items = "\n".join(f"• {d.name} ({d.chunks})" for d in documents)
            line = t("kb_list", lang, items=items) if documents else t("kb_empty", lang)
            line = line.replace("/kb remove NAME", "/kb remove:NAME").replace(
                "/kb remove 文件名", "/kb remove:文件名"
            )
        await interaction.response.send_message(line[:2000], ephemeral=True)
