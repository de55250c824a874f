"""Answers worth hearing: a bilingual evaluation of what the twin says (issue 10, part 3).

Each prompt of `bench/data/answer_eval.jsonl` (English and Chinese, about half each: long
transcripts, capability questions, impossible requests and near misses, stories, preferences,
translations and facts, memory recall with history and remembered notes, identity, small talk) goes
through the real `ReplyPipeline.reply` text path with the configured chat model: the same language
detection, prompt, answer policy and sentence handling a user gets, but no speech and no video. Every
answer is checked automatically for each failure kind seen in the embedded models:

    empty           nothing, or the pipeline's "no answer" line
    parroting       half the answer or more copied from the prompt in runs of 6+ words (12+ characters)
    false_claim     promising what the twin cannot do ("I'll set an alarm", "我已经为你设置"),
                    inventing live data (a forecast, today's temperature), or answering an impossible
                    request without declining it
    wrong_identity  claiming to be another assistant or company's model
    language_mix    a Chinese answer with an ordinary (lower-case) English word not in the prompt
                    ("mangoes"; names such as "Google 日历" are fine), or an English answer with Chinese
                    characters not in the prompt
    wrong_language  the answer's language is not the one the user asked in
    role_confusion  speaking the user's facts as the twin's own ("My name is Marcus")
    invented        asserting the user's preference the twin was never told (or not saying it doesn't
                    know it)
    mid_sentence    the answer does not end with sentence punctuation
    wrongly_refused a near miss ("Who invented the alarm clock?") refused as an impossible request, or
                    the model refusing an ordinary message ("I'm sorry, but I can't assist with that.")

and, reported apart, `missing_content`: the answer lacks what a correct answer contains (the city, the
river, what a transcript was about).

    .venv/bin/python -m bench.answer_eval                         # default model, T=0 and T=0.7
    .venv/bin/python -m bench.answer_eval --baseline              # before: the prompt of b181d98
    .venv/bin/python -m bench.answer_eval --model checkpoints/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf

`--baseline` measures the text path as it was before this work (commit b181d98): its personas, its
prompt assembly, its language detection, no answer policy; the chat model runtime is today's. Results
go to bench/results/answer_eval_<label>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import PROJECT_ROOT, Settings, load_settings
from pipeline.context import ReplyContext
from pipeline.llm.base import ChatMessage
from pipeline.orchestrator import NO_ANSWER, ReplyPipeline, ReplyRequest
from pipeline.text import detect_language

DATA = PROJECT_ROOT / "bench" / "data" / "answer_eval.jsonl"
FAILURES = (
    "empty",
    "parroting",
    "false_claim",
    "wrong_identity",
    "language_mix",
    "wrong_language",
    "role_confusion",
    "invented",
    "mid_sentence",
    "wrongly_refused",
)
CONTENT = "missing_content"


# ------------------------------------------------------------------------------------------ checks
_NEGATED_EN = re.compile(r"\b(not|n't|cannot|unable|no|never|without)\b|can't|don't|won't", re.I)
_NEGATED_ZH = re.compile(r"[不没无未别非]")
_CLAIMS_EN = [
    re.compile(p, re.I)
    for p in (
        r"\b(i'll|i will|i can|i've|i have|i'm going to|i am going to|let me|i'd be happy to|i'm able to)\b"
        r"[^.!?]{0,30}\b(set|setting|remind|schedule|call|calling|dial|text|send|sent|email|control|book|booked|"
        r"order|ordered|play|browse|turn(ed)? (on|off)|switch(ed)? (on|off)|look up .{0,20}online|"
        r"search the (web|internet)|check the (weather|forecast|news))\b",
        r"\b(alarm|reminder|timer)s?\b[^.!?]{0,20}\b(is|are|has been|have been|was) "
        r"(set|scheduled|created)\b",
        r"\b(alarm|reminder|timer) (set|scheduled|created)\b",
        r"^\W*(calling|dialing|sending|texting|setting|turning (on|off)|switching (on|off))\b",
        r"\byou can (control|use me to|ask me to (set|remind|call|send|check|turn|book|order|play))\b",
        r"\b(today|tonight|tomorrow)('s)? (weather|forecast)\b[^.!?]{0,30}\b(is|will be|looks)\b",
        r"\b(it will|it'll|expect(ing)?|there will be)\b[^.!?]{0,15}\b(sunny|rain|rainy|cloudy|snow|storm|"
        r"showers|windy)\b",
        r"\b(today|tomorrow|tonight|currently|right now|outside|weather)\b[^.!?]{0,40}\b-?\d{1,3} ?"
        r"(°|degrees)",
        r"\bthe (current|latest) (price|news|headlines?|score)\b[^.!?]{0,20}\b(is|are)\b",
    )
]
_CLAIMS_ZH = [
    re.compile(p)
    for p in (
        r"(好的|好|没问题|当然)[，,!！]?.{0,6}(已经|已|会|将|马上|这就|现在)?(为你|帮你|给你|替你)?"
        r"(设置|设定|设好|定好|设了|定了|打开|关掉|关闭|拨打|发送|提醒你)",
        r"我(已经|已|会|将|可以|能|能够|来|马上|这就|现在|正在)+(为你|帮你|给你|替你)?.{0,4}"
        r"(设置|设定|设好|定好|设一个|定一个|打电话|拨打|发送|发消息|发短信|提醒你|控制|上网|搜索|浏览|查天气|查询天气|"
        r"查看天气|打开(灯|空调|电视|电脑|应用|音乐)|关掉|关闭)",
        r"已(经)?(为你|帮你|给你)?(设置|设定|设好|定好|发送|拨打|打开|关闭|关掉)",
        r"(闹钟|提醒|计时器|定时器)(已|已经)?(设置|设定|设好|定好)(好|了)",
        r"(今天|明天|后天|今晚|明早|本周|这周|周末)的?(天气|气温)(是|会|将|很|预计|为|晴|多云|阴|有)",
        r"(会|将会|预计)(有)?(下雨|下雪|晴天|多云|雷阵雨|小雨|大雨)",
        r"(今天|明天|后天|今晚|现在|目前|气温|天气)[^。！？]{0,15}-?\d{1,2} ?(度|°|℃)",
    )
]
_OTHER_AI_NAMES = (
    r"(chatgpt|openai|gpt-?\d|alibaba|qwen|tongyi|claude|anthropic|gemini|bard|siri|alexa|阿里|通义|千问)"
)
# A claim about the twin itself: "I am ChatGPT", "made by OpenAI", "我是通义千问", "我是由OpenAI开发的"
# ("天气预报由阿里云…提供" is nonsense, but not about who the twin is). Letters, not \b, around the
# name: "由OpenAI开发" has no word boundary between 由 and O.
_OTHER_AI = re.compile(
    r"(\b(i am|i'm|i was \w+ by|made by|created by|developed by|trained by|built by)\b|我是|我由|我来自|是由)"
    r"[^.!?。！？]{0,20}(?<![a-z])" + _OTHER_AI_NAMES + r"(?![a-z])",
    re.I,
)
# "TalkTwin 是开源项目，由阿里云开发。": made by another company, in a sentence about the twin
_MADE_BY_OTHER = re.compile(r"由" + _OTHER_AI_NAMES + r"[^，。！？]{0,3}(开发|制作|训练|打造)", re.I)
_ABOUT_TWIN = re.compile(r"talktwin|我|^\W*(是)?由", re.I)


def _wrong_identity(text: str, zh: bool) -> bool:
    negated = _NEGATED_ZH if zh else _NEGATED_EN
    if any(_OTHER_AI.search(c) for c in clauses(text) if not negated.search(c)):
        return True
    sentences = re.split(r"(?<=[.!?。！？])", text)
    return any(
        _MADE_BY_OTHER.search(s) and _ABOUT_TWIN.search(s) and not negated.search(s) for s in sentences
    )


_LATIN_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_ENDS = tuple(".!?。！？…")
_CLOSERS = "\"'”’)）」』"


def clauses(text: str) -> list[str]:
    return [c for c in re.split(r"[.!?;,，。！？；]|\bbut\b|但是|不过", text) if c.strip()]


_DECLINED = re.compile(
    r"\b(can't|cannot|can not|unable|not able|don't have|do not have|no access|offline)\b|"
    r"不能|无法|没办法|没有办法|做不到|不会|查不了|看不到|不了|离线",
    re.I,
)


_MODEL_REFUSAL = re.compile(
    r"\b(can't|cannot|unable to) (assist|help) with (that|this)\b|无法(回答|帮助|协助)|不能(回答|帮助|协助)",
    re.I,
)
_UNKNOWN = re.compile(
    r"\b(don't know|do not know|not sure|no idea|haven't told|have not told|tell me|let me know|what is it|"
    r"what's yours|can't know|cannot know)\b|"
    r"不知道|不清楚|告诉我|还没(有)?告诉|你喜欢什么|是什么呢|哪种|什么水果",
    re.I,
)


def _claims(answer: str, zh: bool) -> bool:
    """A promise or invented live data, in a sentence whose words around the match are not negated
    ("I can't set alarms" is honest; "好的，设置一个十分钟的计时器" is not)."""
    patterns, negated = (_CLAIMS_ZH, _NEGATED_ZH) if zh else (_CLAIMS_EN, _NEGATED_EN)
    for sentence in re.split(r"(?<=[.!?。！？])", answer):
        for p in patterns:
            for m in p.finditer(sentence):
                if not negated.search(sentence[max(0, m.start() - 12) : m.end()]):
                    return True
    return False


def _tokens(text: str) -> list[str]:
    return [t.lower() for t in re.findall(r"[A-Za-z0-9']+|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]", text)]


def copied_runs_share(answer: str, prompt: str) -> float:
    """Share of the answer's tokens inside runs copied from the prompt that are 6+ words (12+ Chinese
    characters) long, by longest matching blocks (difflib), independent of the policy's own detector."""
    from difflib import SequenceMatcher

    a, p = _tokens(answer), _tokens(prompt)
    if not a:
        return 0.0

    def weight(tokens: list[str]) -> float:
        return sum(0.5 if _CJK.fullmatch(t) else 1.0 for t in tokens)

    matcher = SequenceMatcher(None, a, p, autojunk=False)
    copied = sum(
        weight(a[m.a : m.a + m.size])
        for m in matcher.get_matching_blocks()
        if weight(a[m.a : m.a + m.size]) >= 6
    )
    return copied / weight(a)


