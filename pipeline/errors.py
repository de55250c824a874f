"""Errors a user can cause, each with a message in English and Chinese.

Adapters show `error.user_message(lang)` to the user and log everything else. Internal failures
(a crashed model, a bug) are never turned into these: they stay ordinary exceptions, are logged with
their traceback, and the user sees `InternalFailure`'s generic apology instead.
"""

from __future__ import annotations

from typing import ClassVar

SUPPORTED_LANGUAGES = ("en", "zh")


class TalkTwinError(Exception):
    """Base class for failures the user can understand and act on."""

    code: ClassVar[str] = "error"
    messages: ClassVar[dict[str, str]] = {
        "en": "Something went wrong.",
        "zh": "出了点问题。",
    }

    def __init__(self, detail: str = "", **params: object) -> None:
        super().__init__(detail or self.messages["en"].format(**params))
        self.detail = detail
        self.params = params

    def user_message(self, lang: str = "en") -> str:
        """The message for the user, in `lang` ("en" or "zh"; others fall back to English)."""
        template = self.messages.get(lang if lang in self.messages else "en")
        return template.format(**self.params)


class UnreadableAudio(TalkTwinError):
    code = "unreadable_audio"
    messages = {
        "en": "I could not read that audio. Please send a voice message or an audio file.",
        "zh": "无法读取这段音频，请发送语音消息或音频文件。",
    }


class EmptyAudio(TalkTwinError):
    code = "empty_audio"
    messages = {
        "en": "That recording is empty or silent. Please try again.",
        "zh": "这段录音是空的或没有声音，请再试一次。",
    }


class AudioTooLong(TalkTwinError):
    code = "audio_too_long"
    messages = {
        "en": "That recording is {seconds:.0f} s long; the limit is {limit:.0f} s.",
        "zh": "这段录音长 {seconds:.0f} 秒，上限是 {limit:.0f} 秒。",
    }


class FileTooLarge(TalkTwinError):
    code = "file_too_large"
    messages = {
        "en": "That file is too large ({size_mb:.1f} MB); the limit is {limit_mb:.0f} MB.",
        "zh": "文件太大（{size_mb:.1f} MB），上限是 {limit_mb:.0f} MB。",
    }


class EmptyTranscript(TalkTwinError):
    code = "empty_transcript"
    messages = {
        "en": "I could not make out any words in that recording. Please speak a little louder or closer.",
        "zh": "我没有听清录音里的内容，请大声一点或靠近麦克风再说一次。",
    }


class EmptyText(TalkTwinError):
    code = "empty_text"
    messages = {
        "en": "Your message is empty. Please write or say something.",
        "zh": "消息是空的，请输入文字或发送语音。",
    }


class TextTooLong(TalkTwinError):
    code = "text_too_long"
    messages = {
        "en": "Your message is too long ({chars} characters); the limit is {limit}.",
        "zh": "消息太长（{chars} 个字符），上限是 {limit} 个字符。",
    }


class UnreadableImage(TalkTwinError):
    code = "unreadable_image"
    messages = {
        "en": "I could not open that picture. Please send a JPEG, PNG or WebP photo.",
        "zh": "无法打开这张图片，请发送 JPEG、PNG 或 WebP 格式的照片。",
    }


class NoFaceFound(TalkTwinError):
    code = "no_face"
    messages = {
        "en": "I could not find a face in that photo. Please send a clear, front-facing portrait.",
        "zh": "照片里没有找到人脸，请发送一张清晰的正面照。",
    }


class FaceTooSmall(TalkTwinError):
    code = "face_too_small"
    messages = {
        "en": "The face in that photo is too small. Please send a closer portrait.",
        "zh": "照片中的人脸太小，请发送一张更近的肖像照。",
    }


class ModelMissing(TalkTwinError):
    code = "model_missing"
    messages = {
        "en": "A model is missing on the server: {name}. Run `python run_bots.py models install`.",
        "zh": "服务器缺少模型：{name}。请运行 `python run_bots.py models install`。",
    }


class CheckpointError(TalkTwinError):
    """A model file the user brought (a renderer's checkpoint) is missing, unreadable or of another
    layout. Said once, at load, with what was expected and where the authors publish the file."""

    code = "checkpoint_error"
    messages = {
        "en": "Cannot use the model file {path}: {problem}. Expected {layout}. The authors publish it at "
        "{source}.",
        "zh": "无法使用模型文件 {path}：{problem}。应为 {layout}。作者在 {source} 发布该文件。",
    }


class ChatModelCrashed(TalkTwinError):
    """The chat model's process died or stopped answering mid-reply (after the one retry)."""

    code = "chat_model_crashed"
    messages = {
        "en": "Sorry, my language model stopped while answering. Please send your message again.",
        "zh": "抱歉，我的语言模型在回答时意外停止了，请再发一次。",
    }


class WorkerCrashed(TalkTwinError):
    """The process making a reply died mid-reply (after the one retry)."""

    code = "worker_crashed"
    messages = {
        "en": "Sorry, something broke while I was making that answer. Please send your message again.",
        "zh": "抱歉，生成回答时出了故障，请再发一次。",
    }


class InternalFailure(TalkTwinError):
    code = "internal"
    messages = {
        "en": "Sorry, something went wrong on my side. Please try again in a moment.",
        "zh": "抱歉，我这边出了点问题，请稍后再试。",
    }


class ConfigError(Exception):
    """A bad setting, found at start-up; the message names the key."""


def error_for_code(code: str, detail: str = "", params: dict[str, object] | None = None) -> TalkTwinError:
    """The user-facing error a worker reported by its code and params (InternalFailure when unknown)."""
    pending: list[type[TalkTwinError]] = [TalkTwinError]
    while pending:
        cls = pending.pop()
        if cls.code == code and cls is not TalkTwinError:
            error = cls.__new__(cls)
            Exception.__init__(error, detail or code)
            error.detail, error.params = detail, dict(params or {})
            return error
        pending.extend(cls.__subclasses__())
    return InternalFailure(detail)
