"""`[telegram]` in the settings: how the Telegram adapter behaves (its token and endpoints come from
the environment, bots/telegram/options.py).

Declared here, next to the adapter that reads it, and registered with pipeline/config.py, which
knows no platform; `TALKTWIN_TELEGRAM__<KEY>` overrides a key as for any other section.
"""

from __future__ import annotations

from pydantic import Field

from pipeline.config import Section, Settings, register_section, section


class TelegramSettings(Section):
    webhook_listen: str
    webhook_port: int = Field(ge=1, le=65535)
    max_pending: int = Field(ge=1, le=20)
    rate_limit_per_minute: int = Field(ge=1)
    progress_after_s: float = Field(ge=0)

    @classmethod
    def of(cls, settings: Settings) -> TelegramSettings:
        return section(settings, "telegram", cls)


register_section("telegram", TelegramSettings)