def check(item: dict, answer: str, fixed: bool) -> list[str]:
    """The names of the checks this answer fails."""
    failed = []
    text = answer.strip()
    if not text or text in NO_ANSWER:
        return ["empty"] + ([CONTENT] if item["expect"] else [])
    zh = item["lang"] == "zh"
    prompt = " ".join([item["q"], *(t for _, t in item["history"]), *item["notes"]])
    if copied_runs_share(text, item["q"]) >= 0.5:
        failed.append("parroting")
    # an impossible request answered without declining is pretending, whatever the words
    translation = bool(
        re.search(r"translat|翻译", item["q"], re.I)
    )  # "Today's weather is good." is fine there
    if (_claims(text, zh) and not translation) or (
        item["kind"] == "impossible" and not _DECLINED.search(text)
    ):
        failed.append("false_claim")
    if _wrong_identity(text, zh):
        failed.append("wrong_identity")
    if zh:
        # names stay as they are in Chinese ("Google 日历", "iPhone", "TalkTwin"): an ordinary English word
        # ("我的最喜欢水果是 mangoes") is the mixing
        allowed = {w.lower() for w in _LATIN_WORD.findall(prompt)}
        if any(w.islower() and len(w) > 1 and w not in allowed for w in _LATIN_WORD.findall(text)):
            failed.append("language_mix")
    elif any(ch not in prompt for ch in _CJK.findall(text)):
        failed.append("language_mix")
    if detect_language(text, default=item["lang"]) != item["lang"]:
        failed.append("wrong_language")
    if any(re.search(p, text, re.I) for p in item["role"]):
        failed.append("role_confusion")
    negated = _NEGATED_ZH if zh else _NEGATED_EN
    # asked for the user's own preference it was never told, the twin must say it doesn't know
    unknown = item["kind"] == "preference" and not item["notes"] and not _UNKNOWN.search(text)
    if unknown or any(
        re.search(p, c, re.I) for p in item["invented"] for c in clauses(text) if not negated.search(c)
    ):
        failed.append("invented")
    if not text.rstrip(_CLOSERS).endswith(_ENDS):
        failed.append("mid_sentence")
    if (item["model"] and fixed) or (item["kind"] != "impossible" and _MODEL_REFUSAL.search(text)):
        failed.append("wrongly_refused")
    if item["expect"] and not any(re.search(p, text, re.I) for p in item["expect"]):
        failed.append(CONTENT)
    return failed


