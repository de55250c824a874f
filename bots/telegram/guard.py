"""The wrapper every Telegram handler runs in: allow-list first, then failures become clear replies."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from telegram import Update
from telegram.constants import ChatType
from telegram.ext import ContextTypes

from bots.texts import t
from pipeline.errors import InternalFailure, TalkTwinError

log = logging.getLogger(__name__)

Handler = Callable[[Any, Update, ContextTypes.DEFAULT_TYPE], Awaitable[None]]


def guarded(handler: Handler) -> Handler:
    """Every handler: allow-list first; then any failure becomes a clear reply, never a crash."""

    @wraps(handler)
    async def wrapper(self: Any, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        user = update.effective_user
        message = update.effective_message
        if user is None or user.is_bot:
            return
        if self.options.allowed_users and user.id not in self.options.allowed_users:
            if (
                message is not None
                and update.effective_chat
                and update.effective_chat.type == ChatType.PRIVATE
            ):
                await message.reply_text(t("not_allowed", self.language_of(user)), do_quote=True)
            return
        try:
            await handler(self, update, context)
        except TalkTwinError as e:
            log.info("user error %s for %s: %s", e.code, user.id, e)
            if message is not None:
                await message.reply_text(e.user_message(self.language_of(user)), do_quote=True)
        except Exception:
            log.exception("handler %s failed", handler.__name__)
            if message is not None:
                with contextlib.suppress(Exception):
                    await message.reply_text(
                        InternalFailure().user_message(self.language_of(user)), do_quote=True
                    )

    return wrapper
