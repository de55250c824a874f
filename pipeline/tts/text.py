"""Text and timing helpers shared by the speech engines.

Every engine gets the same cleaned text (no markdown marks or emoji a voice would read out) and
refuses text with nothing speakable in it, so the user gets one clear error whichever engine runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from difflib import SequenceMatcher

from pipeline.errors import EmptyText
from pipeline.text import clean_for_speech, has_speakable_text
from pipeline.types import PhonemeTiming, WordTiming

# A "word" for timing purposes: a run of letters/digits (with inner apostrophes or hyphens), or
# a single CJK character, which engines time one by one.
WORD_PATTERN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+(?:['’\-][^\W_]+)*")
_STRESS = "ˈˌ"


def prepare_text(text: str) -> str:
    """`text` cleaned for speaking; EmptyText when nothing in it can be spoken."""
    cleaned = clean_for_speech(text)
    if not has_speakable_text(cleaned):
        raise EmptyText(f"nothing speakable in {text[:40]!r}")
    return cleaned


def split_words(text: str) -> list[str]:
    """The words of `text` as timings name them: Latin words, single CJK characters."""
    return WORD_PATTERN.findall(text)


def align_words(
    words: list[str], word_phonemes: list[str], phonemes: Sequence[PhonemeTiming]
) -> tuple[WordTiming, ...]:
    """Time the input `words` by matching each word's own phonemes against the timed phonemes spoken.

    In a sentence words change: "I am" is phonemized as one word, "the" as ðə or ði, "42" becomes
    "forty two". Counting words would drift after the first such change; a sequence alignment of
    the phoneme strings does not. The input words are kept (subtitles show what was written); one
    with no matched phoneme gets the gap between its neighbours.
    """
    spoken = "".join(p.phoneme for p in phonemes)
    owner = [i for i, p in enumerate(phonemes) for _ in p.phoneme]  # spoken char -> phoneme index
    word_of = [k for k, wp in enumerate(word_phonemes) for _ in wp]  # reference char -> word index
    hits: list[list[int]] = [[] for _ in words]
    matcher = SequenceMatcher(None, "".join(word_phonemes), spoken, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        for d in range(size):
            hits[word_of[a + d]].append(owner[b + d])
    spans: list[tuple[float, float] | None] = [
        (phonemes[min(h)].start, phonemes[max(h)].end) if h else None for h in hits
    ]
    out: list[WordTiming] = []
    cursor = phonemes[0].start if phonemes else 0.0
    for k, word in enumerate(words):
        span = spans[k]
        if span is None:
            nxt = next((s[0] for s in spans[k + 1 :] if s is not None), cursor)
            span = (cursor, max(cursor, nxt))
        start = max(span[0], cursor)
        out.append(WordTiming(word, start, max(span[1], start)))
        cursor = out[-1].end
    return tuple(out)


def clamp_phonemes(phonemes: list[PhonemeTiming], duration: float) -> tuple[PhonemeTiming, ...]:
    """Phonemes sorted, inside [0, duration], without empty ones (engines round positions)."""
    out = []
    for p in sorted(phonemes, key=lambda p: p.start):
        start, end = max(0.0, min(p.start, duration)), max(0.0, min(p.end, duration))
        if end > start and p.phoneme:
            out.append(PhonemeTiming(p.phoneme, start, end))
    return tuple(out)


def drop_stress(phoneme: str) -> str:
    """IPA without stress marks: timings are per sound, and stress does not change the mouth."""
    return phoneme.translate({ord(c): None for c in _STRESS})