# ------------------------------------------------------------------------------------------ harness
class EvalContext:
    """Each prompt's own history and notes, as MemoryStore would give them; nothing is remembered."""

    def __init__(self) -> None:
        self.by_user: dict[str, ReplyContext] = {}

    def context_for(self, conversation: str, user: str, text: str) -> ReplyContext:
        return self.by_user.get(user, ReplyContext())

    def record_turn(self, conversation: str, user: str, user_text: str, answer: str) -> None:
        pass


class _NoStage:
    """Speech, video and ASR are not used by text replies; any call is a bug in the harness."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a text reply must not use {name}")


# The text path before this work (commit b181d98), for the "before" figures: its personas, prompt
# assembly and language rule, copied here because the product no longer has them.
BASELINE_PERSONA_EN = (
    "You are TalkTwin, the user's friendly digital twin, an open-source assistant made by the TalkTwin "
    "project that runs on the user's own computer. You answer out loud, so reply in one to three short "
    "spoken sentences of plain English, without lists, markdown or emoji."
)
BASELINE_PERSONA_ZH = (
    "你是 TalkTwin，用户友好的数字分身，由开源项目 TalkTwin 制作，运行在用户自己的电脑上。"
    "你的回答会被朗读出来，所以请用简体中文口语回答，一到两句话，不超过五十个字，"
    "不要使用列表、Markdown 或表情符号。"
)


def baseline_language(text: str) -> str:
    cjk, latin = len(_CJK.findall(text)), len(re.findall(r"[A-Za-z]", text))
    if cjk == 0 and latin == 0:
        return "en"
    return "zh" if cjk * 3 >= latin else "en"


class BaselinePipeline(ReplyPipeline):
    def understand(self, request, timings, token=None):  # type: ignore[no-untyped-def]
        text = (request.text or "").strip()
        return text, baseline_language(text), None

    def _messages(self, question: str, language: str, context: ReplyContext) -> list[ChatMessage]:
        system = BASELINE_PERSONA_ZH if language == "zh" else BASELINE_PERSONA_EN
        if context.notes:
            system += "\n\nWhat you know about the user:\n" + "\n".join(f"- {n}" for n in context.notes)
        return [ChatMessage("system", system), *context.history, ChatMessage("user", question)]


class _PolicyLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class Row:
    id: str
    lang: str
    kind: str
    temperature: float
    answer: str
    seconds: float
    policy: list[str]
    failed: list[str]


def load_items(path: Path = DATA) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run(
    settings: Settings, items: list[dict], temperatures: list[float], *, baseline: bool
) -> tuple[list[Row], int | None]:
    """Answer every item at every temperature through the pipeline's text path; also returns the peak
    memory of the chat model's server process (MB)."""
    from pipeline.llm.factory import build_chat_model

    context = EvalContext()
    cls = BaselinePipeline if baseline else ReplyPipeline
    chat = build_chat_model(settings)
    pipeline = cls(
        settings,
        recognizer=_NoStage(),  # type: ignore[arg-type]
        chat_model=chat,
        synthesizer=_NoStage(),  # type: ignore[arg-type]
        renderer=_NoStage(),  # type: ignore[arg-type]
        context=context,
    )
    policy_log = _PolicyLog()
    logging.getLogger("pipeline.answer_policy").addHandler(policy_log)
    logging.getLogger("pipeline.answer_policy").setLevel(logging.INFO)
    rows: list[Row] = []
    peak_mb = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for t_index, temperature in enumerate(temperatures):
                pipeline.settings = settings.model_copy(
                    update={"llm": settings.llm.model_copy(update={"temperature": temperature})}
                )
                for n, item in enumerate(items):
                    user = f"cli:eval{t_index}x{n}"
                    context.by_user[user] = ReplyContext(
                        history=tuple(ChatMessage(role, text) for role, text in item["history"]),
                        notes=tuple(item["notes"]),
                    )
                    policy_log.messages.clear()
                    t0 = time.perf_counter()
                    result = pipeline.reply(
                        ReplyRequest(user, text=item["q"], format="text"), Path(tmp) / "a"
                    )
                    seconds = time.perf_counter() - t0
                    fixed = any("fixed answer" in m for m in policy_log.messages)
                    row = Row(
                        item["id"],
                        item["lang"],
                        item["kind"],
                        temperature,
                        result.answer,
                        round(seconds, 3),
                        [m.removeprefix("answer policy: ") for m in policy_log.messages],
                        check(item, result.answer, fixed),
                    )
                    rows.append(row)
                    mark = ",".join(row.failed) or "ok"
                    print(
                        f"T={temperature} {item['id']:<24} {seconds:5.1f}s {mark:<28} {result.answer[:90]!r}"
                    )
        peak_mb = _server_peak_rss_mb(chat)
    finally:
        close = getattr(chat, "close", None)
        if close is not None:
            close()
    return rows, peak_mb


