"""Text helpers shared by the stages: language guess, cleanup for speech, sentence streaming."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
# Sentence ends: CJK full stops end a sentence at once; Latin ones need a following space or the end.
_CJK_END = "。！？!?；;…"
_LATIN_END = ".!?"
_MARKDOWN = re.compile(r"(\*\*|__|`+|^#+\s*|^\s*[-*+]\s+|^\s*\d+\.\s+)", re.MULTILINE)
_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\ufe0f\u200d]")
_SPACES = re.compile(r"\s+")


def detect_language(text: str, default: str = "en") -> str:
    """ "zh" when the text is mostly Chinese characters, "en" when mostly Latin letters."""
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    if cjk == 0 and latin == 0:
        return default
    # one Chinese character carries about as much as a short English word
    return "zh" if cjk * 3 >= latin else "en"


def clean_for_speech(text: str) -> str:
    """Drop markdown marks, emoji and runs of whitespace that a voice would read out or stumble on."""
    text = _MARKDOWN.sub("", text)
    text = _EMOJI.sub("", text)
    return _SPACES.sub(" ", text).strip()


def has_speakable_text(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


class SentenceSplitter:
    """Cuts a stream of text pieces (LLM tokens) into sentences as soon as each one is complete.

    The pipeline speaks and renders sentence k while the model is still writing sentence k+1, so a
    sentence is released at its end mark, not at the end of the answer. Very short fragments are
    held back and joined to the next sentence (a lone "OK." makes a choppy clip).
    """

    def __init__(self, min_chars: int = 12, max_chars: int = 220) -> None:
        self.min_chars = min_chars
        self.max_chars = max_chars
        self._buf = ""

    def feed(self, piece: str) -> list[str]:
        self._buf += piece
        out = []
        while (cut := self._find_cut()) is not None:
            sentence, self._buf = self._buf[:cut].strip(), self._buf[cut:]
            if sentence:
                out.append(sentence)
        return out

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []

    def _find_cut(self) -> int | None:
        buf = self._buf
        for i, ch in enumerate(buf):
            end = None
            if ch in _CJK_END or ch == "\n":
                end = i + 1
            elif ch in _LATIN_END and i + 1 < len(buf) and buf[i + 1].isspace():
                # "e.g. " or "3.5" are not ends; a lowercase next word means an abbreviation
                nxt = buf[i + 1 :].lstrip()[:1]
                if nxt and not nxt.islower():
                    end = i + 1
            if end is not None:
                while end < len(buf) and buf[end] in _CJK_END + _LATIN_END + "\"'”’）)":
                    end += 1
                if _weight(buf[:end].strip()) >= self.min_chars:
                    return end
            if i + 1 >= self.max_chars and ch in " ，,、":
                return i + 1
        return None


def _weight(text: str) -> int:
    """Length in Latin-letter units: a Chinese character counts double."""
    return len(text) + len(_CJK.findall(text))


def split_sentences(text: str) -> list[str]:
    """A whole text cut the same way the streaming splitter would cut it."""
    return list(stream_sentences([text]))


def stream_sentences(pieces: Iterable[str]) -> Iterator[str]:
    splitter = SentenceSplitter()
    for piece in pieces:
        yield from splitter.feed(piece)
    yield from splitter.flush()
