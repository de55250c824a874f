"""Discord settings: the token, ids and endpoints from the environment, behaviour from [discord] in config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bots.discord.settings import DiscordSettings
from pipeline.config import Settings
from pipeline.errors import ConfigError

MiB = 1024 * 1024


@dataclass(frozen=True)
class DiscordOptions:
    token: str
    channel_ids: frozenset[int] = frozenset()  # channels where every message is for us, not only mentions
    allowed_guilds: frozenset[int] = frozenset()  # with allowed_users: both empty = everyone
    allowed_users: frozenset[int] = frozenset()
    # A Discord-compatible server (or a test fake): REST base ".../api/v10" and gateway "ws://.../".
    api_base_url: str = ""
    gateway_url: str = ""
    message_content_intent: bool = True
    max_pending: int = 1
    cooldown_s: float = 3.0
    upload_limit_mb: float = 10.0
    download_limit_mb: float = 25.0
    group_shared_memory: bool = False
    guild_ready_timeout_s: float = 2.0  # discord.py waits this long after the last GUILD_CREATE

    @property
    def upload_limit_bytes(self) -> int:
        return int(self.upload_limit_mb * MiB)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], settings: Settings) -> DiscordOptions | None:
        """None when DISCORD_BOT_TOKEN is not set (the bot is simply not started)."""
        token = environ.get("DISCORD_BOT_TOKEN", "").strip()
        if not token:
            return None
        cfg = DiscordSettings.of(settings)
        return cls(
            token=token,
            channel_ids=_ids(environ, "DISCORD_CHANNEL_IDS"),
            allowed_guilds=_ids(environ, "DISCORD_ALLOWED_GUILDS"),
            allowed_users=_ids(environ, "DISCORD_ALLOWED_USERS"),
            api_base_url=environ.get("DISCORD_API_BASE_URL", "").strip().rstrip("/"),
            gateway_url=environ.get("DISCORD_GATEWAY_URL", "").strip(),
            message_content_intent=cfg.message_content_intent,
            max_pending=cfg.max_pending,
            cooldown_s=cfg.cooldown_s,
            upload_limit_mb=cfg.upload_limit_mb,
            download_limit_mb=settings.limits.max_upload_mb,
            group_shared_memory=settings.memory.group_shared,
        )


def _ids(environ: Mapping[str, str], name: str) -> frozenset[int]:
    try:
        return frozenset(int(part) for part in environ.get(name, "").replace(" ", "").split(",") if part)
    except ValueError:
        raise ConfigError(f"{name}: expected comma-separated numeric Discord ids") from None