def _server_peak_rss_mb(chat: object) -> int | None:
    """Peak resident memory of the embedded model's server process (VmHWM), when there is one."""
    pid = getattr(getattr(chat, "server", None), "pid", None)
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return None
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return round(int(match.group(1)) / 1024) if match else None


def summary(rows: list[Row]) -> dict:
    counts = Counter(f for r in rows for f in r.failed)
    model_rows = [r for r in rows if not any(p.startswith("fixed answer") for p in r.policy)]
    return {
        "answers": len(rows),
        "failure_checks": {k: counts.get(k, 0) for k in FAILURES},
        "failures_total": sum(counts.get(k, 0) for k in FAILURES),
        "answers_with_a_failure": sum(any(f in FAILURES for f in r.failed) for r in rows),
        CONTENT: counts.get(CONTENT, 0),
        "ms_per_answer_median": round(1000 * statistics.median(r.seconds for r in rows)),
        "ms_per_model_answer_median": round(1000 * statistics.median(r.seconds for r in model_rows))
        if model_rows
        else None,
        "ms_per_model_answer_p90": round(
            1000 * sorted(r.seconds for r in model_rows)[int(0.9 * (len(model_rows) - 1))]
        )
        if model_rows
        else None,
        "policy": dict(Counter(p.split(" (")[0].split(";")[0] for r in rows for p in r.policy)),
    }


