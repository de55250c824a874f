"""WarmPrompt: keeps the chat model's prompt cache ready for a user's next live question.

On 2 cores the embedded 1.5B reads 60-100 prompt tokens a second, so what decides how soon a live
answer starts is how much of its prompt llama.cpp has already read (its prompt cache holds several
prompts). A live conversation therefore has the model read the user's prompt ahead of time (after
each turn, and the words of a question while the user is still saying it), and keeps the prompt's
beginning stable: memory's rolling summary, which rewrites the notes at the top
of the prompt and holds the model's one slot for seconds, is not written in the background during
the session but here, in the user's quiet moments, and given up the moment they speak.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pipeline.context import QuietTimeSummaries
from pipeline.llm.base import ChatMessage, ChatModel
from pipeline.orchestrator import ReplyPipeline

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE_S = 60.0


class WarmPrompt:
    """The prompt of one user's conversation thread, read ahead by `chat_model`."""

    def __init__(self, pipeline: ReplyPipeline, chat_model: ChatModel, *, thread: str, user: str) -> None:
        self.pipeline, self.chat_model = pipeline, chat_model
        self.thread, self.user = thread, user
        context = pipeline.context
        self.summaries = context if isinstance(context, QuietTimeSummaries) else None
        self._held = False
        self._retry_at = 0.0

    def hold_summaries(self) -> None:
        """No background summary of the thread from now on (the conversation writes them)."""
        if self.summaries is not None and not self._held:
            self.summaries.hold_summaries(self.thread)
            self._held = True

    def release_summaries(self) -> None:
        """Background summaries again; one still due starts now."""
        if self.summaries is not None and self._held:
            self._held = False
            self.summaries.release_summaries(self.thread)

    def prime(self, lang: str, stop: Callable[[], bool] | None = None) -> None:
        """Have the model read the user's prompt (persona, notes, history) with the persona of `lang`,
        as the next question's will begin: that question then costs its own few tokens, not the whole
        prompt (~1.7 s on 2 cores when nothing is cached). Blocking; `stop()` gives it up."""
        context = self.pipeline.context.context_for(self.thread, self.user, "")
        messages = self.pipeline._messages("你好" if lang == "zh" else "Hi", lang, context, lang)
        self.read(messages, stop, "primed")

    def read_ahead(
        self, words: str, language: str, lang: str, stop: Callable[[], bool] | None = None
    ) -> None:
        """Have the model read the prompt of a question whose first `words` the user has said so far
        (under the persona of `lang`): when the question is complete, only its last words are left."""
        context = self.pipeline.context.context_for(self.thread, self.user, words)
        self.read(self.pipeline._messages(words, language, context, lang), stop, "read ahead")

    def read(self, messages: list[ChatMessage], stop: Callable[[], bool] | None, what: str) -> None:
        """Have the model read `messages` into its prompt cache (it writes one token). Blocking;
        `stop()` gives it up (a question is waiting), which a model reporting its progress (the
        embedded one) notices after each batch of the prompt it reads; what it has read stays cached."""
        started = time.perf_counter()
        stream = self.chat_model.stream(messages, max_tokens=1, temperature=0)
        try:
            for _ in stream:
                if stop is not None and stop():
                    log.info("live: %s given up after %.2f s", what, time.perf_counter() - started)
                    return
        except Exception as e:  # a model that cannot answer now says so on the first question
            log.info("live: the chat model could not read a prompt (%s): %s", what, e)
            return
        finally:
            stream.close()
        log.info("live: %s the chat model's prompt in %.2f s", what, time.perf_counter() - started)

    def summarize(self, stop: Callable[[], bool], lang: str) -> None:
        """Write the summary due, if one is; `stop()` gives it up (nothing is written), e.g. when the
        user speaks: a question then waits at most for the prompt the model is reading, whose batch
        cannot be stopped. A new summary changes the prompt's beginning: it is primed at once."""
        if self.summaries is None or time.monotonic() < self._retry_at:
            return
        if not self.summaries.needs_summary(self.thread):
            return
        started = time.monotonic()
        try:
            written = self.summaries.summarize_now(self.thread, stop=stop)
        except Exception:
            log.exception("live summary failed")
            self._retry_at = time.monotonic() + RETRY_AFTER_FAILURE_S
            return
        took = time.monotonic() - started
        log.info("live summary %s in %.1f s", "written" if written else "given up", took)
        if written:
            self.prime(lang, stop)
