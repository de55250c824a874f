"""A cheap token estimate for budgeting prompts without loading a tokenizer.

Qwen-style BPE tokenizers spend about one token per CJK character and one per 3-4 Latin characters;
we round up (1 per CJK char, 1 per 3 other chars) so the budget errs on the safe side.
"""

from __future__ import annotations

import re

_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def estimate_tokens(text: str) -> int:
    cjk = len(_CJK.findall(text))
    return cjk + -(-(len(text) - cjk) // 3) + (1 if text else 0)


def trim_to_tokens(text: str, budget: int) -> str:
    """`text` cut (at a character) to fit `budget` tokens, with an ellipsis when cut."""
    if estimate_tokens(text) <= budget:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix that fits
        mid = (lo + hi + 1) // 2
        if estimate_tokens(text[:mid]) + 1 <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "…"
