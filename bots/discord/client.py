"""discord.py's client, wired to a DiscordBot: intents, slash commands, the events it passes on."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bots.discord.commands import ForgetView, TextsTranslator, command_error, register_commands

if TYPE_CHECKING:
    from bots.discord.bot import DiscordBot

log = logging.getLogger(__name__)


def portal_help(application_id: int | None) -> str:
    """What to tell the operator when Discord refuses the message-content intent (close 4014)."""
    where = f"https://discord.com/developers/applications/{application_id or '<APPLICATION_ID>'}/bot"
    return (
        "Discord refused the privileged message-content intent (close code 4014); running without it, "
        "so in guild channels the bot only sees messages that mention it. To answer every message in "
        f"DISCORD_CHANNEL_IDS, open {where}, enable 'Message Content Intent' under 'Privileged Gateway "
        "Intents', save, and restart. (Or set [discord] message_content_intent = false to silence this.)"
    )


class DiscordClient(discord.Client):
    """discord.py's client, wired to a DiscordBot; rebuilt when the intents change."""

    def __init__(self, bot: DiscordBot, message_content: bool) -> None:
        intents = discord.Intents.default()  # no members/presences: those are privileged too
        intents.message_content = message_content
        super().__init__(
            intents=intents,
            guild_ready_timeout=bot.options.guild_ready_timeout_s,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, replied_user=False),
        )
        self.bot = bot
        self.tree = app_commands.CommandTree(self)
        self.tree.on_error = functools.partial(command_error, bot)  # type: ignore[method-assign]

    async def setup_hook(self) -> None:
        self.add_view(ForgetView(self.bot))  # persistent: the buttons work after a restart too
        register_commands(self.tree, self.bot)
        await self.tree.set_translator(TextsTranslator())
        await self.tree.sync()

    async def on_ready(self) -> None:
        log.info("discord bot %s ready in %d guild(s)", self.user, len(self.guilds))
        self.bot.ready.set()

    async def on_message(self, message: discord.Message) -> None:
        await self.bot.on_message(message)
