"""WarmPrompt: the live conversation's read-ahead of the user's prompt gives way to a question."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from memory.history import InProcessHistory
from pipeline.config import load_settings
from pipeline.live.warm_prompt import WarmPrompt
from pipeline.llm.base import ChatMessage
from pipeline.orchestrator import ReplyPipeline
from tests.helpers import NoRecognizer


class ReadingChat:
    """A chat model reading a long prompt: one empty piece per batch read (as the embedded model
    reports its progress), then one token. Records how many batches were read and whether the
    stream was closed."""

    def __init__(self, batches: int) -> None:
        self.batches, self.read, self.closed = batches, 0, False

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> Iterator[str]:
        try:
            for _ in range(self.batches):
                self.read += 1
                yield ""
            yield "Hi"
        finally:
            self.closed = True


def warm_prompt(tmp_path: Path, chat: ReadingChat) -> WarmPrompt:
    settings = load_settings(environ={"TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data")})
    pipeline = ReplyPipeline(
        settings,
        recognizer=NoRecognizer(),
        chat_model=chat,
        synthesizer=None,  # type: ignore[arg-type]  (priming neither speaks nor draws)
        renderer=None,  # type: ignore[arg-type]
        context=InProcessHistory(settings.memory.recent_turns),
    )
    return WarmPrompt(pipeline, chat, thread="live:1", user="test:1")


def test_priming_reads_the_whole_prompt_when_nobody_waits(tmp_path: Path):
    chat = ReadingChat(batches=12)
    warm_prompt(tmp_path, chat).prime("en")
    assert chat.read == 12 and chat.closed


def test_priming_gives_way_to_a_question_after_the_batch_in_reading(tmp_path: Path):
    chat = ReadingChat(batches=12)
    asked = iter([False, False, True])  # a question comes while the third batch is read
    warm_prompt(tmp_path, chat).prime("zh", stop=lambda: next(asked))
    assert chat.read == 3 and chat.closed  # the model's stream is closed: the server stops reading
