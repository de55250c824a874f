"""`[discord]` in the settings: how the Discord adapter behaves (its token, ids and endpoints come
from the environment, bots/discord/options.py).

Declared here, next to the adapter that reads it, and registered with pipeline/config.py, which
knows no platform; `TALKTWIN_DISCORD__<KEY>` overrides a key as for any other section.
"""

from __future__ import annotations

from pydantic import Field

from pipeline.config import Section, Settings, register_section, section


class DiscordSettings(Section):
    message_content_intent: bool
    max_pending: int = Field(ge=1, le=20)
    cooldown_s: float = Field(ge=0)
    upload_limit_mb: float = Field(gt=0)

    @classmethod
    def of(cls, settings: Settings) -> DiscordSettings:
        return section(settings, "discord", cls)


register_section("discord", DiscordSettings)
