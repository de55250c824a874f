"""Knowledge-base evaluation on the bilingual test set (tests/data/knowledge*).

Retrieval: hit@3 and MRR of the expected source document over all questions (embedding only, fast).
End to end: the embedded chat model answers every question with retrieval on and off, through the
pipeline's own prompt (`ReplyPipeline._messages`); an answer counts as correct when it contains one
of the expected keywords.

    .venv/bin/python -m bench.knowledge_eval [--llm] [--limit N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from knowledge.base import KnowledgeBase
from pipeline.config import PROJECT_ROOT, Settings, load_settings
from pipeline.context import ReplyContext
from pipeline.llm.base import ChatModel

DATA = PROJECT_ROOT / "tests" / "data"
DOCS = DATA / "knowledge"
QUESTIONS = DATA / "knowledge_questions.json"


def load_questions() -> list[dict[str, Any]]:
    return json.loads(QUESTIONS.read_text(encoding="utf-8"))


def retrieval_metrics(kb: KnowledgeBase, questions: list[dict[str, Any]], user: str = "test:0") -> dict:
    """hit@3 and MRR of the expected document among the ranked distinct sources (top 10)."""
    hits, rr, misses = 0, 0.0, []
    for q in questions:
        sources: list[str] = []
        for p in kb.search(user, q["q"], k=10):
            if p.source not in sources:
                sources.append(p.source)
        rank = sources.index(q["source"]) + 1 if q["source"] in sources else None
        hits += rank is not None and rank <= 3
        rr += 1 / rank if rank else 0.0
        if rank != 1:
            misses.append({"q": q["q"], "rank": rank, "got": sources[:3]})
    n = len(questions)
    return {"questions": n, "hit@3": round(hits / n, 3), "mrr": round(rr / n, 3), "misses": misses}


def is_correct(answer: str, expected: list[str]) -> bool:
    low = answer.lower()
    return any(e.lower() in low for e in expected)


def answer(chat: ChatModel, settings: Settings, question: dict, context: ReplyContext) -> str:
    """The model's answer through the orchestrator's real prompt assembly."""
    from pipeline.orchestrator import ReplyPipeline

    shim = SimpleNamespace(settings=settings)  # _messages only reads settings
    messages = ReplyPipeline._messages(shim, question["q"], question["lang"], context)  # type: ignore[arg-type]
    return "".join(chat.stream(messages, max_tokens=48, temperature=0.0))


def llm_accuracy(
    chat: ChatModel, settings: Settings, kb: KnowledgeBase, questions: list[dict], *, retrieval: bool
) -> dict:
    correct, rows = 0, []
    for q in questions:
        passages = kb.search("test:0", q["q"]) if retrieval else []
        context = ReplyContext(knowledge=tuple((p.source, p.text) for p in passages))
        text = answer(chat, settings, q, context)
        ok = is_correct(text, q["answer"])
        correct += ok
        rows.append({"q": q["q"], "answer": text, "correct": ok})
    return {"accuracy": round(correct / len(questions), 3), "answers": rows}


def shared_kb(path: Path, settings: Settings | None = None) -> KnowledgeBase:
    settings = settings or load_settings(environ={})
    k = settings.knowledge
    kb = KnowledgeBase(
        path=path, chunk_size=k.chunk_size, chunk_overlap=k.chunk_overlap, min_relevance=k.min_relevance
    )
    kb.sync_shared(DOCS)
    return kb


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llm", action="store_true", help="also run the embedded LLM end to end")
    parser.add_argument("--limit", type=int, default=0, help="only the first N questions for the LLM")
    parser.add_argument("--json", type=Path, help="write the full results here")
    args = parser.parse_args()
    settings = load_settings(environ={})
    questions = load_questions()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        kb = shared_kb(Path(tmp) / "chroma", settings)
        results: dict[str, Any] = {"index_s": round(time.perf_counter() - t0, 2)}
        t0 = time.perf_counter()
        results["retrieval"] = retrieval_metrics(kb, questions)
        results["search_ms"] = round((time.perf_counter() - t0) / len(questions) * 1000, 1)
        print(f"retrieval: hit@3 {results['retrieval']['hit@3']}, MRR {results['retrieval']['mrr']}")
        if args.llm:
            from pipeline.llm.factory import build_chat_model

            chat = build_chat_model(settings)
            subset = questions[: args.limit] if args.limit else questions
            for retrieval in (True, False):
                t0 = time.perf_counter()
                r = llm_accuracy(chat, settings, kb, subset, retrieval=retrieval)
                r["seconds"] = round(time.perf_counter() - t0, 1)
                results["llm_with" if retrieval else "llm_without"] = r
                mode = "on" if retrieval else "off"
                print(f"LLM accuracy, retrieval {mode}: {r['accuracy']} ({r['seconds']} s)")
    if args.json:
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