def recheck(path: Path) -> None:
    """The checks of today's data and code applied to the answers of an earlier run (no model)."""
    report = json.loads(path.read_text(encoding="utf-8"))
    items = {i["id"]: i for i in load_items()}
    rows = [Row(**r) for r in report["rows"] if r["id"] in items]
    for r in rows:
        r.failed = check(items[r.id], r.answer, any(p.startswith("fixed answer") for p in r.policy))
    report["all"] = summary(rows)
    report["by_temperature"] = {
        str(t): summary([r for r in rows if r.temperature == t])
        for t in sorted({r.temperature for r in rows})
    }
    report["failing"] = [r.__dict__ for r in rows if r.failed]
    report["rows"] = [r.__dict__ for r in rows]
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    for r in report["failing"]:
        print(f"T={r['temperature']} {r['id']:<24} {','.join(r['failed']):<28} {r['answer'][:90]!r}")
    print(json.dumps({k: report[k] for k in ("model", "mode", "prompts", "all")}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a GGUF file (default: the configured llm.model)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.7])
    parser.add_argument("--baseline", action="store_true", help="the text path before this work (b181d98)")
    parser.add_argument("--kinds", nargs="*", help="only these kinds of prompt")
    parser.add_argument("--label", help="name of the result file (default: from model and mode)")
    parser.add_argument("--recheck", type=Path, help="re-run only the checks on a result file's answers")
    parser.add_argument(
        "--llm-timeout",
        type=float,
        default=300,
        help="reply.llm_timeout_s for the run: high, so a machine busy with other work slows the answers "
        "down but does not cut them (this measures what is said, not how fast)",
    )
    args = parser.parse_args()
    if args.recheck:
        recheck(args.recheck)
        return

    logging.basicConfig(level=logging.WARNING)
    items = [i for i in load_items() if not args.kinds or i["kind"] in args.kinds]
    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            "TALKTWIN_PATHS__DATA_DIR": data_dir,
            "TALKTWIN_REPLY__LLM_TIMEOUT_S": str(args.llm_timeout),
            "TALKTWIN_REPLY__TIMEOUT_S": str(args.llm_timeout + 120),
        }
        if args.model:
            env["TALKTWIN_LLM__MODEL"] = args.model
        settings = load_settings(environ=env)
        load_before = os.getloadavg()[0]
        rows, peak_mb = run(settings, items, args.temperatures, baseline=args.baseline)
        load_after = os.getloadavg()[0]
    model = Path(settings.llm.model).stem
    label = args.label or f"{model}_{'before' if args.baseline else 'after'}"
    by_temperature = {str(t): summary([r for r in rows if r.temperature == t]) for t in args.temperatures}
    report = {
        "model": model,
        "mode": "before (b181d98 prompt, no answer policy)" if args.baseline else "after",
        "prompts": len(items),
        "temperatures": args.temperatures,
        "chat_server_peak_rss_mb": peak_mb,
        # the machine is shared: timings mean little when other work keeps the 1-minute load above 2
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "all": summary(rows),
        "by_temperature": by_temperature,
        "failing": [r.__dict__ for r in rows if r.failed],
        "rows": [r.__dict__ for r in rows],
    }
    out = PROJECT_ROOT / "bench" / "results" / f"answer_eval_{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    keys = ("model", "mode", "prompts", "chat_server_peak_rss_mb", "load_average_1min", "all")
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
