"""What the bots say, in English and Chinese. One table, so both languages stay in step."""

from __future__ import annotations

TEXTS: dict[str, dict[str, str]] = {
    "start": {
        "en": (
            "Hi {name}! I am your digital twin.\n\n"
            "• Send a voice message or text: I answer as a video of your avatar.\n"
            "• Send a portrait photo: it becomes your avatar.\n"
            "• Send a document (txt, md, pdf, docx): I learn from it.\n\n"
            "/help lists the commands."
        ),
        "zh": (
            "你好，{name}！我是你的数字分身。\n\n"
            "• 发送语音或文字：我会用你的头像视频来回答。\n"
            "• 发送一张正面照：它会成为你的头像。\n"
            "• 发送文档（txt、md、pdf、docx）：我会从中学习。\n\n"
            "/help 查看所有命令。"
        ),
    },
    "help": {
        "en": (
            "/avatar – show your avatar; /avatar reset – back to the default\n"
            "/voice – voice settings, e.g. /voice rate +20, /voice pitch -10, /voice volume 80, /voice reset\n"
            "/mode – video_note, video, voice or text replies\n"
            "/reset – start a new conversation\n"
            "/forget – delete everything I know about you\n"
            "/kb – your documents; /kb remove NAME\n"
            "/lang – en or zh\n"
            "/cancel – stop the reply in work"
        ),
        "zh": (
            "/avatar – 查看头像；/avatar reset – 恢复默认头像\n"
            "/voice – 声音设置，例如 /voice rate +20、/voice pitch -10、/voice volume 80、/voice reset\n"
            "/mode – 回复方式：video_note、video、voice 或 text\n"
            "/reset – 开始新的对话\n"
            "/forget – 删除我关于你的全部数据\n"
            "/kb – 你的文档；/kb remove 文件名\n"
            "/lang – en 或 zh\n"
            "/cancel – 停止正在生成的回复"
        ),
    },
    "cmd_start": {"en": "Start and introduction", "zh": "开始与介绍"},
    "cmd_help": {"en": "List the commands", "zh": "命令列表"},
    "cmd_avatar": {"en": "Show or reset your avatar", "zh": "查看或重置头像"},
    "cmd_voice": {"en": "Choose voice, rate, pitch", "zh": "设置声音、语速、音调"},
    "cmd_mode": {
        "en": "Reply as video note, video, voice or text",
        "zh": "回复方式：圆形视频、视频、语音或文字",
    },
    "cmd_reset": {"en": "Start a new conversation", "zh": "开始新对话"},
    "cmd_forget": {"en": "Delete all your data", "zh": "删除你的全部数据"},
    "cmd_kb": {"en": "List or remove your documents", "zh": "查看或删除你的文档"},
    "cmd_lang": {"en": "Language: en or zh", "zh": "语言：en 或 zh"},
    "cmd_cancel": {"en": "Stop the reply in work", "zh": "停止正在生成的回复"},
    "cancel_nothing": {"en": "There is nothing to stop.", "zh": "现在没有需要停止的任务。"},
    "unknown_command": {
        "en": "I don't know the command {command}. /help lists the ones I know.",
        "zh": "我不认识命令 {command}。/help 可以查看所有命令。",
    },
    "unsupported": {
        "en": "I can't use that kind of message. Send me a voice message, text, a photo or a document.",
        "zh": "我无法处理这种消息。请发送语音、文字、照片或文档。",
    },
    "queued": {
        "en": "I'm still answering your previous message; this one is next.",
        "zh": "我还在回答你上一条消息，这条马上就来。",
    },
    "busy": {
        "en": "I'm still working on your earlier messages. Please wait for those answers first.",
        "zh": "我还在处理你之前的消息，请先等待那些回答。",
    },
    "full": {
        "en": "I'm answering a lot of people right now. Please try again in about {seconds} s.",
        "zh": "现在找我的人太多了，请大约 {seconds} 秒后再试。",
    },
    "rate_limited": {
        "en": "You're sending messages faster than I can answer. Please try again in {seconds} s.",
        "zh": "你发消息太快了，请 {seconds} 秒后再试。",
    },
    "working": {
        "en": "Working on it, this one takes a little longer…",
        "zh": "正在处理，这次需要多一点时间……",
    },
    "not_allowed": {
        "en": "Sorry, this bot is private.",
        "zh": "抱歉，这是一个私人机器人。",
    },
    "avatar_set": {
        "en": "Your new avatar is ready.",
        "zh": "你的新头像已经准备好了。",
    },
    "avatar_greeting": {
        "en": "Hi! This is your new twin. Ask me anything.",
        "zh": "你好！这是你的新分身，有什么想问的吗？",
    },
    "avatar_default": {
        "en": "You are using the default avatar. Send me a portrait photo to change it.",
        "zh": "你正在使用默认头像。发送一张正面照即可更换。",
    },
    "avatar_current": {
        "en": "This is your avatar. /avatar reset goes back to the default.",
        "zh": "这是你的头像。/avatar reset 可恢复默认头像。",
    },
    "avatar_reset": {"en": "Back to the default avatar.", "zh": "已恢复默认头像。"},
    "voice_current": {
        "en": "Voice: {voice}; rate {rate:+d}%, pitch {pitch:+d} Hz, volume {volume}.\nChange with /voice rate +20, /voice pitch -10, /voice volume 80, /voice name NAME or /voice reset.",
        "zh": "声音：{voice}；语速 {rate:+d}%，音调 {pitch:+d} Hz，音量 {volume}。\n修改：/voice rate +20、/voice pitch -10、/voice volume 80、/voice name 名称 或 /voice reset。",
    },
    "voice_bad": {
        "en": "I didn't understand that. Examples: /voice rate +20 (-50..100), /voice pitch -10 (-50..50), /voice volume 80 (10..100).",
        "zh": "没看懂。例如：/voice rate +20（-50..100）、/voice pitch -10（-50..50）、/voice volume 80（10..100）。",
    },
    "voice_default_name": {"en": "default for the language", "zh": "按语言自动选择"},
    "mode_current": {
        "en": "Replies come as: {mode}. Choose another:",
        "zh": "当前回复方式：{mode}。选择其他方式：",
    },
    "mode_set": {"en": "Replies will now come as: {mode}.", "zh": "回复方式已改为：{mode}。"},
    "mode_video_note": {"en": "video note", "zh": "圆形视频"},
    "mode_video": {"en": "video", "zh": "视频"},
    "mode_voice": {"en": "voice message", "zh": "语音"},
    "mode_text": {"en": "text", "zh": "文字"},
    "reset_done": {
        "en": "OK, a fresh start. I've forgotten this conversation.",
        "zh": "好的，重新开始。我已忘记这段对话。",
    },
    "forget_confirm": {
        "en": "This deletes everything I know about you: conversations, avatar, voice settings and documents. Are you sure?",
        "zh": "这会删除我关于你的一切：对话、头像、声音设置和文档。确定吗？",
    },
    "forget_yes": {"en": "Yes, delete everything", "zh": "是的，全部删除"},
    "forget_no": {"en": "No, keep it", "zh": "不，保留"},
    "forget_done": {"en": "Done. I've deleted all your data.", "zh": "完成。你的所有数据都已删除。"},
    "forget_cancelled": {"en": "Nothing was deleted.", "zh": "没有删除任何内容。"},
    "kb_empty": {
        "en": "You have no documents yet. Send me a txt, md, pdf or docx file.",
        "zh": "你还没有文档。发送 txt、md、pdf 或 docx 文件给我吧。",
    },
    "kb_list": {
        "en": "Your documents:\n{items}\n\nRemove one with /kb remove NAME.",
        "zh": "你的文档：\n{items}\n\n删除：/kb remove 文件名",
    },
    "kb_removed": {"en": "Removed {name}.", "zh": "已删除 {name}。"},
    "kb_not_found": {"en": "You have no document called {name}.", "zh": "没有名为 {name} 的文档。"},
    "kb_added": {
        "en": "I've read {name}: {pages} page(s), {chunks} passage(s). Ask me about it!",
        "zh": "我已读完 {name}：{pages} 页，{chunks} 段。可以问我相关问题了！",
    },
    "lang_set": {"en": "I'll talk to you in English.", "zh": "我会用中文和你交流。"},
    "lang_bad": {"en": "Use /lang en or /lang zh.", "zh": "请使用 /lang en 或 /lang zh。"},
    "job_lost": {
        "en": "Sorry, I couldn't answer one of your earlier messages. Please send it again.",
        "zh": "抱歉，我没能回答你之前的一条消息，请再发一次。",
    },
    "answer_too_big": {
        "en": "The video came out too large to send, so here is the answer as voice and text.",
        "zh": "视频太大无法发送，这是语音和文字版的回答。",
    },
    # ---- Discord (slash-command syntax differs from Telegram's)
    "dc_cmd_ask": {"en": "Ask your twin; the answer comes as a video", "zh": "向你的分身提问，以视频回答"},
    "dc_cmd_avatar": {
        "en": "Show your avatar, set it from a photo, or reset it",
        "zh": "查看头像、用照片设置头像或恢复默认",
    },
    "dc_cmd_voice": {
        "en": "Voice, rate, pitch and volume of your twin",
        "zh": "分身的声音、语速、音调和音量",
    },
    "dc_cmd_mode": {"en": "Reply as video, voice or text", "zh": "回复方式：视频、语音或文字"},
    "dc_cmd_reset": {"en": "Start a new conversation here", "zh": "在这里开始新对话"},
    "dc_cmd_forget": {"en": "Delete all your data", "zh": "删除你的全部数据"},
    "dc_cmd_kb": {"en": "List or remove your documents", "zh": "查看或删除你的文档"},
    "dc_opt_question": {"en": "What you want to ask", "zh": "你想问的问题"},
    "dc_opt_image": {"en": "A front-facing portrait photo", "zh": "一张正面人像照片"},
    "dc_opt_avatar_reset": {"en": "Go back to the default avatar", "zh": "恢复默认头像"},
    "dc_opt_voice_name": {
        "en": "A voice name, e.g. en-US-AriaNeural",
        "zh": "声音名称，例如 zh-CN-XiaoxiaoNeural",
    },
    "dc_opt_rate": {"en": "Speaking rate in % (-50..100)", "zh": "语速，百分比（-50..100）"},
    "dc_opt_pitch": {"en": "Pitch in Hz (-50..50)", "zh": "音调，单位 Hz（-50..50）"},
    "dc_opt_volume": {"en": "Volume (10..100)", "zh": "音量（10..100）"},
    "dc_opt_voice_reset": {"en": "Back to the default voice", "zh": "恢复默认声音"},
    "dc_opt_mode": {"en": "How replies come", "zh": "回复的方式"},
    "dc_opt_kb_remove": {"en": "The name of a document to remove", "zh": "要删除的文档名称"},
    "dc_cancel_stopping": {
        "en": "Stopping your reply in work; it will not be sent.",
        "zh": "正在停止你正在生成的回复，它不会被发送。",
    },
    "dc_avatar_hint": {
        "en": "To make a photo your avatar, send it with the word avatar, or use /avatar image.",
        "zh": "要把照片设为头像，请在发送时附上 avatar 一词，或使用 /avatar image。",
    },
    "dc_avatar_current": {
        "en": "This is your avatar. /avatar reset:True goes back to the default.",
        "zh": "这是你的头像。/avatar reset:True 可恢复默认头像。",
    },
    "dc_voice_current": {
        "en": "Voice: {voice}; rate {rate:+d}%, pitch {pitch:+d} Hz, volume {volume}.\nChange with /voice rate:20 pitch:-10 volume:80 name:NAME, or /voice reset:True.",
        "zh": "声音：{voice}；语速 {rate:+d}%，音调 {pitch:+d} Hz，音量 {volume}。\n修改：/voice rate:20 pitch:-10 volume:80 name:名称，或 /voice reset:True。",
    },
    "dc_cooldown": {
        "en": "One moment please: you can send the next message in {seconds} s.",
        "zh": "请稍等：{seconds} 秒后可以发送下一条消息。",
    },
    "dc_unsupported": {
        "en": "I can't use that file. Send text, a voice message or audio file, a photo, or a document (txt, md, pdf, docx, html).",
        "zh": "我无法使用这个文件。请发送文字、语音或音频文件、照片，或文档（txt、md、pdf、docx、html）。",
    },
}


def t(key: str, lang: str, **params: object) -> str:
    """The text `key` in `lang` (English when the language is not covered), formatted with `params`."""
    entry = TEXTS[key]
    return entry.get(lang, entry["en"]).format(**params)


def user_language(code: str | None, preferred: str | None = None) -> str:
    """The language to talk in: the user's choice (/lang), else their app language, else English."""
    if preferred in ("en", "zh"):
        return preferred
    return "zh" if code and code.lower().startswith("zh") else "en"
