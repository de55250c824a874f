"""Slash commands (/ask, /avatar, /voice, /mode, /reset, /forget, /kb, /cancel), the /forget buttons
and what a failed command tells its user.

Settings answers are ephemeral: only the user sees their avatar, voice, documents and the forget
prompt. /ask and /avatar with a photo defer ("thinking…") and answer with a follow-up, as the reply
takes longer than Discord's 3 s to make. Descriptions come from bots/texts.py, in English and (through
TextsTranslator, when the commands are synced) in Chinese.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands

from bots.discord.delivery import interaction_sink, send_text_ephemeral
from bots.discord.inputs import is_image, reply_format
from bots.texts import t, user_language
from pipeline.errors import InternalFailure, TalkTwinError
from pipeline.types import VoiceSettings

if TYPE_CHECKING:
    from bots.discord.bot import DiscordBot

log = logging.getLogger(__name__)

FORGET_YES = "talktwin:forget:yes"
FORGET_NO = "talktwin:forget:no"
CHINESE = (discord.Locale.chinese, discord.Locale.taiwan_chinese)


def text(key: str) -> app_commands.locale_str:
    """A description from bots/texts.py: English as is, other languages through TextsTranslator."""
    return app_commands.locale_str(t(key, "en"), key=key)


class TextsTranslator(app_commands.Translator):
    """Gives the synced commands and options their Chinese descriptions (zh-CN and zh-TW), so a
    Chinese Discord client shows the menu in Chinese, as replies already are."""

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        key = string.extras.get("key")
        return t(key, "zh") if key is not None and locale in CHINESE else None


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
        await self.bot.core.forget(self.bot.user_key(interaction.user))
        lang = user_language(str(interaction.locale))  # the stored preference is gone too
        await interaction.response.edit_message(content=t("forget_done", lang), view=None)

    async def _no(self, interaction: discord.Interaction) -> None:
        lang = await self.bot.language_of(interaction.user, str(interaction.locale))
        await interaction.response.edit_message(content=t("forget_cancelled", lang), view=None)

    async def on_error(
        self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item
    ) -> None:
        await command_error(self.bot, interaction, app_commands.CommandInvokeError(None, error))  # type: ignore[arg-type]


async def command_error(
    bot: DiscordBot, interaction: discord.Interaction, error: app_commands.AppCommandError
) -> None:
    """Slash-command failures: a clear ephemeral line for the user, the traceback for the log."""
    cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
    if isinstance(cause, TalkTwinError):
        log.info("user error %s for %s: %s", cause.code, interaction.user.id, cause)
    else:
        log.error("slash command failed", exc_info=cause)
        cause = InternalFailure()
    with contextlib.suppress(Exception):
        lang = await bot.language_of(interaction.user, str(interaction.locale))
        await send_text_ephemeral(interaction, cause.user_message(lang))


def register_commands(tree: app_commands.CommandTree, bot: DiscordBot) -> None:
    """Add the commands to `tree`; each checks the allow-list and answers in the user's language."""

    async def enter(interaction: discord.Interaction) -> str | None:
        """The user's language, or None (after saying so) when the allow-list keeps them out."""
        lang = await bot.language_of(interaction.user, str(interaction.locale))
        if not bot.allowed(interaction.user.id, interaction.guild_id):
            await interaction.response.send_message(t("not_allowed", lang), ephemeral=True)
            return None
        return lang

    async def submit(
        interaction: discord.Interaction, lang: str, text: str | None, image: discord.Attachment | None
    ) -> None:
        """/ask and /avatar with a photo: through the gate and the core like a message, whose id is the
        interaction's. Deferred ("thinking…") once let in; the answer comes as a follow-up."""
        assert interaction.channel_id is not None
        await bot.submit(
            bot.incoming(
                interaction.user, interaction.guild_id, interaction.channel_id, interaction.id, text=text
            ),
            interaction_sink(interaction, bot.options.upload_limit_bytes),
            lang,
            refuse=lambda line: send_text_ephemeral(interaction, line),
            before=lambda: interaction.response.defer(thinking=True),
            fetch=("photo", image) if image is not None else None,
        )

    @tree.command(name="ask", description=text("dc_cmd_ask"))
    @app_commands.describe(question=text("dc_opt_question"))
    async def ask(interaction: discord.Interaction, question: str) -> None:
        lang = await enter(interaction)
        if lang is None:
            return
        await submit(interaction, lang, question, None)

    @tree.command(name="avatar", description=text("dc_cmd_avatar"))
    @app_commands.describe(image=text("dc_opt_image"), reset=text("dc_opt_avatar_reset"))
    async def avatar(
        interaction: discord.Interaction, image: discord.Attachment | None = None, reset: bool = False
    ) -> None:
        lang = await enter(interaction)
        if lang is None:
            return
        key = bot.user_key(interaction.user)
        if reset:
            await asyncio.to_thread(bot.memory.clear_avatar, key)
            await interaction.response.send_message(t("avatar_reset", lang), ephemeral=True)
            return
        if image is not None:
            if not is_image(image):
                await interaction.response.send_message(t("dc_unsupported", lang), ephemeral=True)
                return
            await submit(interaction, lang, None, image)
            return
        current = await asyncio.to_thread(bot.memory.avatar, key)
        if current is None:
            await interaction.response.send_message(t("avatar_default", lang), ephemeral=True)
        else:
            photo = discord.File(io.BytesIO(current), filename="avatar.jpg")
            await interaction.response.send_message(t("dc_avatar_current", lang), file=photo, ephemeral=True)

    @tree.command(name="voice", description=text("dc_cmd_voice"))
    @app_commands.describe(
        name=text("dc_opt_voice_name"),
        rate=text("dc_opt_rate"),
        pitch=text("dc_opt_pitch"),
        volume=text("dc_opt_volume"),
        reset=text("dc_opt_voice_reset"),
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
        heard = await asyncio.to_thread(bot.core.voice_of, key)
        current = bot.core.default_voice if reset else heard
        changed = VoiceSettings(
            name if name is not None else current.voice,
            rate if rate is not None else current.rate,
            volume if volume is not None else current.volume,
            pitch if pitch is not None else current.pitch,
        )
        if reset or changed != heard:
            changed = await asyncio.to_thread(bot.core.set_voice, key, None if reset else changed)
        line = t(
            "dc_voice_current",
            lang,
            voice=changed.voice or t("voice_default_name", lang),
            rate=changed.rate,
            pitch=changed.pitch,
            volume=changed.volume,
        )
        await interaction.response.send_message(line, ephemeral=True)

    @tree.command(name="mode", description=text("dc_cmd_mode"))
    @app_commands.describe(mode=text("dc_opt_mode"))
    async def mode(
        interaction: discord.Interaction, mode: Literal["video", "voice", "text"] | None = None
    ) -> None:
        lang = await enter(interaction)
        if lang is None:
            return
        key = bot.user_key(interaction.user)
        if mode is None:
            current = reply_format((await asyncio.to_thread(bot.memory.profile, key)).mode)
            line = t("mode_current", lang, mode=t(f"mode_{current}", lang)) + " /mode video | voice | text"
        else:
            await asyncio.to_thread(bot.memory.update_profile, key, mode=mode)
            line = t("mode_set", lang, mode=t(f"mode_{mode}", lang))
        await interaction.response.send_message(line, ephemeral=True)

    @tree.command(name="reset", description=text("dc_cmd_reset"))
    async def reset(interaction: discord.Interaction) -> None:
        lang = await enter(interaction)
        if lang is None:
            return
        thread = bot.thread(interaction.user, interaction.guild_id, interaction.channel_id)
        await asyncio.to_thread(bot.memory.reset, thread)
        await interaction.response.send_message(t("reset_done", lang), ephemeral=True)

    @tree.command(name="forget", description=text("dc_cmd_forget"))
    async def forget(interaction: discord.Interaction) -> None:
        lang = await enter(interaction)
        if lang is None:
            return
        await interaction.response.send_message(
            t("forget_confirm", lang), view=ForgetView(bot, lang), ephemeral=True
        )

    @tree.command(name="kb", description=text("dc_cmd_kb"))
    @app_commands.describe(remove=text("dc_opt_kb_remove"))
    async def kb(interaction: discord.Interaction, remove: str | None = None) -> None:
        lang = await enter(interaction)
        if lang is None:
            return
        key = bot.user_key(interaction.user)
        if remove:
            removed = await asyncio.to_thread(bot.knowledge.remove_document, key, remove)
            line = t("kb_removed" if removed else "kb_not_found", lang, name=remove)
        else:
            documents = await asyncio.to_thread(bot.knowledge.documents, key)
            items = "\n".join(f"• {d.name} ({d.chunks})" for d in documents)
            line = t("kb_list", lang, items=items) if documents else t("kb_empty", lang)
            line = line.replace("/kb remove NAME", "/kb remove:NAME").replace(
                "/kb remove 文件名", "/kb remove:文件名"
            )
        await interaction.response.send_message(line[:2000], ephemeral=True)

    @tree.command(name="cancel", description=text("cmd_cancel"))
    async def cancel(interaction: discord.Interaction) -> None:
        lang = await enter(interaction)
        if lang is None:
            return
        stopped = bot.core.cancel(bot.user_key(interaction.user))
        # a stopped reply also says so where it was asked, and sends no video
        line = t("dc_cancel_stopping" if stopped else "cancel_nothing", lang)
        await interaction.response.send_message(line, ephemeral=True)
