"""Telegram settings: secrets and endpoints from the environment, behaviour from [telegram] in config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bots.telegram.settings import TelegramSettings
from pipeline.config import Settings
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class TelegramOptions:
    token: str
    # PTB's base_url / base_file_url; set them to use a local Bot API server (which also lifts the
    # 20 MB download / 50 MB upload limits) or, in tests, a fake one. PTB appends the token.
    api_base_url: str = "https://api.telegram.org/bot"
    file_base_url: str = "https://api.telegram.org/file/bot"
    allowed_users: frozenset[int] = frozenset()  # empty = everyone
    webhook_url: str = ""  # set = webhook mode (Telegram POSTs updates to us) instead of long polling
    webhook_secret: str = ""
    webhook_listen: str = "127.0.0.1"
    webhook_port: int = 8443
    download_limit_mb: float = 20
    upload_limit_mb: float = 50
    max_pending: int = 3
    rate_limit_per_minute: int = 12
    progress_after_s: float = 10
    group_shared_memory: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str], settings: Settings) -> TelegramOptions | None:
        """None when TELEGRAM_BOT_TOKEN is not set (the bot is simply not started)."""
        token = environ.get("TELEGRAM_BOT_TOKEN", "").strip()
        if not token:
            return None
        cfg = TelegramSettings.of(settings)
        try:
            allowed = frozenset(
                int(part)
                for part in environ.get("TELEGRAM_ALLOWED_USERS", "").replace(" ", "").split(",")
                if part
            )
        except ValueError:
            raise ConfigError("TELEGRAM_ALLOWED_USERS: expected comma-separated numeric user ids") from None
        base = environ.get("TELEGRAM_API_BASE_URL", "").strip()
        file_base = environ.get("TELEGRAM_FILE_BASE_URL", "").strip()
        local_server = bool(base)
        return cls(
            token=token,
            api_base_url=base or cls.api_base_url,
            file_base_url=file_base or cls.file_base_url,
            allowed_users=allowed,
            webhook_url=environ.get("TELEGRAM_WEBHOOK_URL", "").strip(),
            webhook_secret=environ.get("TELEGRAM_WEBHOOK_SECRET", "").strip(),
            webhook_listen=cfg.webhook_listen,
            webhook_port=cfg.webhook_port,
            # a local Bot API server takes files up to 2000 MB; our own upload limit still applies
            download_limit_mb=min(settings.limits.max_upload_mb, 2000 if local_server else 20),
            upload_limit_mb=2000 if local_server else 50,
            max_pending=cfg.max_pending,
            rate_limit_per_minute=cfg.rate_limit_per_minute,
            progress_after_s=cfg.progress_after_s,
            group_shared_memory=settings.memory.group_shared,
        )
