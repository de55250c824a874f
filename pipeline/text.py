"""Text helpers shared by the stages: language guess, cleanup for speech, sentence streaming."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
# Sentence ends: CJK full stops end a sentence at once; Latin ones need a following space or the end.
_CJK_END = "。！？!?；;…"
_LATIN_END = ".!?"
_CLAUSE_END = ",，、:："
# Words an English phrase that may be said on its own is followed by: a clause or an adverbial
# starts ("The sky is blue | because …", "Cats are known | for …"), or the verb after a long subject
# ("The best way to learn to swim | is …"). Not "of", "to", "in", "on": they bind too tightly.
_PHRASE_STARTERS = frozenset(
    {
        *("because", "since", "but", "and", "or", "which", "who", "whose", "that", "when", "where"),
        *("while", "with", "without", "by", "from", "for", "after", "before", "during", "due"),
        *("is", "are", "was", "were"),
    }
)
_WORD = re.compile(r"\S+")
_MARKDOWN = re.compile(r"(\*\*|__|`+|^#+\s*|^\s*[-*+]\s+|^\s*\d+\.\s+)", re.MULTILINE)
_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\ufe0f\u200d]")
_SPACES = re.compile(r"\s+")


# Characters that make a run of Chinese a phrase of grammar or an instruction rather than a name or a
# quoted word: particles, pronouns of reference, question words, verbs of asking and translating.
_ZH_GRAMMAR = set("的了吗呢吧么啊是很把被请帮说讲写译这那哪怎什为想要能觉")
_ZH_GRAMMAR_PAIRS = ("中文", "英文", "汉语", "一下", "意思", "如何", "总结", "解释", "概括", "回答")
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_LEAD = re.compile(r"^\s*([^:：\n]{2,60}?)\s*[:：]")
_EN_GRAMMAR = re.compile(
    r"\b(i|you|my|your|the|a|an|is|are|was|do|does|did|what|how|why|where|who|in|on|of|to|and|for|"
    r"with|this|that|it|can|me)\b",
    re.IGNORECASE,
)
# An English lead only takes over Chinese text when it asks about language itself.
_EN_LANGUAGE_LEAD = re.compile(r"\b(translat\w*|mean(ing|s)?|say|pronounc\w*|in english)\b", re.IGNORECASE)


def detect_language(text: str, default: str = "en") -> str:
    """The language to answer `text` in: "zh" or "en" (`default` when it has no letters at all).

    Mostly Chinese characters is Chinese, mostly Latin letters is English, with one exception that
    counts: a request whose instruction is Chinese around Latin text ("翻译成中文：Luck is a dividend
    of sweat.", "这个 function 的 return value 是什么") is Chinese even though Latin letters
    outnumber the characters, because the user wants a Chinese answer. A name or a word or two of
    Chinese inside an English sentence ("What does 你好 mean?", "I live in 上海") stays English.
    """
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    if cjk == 0 and latin == 0:
        return default
    lead = _instruction_lead(text)
    if lead is not None:
        return lead
    if cjk == 0 or latin == 0:
        return "zh" if cjk else "en"
    if _chinese_frames_latin(text):
        return "zh"
    if _EN_GRAMMAR.search(text) and not any(_is_grammar(r) for r in _CJK_RUN.findall(text)):
        return "en"  # an English sentence naming something in Chinese: "I live in 上海浦东新区"
    # one Chinese character carries about as much as a short English word
    return "zh" if cjk * 3 >= latin else "en"


def _is_grammar(run: str) -> bool:
    return any(ch in _ZH_GRAMMAR for ch in run) or any(p in run for p in _ZH_GRAMMAR_PAIRS)


def _instruction_lead(text: str) -> str | None:
    """The language of a "<instruction>: <text to work on>" request's instruction, if it has one.

    A Chinese lead with grammar in it ("翻译成中文：…", "总结一下：…") makes the request Chinese; an
    English lead counts only when it is about language ("Translate to English: 今天…"), so
    "Note: 我明天…" stays Chinese.
    """
    m = _LEAD.match(text)
    if m is None:
        return None
    lead = m.group(1)
    cjk, latin = len(_CJK.findall(lead)), len(_LATIN.findall(lead))
    if cjk >= 2 and cjk * 3 >= latin and _is_grammar(lead):
        return "zh"  # not a speaker's name before a quote ("李明：Hello everyone…")
    if cjk == 0 and len(lead.split()) >= 2 and _EN_LANGUAGE_LEAD.search(lead):
        return "en"
    return None


def _chinese_frames_latin(text: str) -> bool:
    """Chinese grammar around or between the Latin words: the sentence is Chinese with English in it.

    True when the text begins or ends with a run of Chinese that has grammar in it ("…是什么意思？",
    "把 … 翻译成中文"), or when two or more separate runs of Chinese carry grammar between Latin
    words ("我觉得 machine learning 很 interesting").
    """
    runs = list(_CJK_RUN.finditer(text))
    letters = [m.start() for m in re.finditer(r"[A-Za-z\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]", text)]
    first, last = letters[0], letters[-1]
    for run in runs:
        at_edge = run.start() == first or run.end() - 1 == last
        if at_edge and _is_grammar(run.group()):
            return True
    return len(runs) >= 2 and sum(_is_grammar(r.group()) for r in runs) >= 1


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

    With `first_clause_chars`, the first piece may end at a clause mark (a comma, 、 or a colon)
    once it is that long: a live answer starts speaking after "To make a good cup of tea," instead
    of waiting for the model to finish the whole first sentence (~1 s on 2 cores). With
    `first_phrase_words` as well, an English first sentence without such a mark may be cut before
    a word that starts a phrase, once that many words precede it ("The sky is blue" | "because of
    …"): the piece ends without a mark (`is_phrase`), to be said as a phrase that goes on.
    """

    def __init__(
        self,
        min_chars: int = 12,
        max_chars: int = 220,
        first_clause_chars: int = 0,
        first_phrase_words: int = 0,
    ) -> None:
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.first_clause_chars = first_clause_chars
        self.first_phrase_words = first_phrase_words
        self._buf = ""
        self._released = False

    def feed(self, piece: str) -> list[str]:
        self._buf += piece
        out = []
        while (cut := self._find_cut()) is not None:
            sentence, self._buf = self._buf[:cut].strip(), self._buf[cut:]
            if sentence:
                out.append(sentence)
                self._released = True
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
            elif ch in _CLAUSE_END and self._clause_ends_at(i):
                return i + 1
            if end is not None:
                while end < len(buf) and buf[end] in _CJK_END + _LATIN_END + "\"'”’）)":
                    end += 1
                if _weight(buf[:end].strip()) >= self.min_chars:
                    return end
            if i + 1 >= self.max_chars and ch in " ，,、":
                return i + 1
        return self._phrase_cut()

    def _phrase_cut(self) -> int | None:
        """Where the first piece may end before a phrase-starting word (see the class), if anywhere."""
        if not self.first_phrase_words or not self.first_clause_chars or self._released:
            return None
        buf = self._buf
        if _CJK.search(buf):
            return None
        words = list(_WORD.finditer(buf))
        # the last word may still be growing ("is" → "island"): only words followed by a space count
        complete = words if buf[-1:].isspace() else words[:-1]
        for n, word in enumerate(complete):
            if n < self.first_phrase_words or word.group().lower() not in _PHRASE_STARTERS:
                continue
            before = buf[: word.start()].rstrip()
            if before[-1:].isalnum() and _weight(before) >= self.first_clause_chars:
                return word.start()
        return None

    def _clause_ends_at(self, i: int) -> bool:
        """The first piece may end at the clause mark at `i`."""
        if not self.first_clause_chars or self._released:
            return False
        buf = self._buf
        # "384,400" or "3:30" are not clauses: a Latin mark needs a space after it
        spaced = buf[i] not in ",:" or (i + 1 < len(buf) and buf[i + 1].isspace())
        return spaced and _weight(buf[: i + 1].strip()) >= self.first_clause_chars


def is_phrase(piece: str) -> bool:
    """A piece cut before a phrase-starting word (SentenceSplitter), not at a mark."""
    return piece[-1:].isalnum()


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
