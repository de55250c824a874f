"""Facts a user states about themselves ("my name is…", "I like…", "我叫…", "我喜欢…"), found by rules.

They are kept as notes beside the rolling summary and never summarised away: a weak summariser may
drop a name, a regex does not. Single-valued facts (name, home, age, birthday, job) replace the
previous value; likes and dislikes accumulate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_END = r"(?=$|[.,!?;:\n。，！？；：、]|\s+(?:and|but|because|so)\s)"
_VALUE = r"([^.,!?;:\n。，！？；：、]{1,60}?)"


@dataclass(frozen=True)
class Fact:
    key: str  # "name", or "likes:<value>" for facts that accumulate
    text: str  # the note as the model sees it


_RULES: tuple[tuple[str, str, str], ...] = (
    # (kind, pattern, note template)
    ("name", rf"\bmy name is {_VALUE}{_END}", "The user's name is {}."),
    ("name", rf"\b(?:call me|i am called|i'm called) {_VALUE}{_END}", "The user's name is {}."),
    ("name", rf"(?:我叫|我的名字是|我的名字叫|叫我){_VALUE}{_END}", "用户的名字是{}。"),
    ("home", rf"\bi live in {_VALUE}{_END}", "The user lives in {}."),
    ("home", rf"我住在{_VALUE}{_END}", "用户住在{}。"),
    ("age", r"\bi(?: am|'m) (\d{1,3}) years? old\b", "The user is {} years old."),
    ("age", r"我今年(\d{1,3}|[一二三四五六七八九十百]{1,4})岁", "用户今年{}岁。"),
    ("birthday", rf"\bmy birthday is {_VALUE}{_END}", "The user's birthday is {}."),
    ("birthday", rf"我的生日是{_VALUE}{_END}", "用户的生日是{}。"),
    ("job", rf"\bi work (?:as|at|for) {_VALUE}{_END}", "The user works as/at {}."),
    ("job", rf"我(?:是一名|是一个|的工作是){_VALUE}{_END}", "用户的工作：{}。"),
    ("job", r"我在([^，。！？,.!?]{1,30}?)(?:工作|上班)", "用户在{}工作。"),
    ("allergy", rf"\bi(?: am|'m) allergic to {_VALUE}{_END}", "The user is allergic to {}."),
    ("allergy", rf"我对{_VALUE}过敏", "用户对{}过敏。"),
    ("dislikes", rf"\bi (?:don't|do not) like {_VALUE}{_END}", "The user doesn't like {}."),
    ("dislikes", rf"\bi (?:hate|dislike) {_VALUE}{_END}", "The user doesn't like {}."),
    ("dislikes", rf"我(?:不喜欢|讨厌|不爱){_VALUE}{_END}", "用户不喜欢{}。"),
    ("likes", rf"\bi (?:really )?(?:like|love|enjoy|adore) {_VALUE}{_END}", "The user likes {}."),
    ("likes", rf"\bmy favou?rite {_VALUE}{_END}", "The user's favourite {}."),
    ("likes", rf"(?<!不)(?:我(?:很|最|特别|非常)?(?:喜欢|爱吃|爱喝|爱))(?!你){_VALUE}{_END}", "用户喜欢{}。"),
    ("likes", rf"我最喜欢的{_VALUE}{_END}", "用户最喜欢的{}。"),
)
_COMPILED = tuple((kind, re.compile(p, re.IGNORECASE), note) for kind, p, note in _RULES)
_SINGLE = {"name", "home", "age", "birthday", "job"}
_SKIP = {"you", "it", "that", "this", "to", "你", "它", "这个", "那个"}


def extract_facts(text: str) -> list[Fact]:
    """The facts stated in one user message, in order; questions are not statements."""
    found: list[Fact] = []
    seen: set[str] = set()
    for sentence in re.split(r"(?<=[.!?。！？\n])", text):
        if sentence.strip().endswith(("?", "？", "吗", "吗。")):
            continue
        taken: list[tuple[int, int]] = []
        for kind, pattern, note in _COMPILED:
            for m in pattern.finditer(sentence):
                if any(a < m.end() and m.start() < b for a, b in taken):
                    continue  # "I don't like X" must not also count as "like X"
                value = m.group(1).strip(" \"'“”‘’「」")
                if not value or value.lower() in _SKIP:
                    continue
                key = kind if kind in _SINGLE else f"{kind}:{value.lower()}"
                if key not in seen:
                    seen.add(key)
                    taken.append(m.span())
                    found.append(Fact(key, note.format(value)))
    return found
