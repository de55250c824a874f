"""How a live conversation listens, draws and answers: the `[live]` settings, and its chat model."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

from pipeline.llm.base import ChatModel
from pipeline.orchestrator import ReplyPipeline

_live_chat_models: weakref.WeakKeyDictionary[ReplyPipeline, ChatModel] = weakref.WeakKeyDictionary()
_live_chat_lock = threading.Lock()


def live_chat_model(pipeline: ReplyPipeline) -> ChatModel:
    """What live conversations over `pipeline` answer with: `[live] chat_model` (for the embedded
    backend a GGUF file, for a server a model name), built once per pipeline and kept while it lives,
    or the pipeline's own when that is not set."""
    settings = pipeline.settings
    wanted = getattr(getattr(settings, "live", None), "chat_model", "")
    if not wanted or wanted == settings.llm.model:
        return pipeline.chat_model
    with _live_chat_lock:
        model = _live_chat_models.get(pipeline)
        if model is None:
            from pipeline.llm.factory import build_chat_model

            own = settings.model_copy(update={"llm": settings.llm.model_copy(update={"model": wanted})})
            model = _live_chat_models[pipeline] = build_chat_model(own)
        return model


@dataclass(frozen=True)
class LiveOptions:
    """How a live conversation listens and draws (the `[live]` settings)."""

    size: int = 256  # frame side in pixels
    fps: int = 25
    sample_rate: int = 48000  # of the audio that leaves with the frames
    vad_threshold: float = 0.5
    min_speech_ms: float = 128  # speech needed to start a turn, and to interrupt the twin
    end_silence_ms: float = 400  # silence that ends the user's turn
    think_after_ms: float = 160  # silence after which an answer is started, shown once the turn ends
    read_ahead_ms: float = 0  # every this much of the user's speech, the model reads the words so far
    max_utterance_s: float = 30
    idle_ahead: int = 3  # idle frames drawn ahead of the one on screen (latency of an answer's start)
    speech_ahead_s: float = 2.0  # answer frames drawn ahead: slack against a busy CPU
    answer_timeout_s: float = 120  # longest one answer may take to write, speak and draw
    offline_voice: bool = True  # with tts.backend "auto": the offline voice, never edge-tts's round trip
    summary_after_quiet_s: float = 3.0  # quiet (no voice, no answer) before memory's summary is written
    first_clause_chars: int = 10  # the first thing said may be a clause this long (0: a whole sentence)
    first_phrase_words: int = 3  # or, in English, a phrase of this many words (0: not)

    @classmethod
    def from_settings(cls, settings: Any) -> LiveOptions:
        live = getattr(settings, "live", None)
        if live is None:
            return cls(fps=settings.render.fps)
        return cls(
            size=live.size,
            fps=settings.render.fps,
            vad_threshold=live.vad_threshold,
            min_speech_ms=live.min_speech_ms,
            end_silence_ms=live.end_silence_ms,
            think_after_ms=live.think_after_ms,
            read_ahead_ms=live.read_ahead_ms,
            max_utterance_s=live.max_utterance_s,
            answer_timeout_s=settings.reply.timeout_s,
            offline_voice=live.offline_voice,
        )

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate // self.fps
