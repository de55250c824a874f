"""The bot's commands (/start /help /avatar /voice /mode /reset /forget /kb /lang) and their buttons."""

from __future__ import annotations

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.ext import ContextTypes

from bots.telegram.guard import guarded
from bots.texts import t, user_language
from pipeline.types import VoiceSettings

COMMANDS = ("start", "help", "avatar", "voice", "mode", "reset", "forget", "kb", "lang", "cancel")
MODES = ("video_note", "video", "voice", "text")


class CommandHandlers:
    """Mixed into TelegramBot, whose application core, memory, knowledge and service these use."""

    @guarded
    async def cmd_start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        user, message = update.effective_user, update.effective_message
        assert user is not None and message is not None
        await message.reply_text(t("start", self.language_of(user), name=user.first_name))

    @guarded
    async def cmd_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_user is not None and update.effective_message is not None
        await update.effective_message.reply_text(t("help", self.language_of(update.effective_user)))

    @guarded
    async def cmd_avatar(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        user, message = update.effective_user, update.effective_message
        assert user is not None and message is not None
        key, lang = self._user(user), self.language_of(user)
        if context.args and context.args[0].lower() == "reset":
            await self.service.call(self.memory.clear_avatar, key)
            await message.reply_text(t("avatar_reset", lang))
            return
        image = self.memory.avatar(key)
        if image is None:
            await message.reply_text(t("avatar_default", lang))
        else:
            await message.reply_photo(image, caption=t("avatar_current", lang))

    @guarded
    async def cmd_voice(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        user, message = update.effective_user, update.effective_message
        assert user is not None and message is not None
        key, lang = self._user(user), self.language_of(user)
        voice = self.core.voice_of(key)
        args = context.args or []
        if args and args[0].lower() == "reset":
            voice = self.core.set_voice(key, None)
        elif args:
            changed = _changed_voice(voice, args)
            if changed is None:
                await message.reply_text(t("voice_bad", lang))
                return
            voice = self.core.set_voice(key, changed)
        await message.reply_text(
            t(
                "voice_current",
                lang,
                voice=voice.voice or t("voice_default_name", lang),
                rate=voice.rate,
                pitch=voice.pitch,
                volume=voice.volume,
            )
        )

    @guarded
    async def cmd_mode(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        user, message = update.effective_user, update.effective_message
        assert user is not None and message is not None
        key, lang = self._user(user), self.language_of(user)
        if context.args and context.args[0] in MODES:
            self.memory.update_profile(key, mode=context.args[0])
            await message.reply_text(t("mode_set", lang, mode=t(f"mode_{context.args[0]}", lang)))
            return
        current = self.memory.profile(key).mode
        buttons = [[InlineKeyboardButton(t(f"mode_{m}", lang), callback_data=f"mode:{m}")] for m in MODES]
        await message.reply_text(
            t("mode_current", lang, mode=t(f"mode_{current}", lang)),
            reply_markup=InlineKeyboardMarkup(buttons),
        )

    @guarded
    async def cmd_cancel(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_user is not None and update.effective_message is not None
        stopped = self.service.cancel(self._user(update.effective_user))
        lang = self.language_of(update.effective_user)
        if not stopped:
            await update.effective_message.reply_text(t("cancel_nothing", lang))
        # when a reply was stopped, its job answers with "Okay, I stopped working on that."

    @guarded
    async def cmd_reset(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_user is not None and update.effective_message is not None
        await self.service.call(self.memory.reset, self._thread(update))
        await update.effective_message.reply_text(t("reset_done", self.language_of(update.effective_user)))

    @guarded
    async def cmd_forget(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_user is not None and update.effective_message is not None
        lang = self.language_of(update.effective_user)
        buttons = [
            [
                InlineKeyboardButton(t("forget_yes", lang), callback_data="forget:yes"),
                InlineKeyboardButton(t("forget_no", lang), callback_data="forget:no"),
            ]
        ]
        await update.effective_message.reply_text(
            t("forget_confirm", lang), reply_markup=InlineKeyboardMarkup(buttons)
        )

    @guarded
    async def cmd_kb(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        user, message = update.effective_user, update.effective_message
        assert user is not None and message is not None
        key, lang = self._user(user), self.language_of(user)
        args = context.args or []
        if len(args) >= 2 and args[0].lower() == "remove":
            name = " ".join(args[1:])
            removed = await self.service.call(self.knowledge.remove_document, key, name)
            await message.reply_text(t("kb_removed" if removed else "kb_not_found", lang, name=name))
            return
        documents = await self.service.call(self.knowledge.documents, key)
        if not documents:
            await message.reply_text(t("kb_empty", lang))
            return
        items = "\n".join(f"• {d.name} ({d.chunks})" for d in documents)
        await message.reply_text(t("kb_list", lang, items=items))

    @guarded
    async def cmd_lang(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        user, message = update.effective_user, update.effective_message
        assert user is not None and message is not None
        choice = (context.args or [""])[0].lower()
        if choice not in ("en", "zh"):
            await message.reply_text(t("lang_bad", self.language_of(user)))
            return
        self.memory.update_profile(self._user(user), language=choice)
        await message.reply_text(t("lang_set", choice))

    @guarded
    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query, user = update.callback_query, update.effective_user
        assert query is not None and user is not None
        await query.answer()
        key, lang = self._user(user), self.language_of(user)
        kind, _, value = (query.data or "").partition(":")
        if kind == "forget":
            if value == "yes":
                await self.core.forget(key)
                lang = user_language(user.language_code)  # the stored preference is gone too
                await query.edit_message_text(t("forget_done", lang))
            else:
                await query.edit_message_text(t("forget_cancelled", lang))
        elif kind == "mode" and value in MODES:
            self.memory.update_profile(key, mode=value)
            await query.edit_message_text(t("mode_set", lang, mode=t(f"mode_{value}", lang)))


def _changed_voice(voice: VoiceSettings, args: list[str]) -> VoiceSettings | None:
    """Apply `/voice rate +20` style arguments to `voice`; None when they make no sense."""
    what = args[0].lower()
    if len(args) < 2:
        return None
    if what == "name":
        return VoiceSettings(args[1], voice.rate, voice.volume, voice.pitch)
    bounds = {"rate": (-50, 100), "pitch": (-50, 50), "volume": (10, 100)}
    if what not in bounds:
        return None
    try:
        value = int(args[1])
    except ValueError:
        return None
    low, high = bounds[what]
    if not low <= value <= high:
        return None
    return VoiceSettings(
        voice.voice,
        value if what == "rate" else voice.rate,
        value if what == "volume" else voice.volume,
        value if what == "pitch" else voice.pitch,
    )
