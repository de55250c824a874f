"""MemoryStore: keys, persistence, isolation, token budget, rolling summary, facts, reset/forget/export."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from knowledge.base import KnowledgeBase
from memory.keys import conversation_key, disk_name, user_key
from memory.profile import UserProfile
from memory.store import MemoryStore
from memory.tokens import estimate_tokens
from pipeline.config import PROJECT_ROOT, Settings
from pipeline.context import ConversationContext, QuietTimeSummaries
from pipeline.llm.base import ChatMessage
from pipeline.types import VoiceSettings

A, B = user_key("telegram", 1001), user_key("telegram", 1002)
GROUP = -100123
A_GROUP = conversation_key("telegram", 1001, GROUP, group=True)
B_GROUP = conversation_key("telegram", 1002, GROUP, group=True)
SHARED = conversation_key("telegram", 1001, GROUP, group=True, shared_group=True)


class ScriptedChat:
    """A ChatModel that answers with a fixed text; `gate` can hold it to prove work is off the hot path."""

    def __init__(self, reply: str = "They talked about the weather and hobbies.") -> None:
        self.reply, self.calls, self.gate = reply, [], threading.Event()
        self.gate.set()

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> Iterator[str]:
        self.calls.append(list(messages))
        self.gate.wait(30)
        yield self.reply


def store_for(settings: Settings, **kwargs) -> MemoryStore:
    return MemoryStore.from_settings(settings, **kwargs)


def everything(ctx) -> str:
    return json.dumps([[m.content for m in ctx.history], ctx.notes, ctx.knowledge], ensure_ascii=False)


# ---------------------------------------------------------------------------- keys and profile
def test_keys():
    assert user_key("telegram", 42) == "telegram:42"
    assert conversation_key("telegram", 42) == "telegram:42"
    assert conversation_key("telegram", 42, -100123, group=True) == "telegram:-100123:42"
    assert conversation_key("discord", "42", "9", group=True, shared_group=True) == "discord:9"
    for bad in (
        ("matrix", 1),
        ("telegram", "../etc"),
        ("telegram", "a:b"),
        ("telegram", ""),
        ("telegram", True),
    ):
        with pytest.raises(ValueError):
            user_key(*bad)
    with pytest.raises(ValueError):
        conversation_key("telegram", 1, group=True)
    assert len(disk_name(A)) == 32 and ":" not in disk_name(A)


def test_profile_roundtrip_and_persistence(settings: Settings):
    store = store_for(settings)
    assert store.profile(A) == UserProfile(A)
    updated = store.update_profile(
        A, language="zh", voice=VoiceSettings("zh-CN-YunxiNeural", rate=10), mode="voice"
    )
    with pytest.raises(ValueError):
        store.update_profile(A, mode="hologram")
    with pytest.raises(ValueError):
        store.update_profile(A, has_avatar=True)
    store.close()
    again = store_for(settings)
    assert again.profile(A) == updated and again.profile(A).voice.rate == 10
    assert again.profile(B) == UserProfile(B)
    context: ConversationContext = again  # satisfies the pipeline's protocol (checked by type checkers)
    assert callable(context.context_for) and callable(context.record_turn)
    again.close()


def test_avatar(settings: Settings, avatar_bytes: bytes):
    store = store_for(settings)
    cache = settings.resolve(settings.paths.data_dir) / "cache" / "avatars"
    cache.mkdir(parents=True)
    import hashlib

    cached = cache / f"landmarks-v1-{hashlib.sha256(avatar_bytes).hexdigest()}.npy"
    cached.write_bytes(b"landmarks")
    store.set_avatar(A, avatar_bytes)
    assert store.avatar(A) == avatar_bytes and store.profile(A).has_avatar and store.avatar(B) is None
    store.clear_avatar(A)
    assert store.avatar(A) is None and not store.profile(A).has_avatar and not cached.exists()


# ---------------------------------------------------------------------------- context assembly
def test_recent_turns_and_facts(settings: Settings):
    store = store_for(settings)
    store.record_turn(A, A, "Hi! My name is Anna and I like jazz.", "Nice to meet you, Anna!")
    store.record_turn(A, A, "What's the weather?", "Sunny.")
    ctx = store.context_for(A, A, "Who am I?")
    assert [m.role for m in ctx.history] == ["user", "assistant"] * 2
    assert ctx.history[0].content.startswith("Hi! My name is Anna")
    assert "The user's name is Anna." in ctx.notes and "The user likes jazz." in ctx.notes
    store.record_turn(A, A, "Actually, call me Annie.", "Okay, Annie.")
    notes = store.context_for(A, A, "?").notes
    assert "The user's name is Annie." in notes and "The user's name is Anna." not in notes
    store.close()


def test_context_fits_the_token_budget(settings: Settings):
    store = store_for(settings)
    for i in range(12):
        store.record_turn(A, A, f"Message {i}: " + "blah " * 150, "Answer: " + "words " * 100)
    ctx = store.context_for(A, A, "And now?")
    used = sum(estimate_tokens(m.content) for m in ctx.history) + sum(estimate_tokens(n) for n in ctx.notes)
    assert 0 < used <= store.budget
    assert ctx.history[-2].content.startswith("Message 11")  # the newest turns are the ones kept
    assert store.budget < settings.llm.context_tokens - settings.llm.max_tokens
    store.close()


def test_summary_runs_in_background_and_facts_survive_it(settings: Settings):
    chat = ScriptedChat("The user chatted about several unrelated topics.")
    store = store_for(settings, chat_model=chat)
    store.record_turn(A, A, "我叫李雷，我喜欢打篮球。", "你好，李雷！")
    chat.gate.clear()  # hold the summariser
    started = time.perf_counter()
    for i in range(store.recent_turns + store.fold_every):
        store.record_turn(A, A, f"Unrelated question {i}", f"Unrelated answer {i}")
    assert time.perf_counter() - started < 2  # the reply path never waits for the summary
    chat.gate.set()
    store.wait_idle()
    assert chat.calls, "no summary was written"
    assert "李雷" in chat.calls[0][1].content  # the folded turns went to the model as data
    ctx = store.context_for(A, A, "我叫什么名字？")
    assert "用户的名字是李雷。" in ctx.notes and "用户喜欢打篮球。" in ctx.notes
    assert any(n.startswith("Summary of the earlier conversation:") for n in ctx.notes)
    assert len(ctx.history) <= 2 * (store.recent_turns + store.fold_every)
    assert all("我叫李雷" not in m.content for m in ctx.history)  # folded out of the verbatim part
    store.close()


def test_the_history_only_grows_between_folds_so_prompts_share_their_beginning(settings: Settings):
    """The chat model's prompt cache reuses a prompt's beginning: from one question to the next the
    history gains a turn at its end and loses none, until a few turns are folded at once."""
    chat = ScriptedChat("A summary of the earlier turns.")
    store = store_for(settings, chat_model=chat)
    histories, summaries = [], []
    for i in range(2 * (store.recent_turns + store.fold_every)):
        store.record_turn(A, A, f"Question {i}", f"Answer {i}")
        store.wait_idle()
        histories.append(store.context_for(A, A, "?").history)
        summaries.append(len(chat.calls))
    for before, after, folded in zip(histories, histories[1:], summaries[1:], strict=False):
        grew = after[: len(before)] == before and len(after) == len(before) + 2
        assert grew or folded > summaries[histories.index(before)], (before, after)
    assert 2 <= summaries[-1] <= 4  # folds every fold_every turns, not after every turn
    store.close()


def test_held_summaries_wait_for_the_release_and_a_stopped_one_writes_nothing(settings: Settings):
    """A live conversation holds its thread's summaries back and writes them in quiet moments: while
    held, no turn starts one; a summary given up (`stop`) writes nothing and stops the model's stream;
    the release starts the one still due."""
    chat = ScriptedChat("A summary of the earlier turns.")
    store = store_for(settings, chat_model=chat)
    assert isinstance(store, QuietTimeSummaries)
    store.hold_summaries(A)
    store.hold_summaries(A)  # two holders (two live sessions of the same thread)
    for i in range(store.recent_turns + store.fold_every + 1):
        store.record_turn(A, A, f"Question {i}", f"Answer {i}")
        store.record_turn(B, B, f"Question {i}", f"Answer {i}")  # not held: summarised as usual
    store.wait_idle()
    assert len(chat.calls) == 1 and "Question 0" in chat.calls[0][1].content
    assert store.needs_summary(A) and not store.needs_summary(B)
    streams = []
    original = chat.stream

    def recorded(*args, **kwargs):  # type: ignore[no-untyped-def]
        streams.append(original(*args, **kwargs))
        return streams[-1]

    chat.stream = recorded
    assert store.summarize_now(A, stop=lambda: True) is False
    assert streams[0].gi_frame is None  # closed: the model stopped
    assert store.needs_summary(A) and not any(
        n.startswith("Summary") for n in store.context_for(A, A, "?").notes
    )
    store.release_summaries(A)
    store.wait_idle()
    assert store.needs_summary(A) and len(streams) == 1  # still held by the other session
    store.release_summaries(A)
    store.wait_idle()
    assert not store.needs_summary(A) and len(streams) == 2
    assert any(
        n.startswith("Summary of the earlier conversation:") for n in store.context_for(A, A, "?").notes
    )
    store.close()


def test_while_a_summary_is_late_old_turns_drop_out_a_fold_at_a_time(settings: Settings):
    """Summaries held back (a live conversation) or slow: the verbatim history keeps its beginning for
    `fold_every` questions at a time, as folding would, instead of sliding by one turn per question
    (which makes the chat model re-read the whole history every time)."""
    chat = ScriptedChat("A summary of the earlier turns.")
    store = store_for(settings, chat_model=chat)
    store.hold_summaries(A)
    least, most = store.recent_turns, store.recent_turns + store.fold_every
    firsts = []
    for i in range(3 * most):
        store.record_turn(A, A, f"Question {i}", f"Answer {i}")
        history = store.context_for(A, A, "?").history
        assert min(i + 1, least) <= len(history) // 2 <= most and history[-1].content == f"Answer {i}"
        firsts.append(history[0].content)
    changes = [i for i in range(1, len(firsts)) if firsts[i] != firsts[i - 1]]
    assert len(changes) >= 4 and {b - a for a, b in itertools.pairwise(changes)} == {store.fold_every}
    assert not chat.calls  # held: nothing was summarised meanwhile
    store.release_summaries(A)
    store.close()


def test_knowledge_in_context_is_thresholded(settings: Settings):
    kb = KnowledgeBase.from_settings(settings)
    kb.add_document(A, "boat.md", b"# Boat\nOur sailing boat is called the Silver Heron.")
    store = store_for(settings, knowledge=kb)
    ctx = store.context_for(A, A, "What is our sailing boat called?")
    assert ctx.knowledge and ctx.knowledge[0][0] == "boat.md" and "Silver Heron" in ctx.knowledge[0][1]
    assert store.context_for(A, A, "Tell me a joke").knowledge == ()
    assert store.context_for(B, B, "What is our sailing boat called?").knowledge == ()
    store.close()


# ---------------------------------------------------------------------------- isolation
def test_isolation_private_and_group_across_restart(settings: Settings):
    store = store_for(settings)
    store.record_turn(A, A, "My name is Alice and I like sushi.", "Hi Alice.")
    store.record_turn(A_GROUP, A, "I live in Oslo.", "Nice.")
    store.record_turn(B_GROUP, B, "My name is Bob.", "Hi Bob.")
    store.close()
    store = store_for(settings)  # a restart
    for conversation, user in ((B, B), (B_GROUP, B)):
        text = everything(store.context_for(conversation, user, "What do you know about me?"))
        assert "Alice" not in text and "sushi" not in text and "Oslo" not in text
    assert "Bob" not in everything(store.context_for(A_GROUP, A, "?"))
    assert "Oslo" in everything(store.context_for(A_GROUP, A, "?"))
    assert "Oslo" not in everything(store.context_for(A, A, "?"))  # group thread is its own memory
    assert "Alice" in everything(store.context_for(A, A, "?"))
    with pytest.raises(ValueError):
        store.context_for("discord:1001", A, "?")  # platforms never mix
    store.close()


def test_shared_group_memory_keeps_facts_per_member(settings: Settings):
    store = store_for(settings)
    store.record_turn(SHARED, A, "My name is Alice.", "Hi Alice.")
    ctx_b = store.context_for(SHARED, B, "What did we talk about?")
    assert any("Alice" in m.content for m in ctx_b.history)  # the shared thread is shared
    assert not any("Alice" in n for n in ctx_b.notes)  # but Alice's facts are hers
    store.close()


def test_persistence_across_a_process_restart(settings: Settings):
    data = settings.resolve(settings.paths.data_dir)
    script = (
        "from pipeline.config import load_settings; from memory.store import MemoryStore; "
        f"s = load_settings(environ={{'TALKTWIN_PATHS__DATA_DIR': {str(data)!r}}}); "
        "m = MemoryStore.from_settings(s); "
        "m.record_turn('telegram:1001', 'telegram:1001', 'My name is Zoltan.', 'Hello Zoltan.'); "
        "m.knowledge.add_document('telegram:1001', 'boat.txt', b'The boat is Silver Heron.'); m.close()"
    )
    subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, check=True, timeout=120)
    store = store_for(settings)
    ctx = store.context_for(A, A, "What is the boat called?")
    assert "The user's name is Zoltan." in ctx.notes and ctx.history[0].content == "My name is Zoltan."
    assert ctx.knowledge[0][0] == "boat.txt"
    store.close()


# ---------------------------------------------------------------------------- commands
def test_reset_forgets_only_the_thread(settings: Settings, avatar_bytes: bytes):
    store = store_for(settings)
    store.update_profile(A, mode="text")
    store.record_turn(A, A, "My name is Alice.", "Hi.")
    store.record_turn(A_GROUP, A, "I like tea.", "Nice.")
    store.reset(A)
    assert store.context_for(A, A, "?") == store.context_for(A, A, "?").__class__()
    assert "tea" in everything(store.context_for(A_GROUP, A, "?"))
    assert store.profile(A).mode == "text"
    store.close()


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_forget_removes_everything_and_export_has_it_first(settings: Settings, avatar_bytes: bytes):
    chat = ScriptedChat("Zebulon talked about Quixotic plans.")
    store = store_for(settings, chat_model=chat)
    data = settings.resolve(settings.paths.data_dir)
    token = "Zebulon"
    store.update_profile(A, language="en")
    store.set_avatar(A, avatar_bytes)
    store.knowledge.add_document(
        A, "diary.md", f"# Diary\n{token} keeps a diary about Quixotic plans.".encode()
    )
    for i in range(store.recent_turns + store.fold_every + 1):  # enough for a summary
        store.record_turn(A, A, f"My name is {token}. Note {i}.", f"Okay {token}.")
    store.record_turn(A_GROUP, A, f"I like {token} cakes.", "Yum.")
    store.record_turn(SHARED, A, f"{token} says hi to the group.", "Hi!")
    store.record_turn(B, B, "My name is Bob.", "Hi Bob.")
    media = store.media_dir(A)
    media.mkdir(parents=True)
    (media / "reply.mp4").write_bytes(b"video of " + token.encode())
    store.wait_idle()

    exported = store.export(A)
    json.dumps(exported)
    assert exported["profile"]["language"] == "en" and exported["avatar"]["base64"]
    assert {A, A_GROUP, SHARED} <= set(exported["conversations"])
    assert exported["conversations"][A]["summary"] and [d["name"] for d in exported["documents"]] == [
        "diary.md"
    ]
    assert any(token in f["fact"] for f in exported["facts"])

    store.forget(A)
    assert store.profile(A) == UserProfile(A) and store.avatar(A) is None
    assert store.knowledge.documents(A) == [] and not media.exists()
    assert store.export(A)["conversations"] == {} and store.export(A)["facts"] == []
    assert "Bob" in everything(store.context_for(B, B, "?"))  # others keep theirs
    store.close()
    assert token.encode() not in _all_bytes(data)  # not in SQLite pages, chroma files or media
    assert avatar_bytes[1000:1064] not in _all_bytes(data)


def test_forget_during_a_summary_does_not_bring_data_back(settings: Settings):
    chat = ScriptedChat("Summary mentioning Zebulon.")
    store = store_for(settings, chat_model=chat)
    chat.gate.clear()
    for i in range(store.recent_turns + store.fold_every + 1):
        store.record_turn(A, A, f"Zebulon message {i}", "ok")
    store.forget(A)
    chat.gate.set()
    store.wait_idle()
    assert store.export(A)["conversations"] == {}
    assert store.context_for(A, A, "?").notes == ()
    store.close()


# ---------------------------------------------------------------------------- PostgreSQL
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 (initdb + pg_ctl, as `nobody` when we are root)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql"
        )
    root = Path(tempfile.mkdtemp(prefix="talktwin-pg-"))  # pytest's tmp tree is closed to `nobody`
    os.chmod(root, 0o777)
    data, port = root / "data", _free_port()
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "talktwin", "-A", "trust", "-E", "UTF8"],
                   check=True, capture_output=True, env=env, timeout=120, cwd=root)  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
                   check=True, capture_output=True, env=env, timeout=120)  # fmt: skip
    try:
        subprocess.run(
            ["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "talktwin", "talktwin"], check=True
        )
        yield f"postgresql+psycopg://talktwin@127.0.0.1:{port}/talktwin"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_postgresql_backend(postgres_url: str, tmp_path: Path):
    store = MemoryStore(postgres_url, tmp_path)
    store.record_turn(A, A, "My name is Alice.", "Hi Alice.")
    store.record_turn(B_GROUP, B, "I like chess.", "Nice.")
    store.update_profile(A, mode="voice")
    store.close()
    store = MemoryStore(postgres_url, tmp_path)
    assert "The user's name is Alice." in store.context_for(A, A, "?").notes
    assert "Alice" not in everything(store.context_for(B_GROUP, B, "?"))
    assert store.profile(A).mode == "voice"
    store.forget(A)
    assert store.export(A)["conversations"] == {} and store.profile(A) == UserProfile(A)
    assert "chess" in everything(store.context_for(B_GROUP, B, "?"))
    store.close()


# ---------------------------------------------------------------------------- real model
@pytest.mark.real_models
def test_fact_recalled_after_six_unrelated_turns(models_installed: Settings, embedded_chat, tmp_path: Path):
    from pipeline.orchestrator import ReplyPipeline

    settings = models_installed
    chat = embedded_chat
    store = MemoryStore(
        "", tmp_path, chat_model=chat, context_tokens=settings.llm.context_tokens, reserved_tokens=200
    )
    shim = SimpleNamespace(settings=settings)

    def turn(text: str) -> str:
        ctx = store.context_for(A, A, text)
        messages = ReplyPipeline._messages(shim, text, "en", ctx)  # type: ignore[arg-type]
        # a short answer is a turn all the same ("Your name is Zoltan." is 6 tokens)
        answer = "".join(chat.stream(messages, max_tokens=24, temperature=0.0))
        store.record_turn(A, A, text, answer)
        return answer

    turn("Hi! My name is Zoltan and I like kayaking.")
    for text in [
        "What is two plus two?",
        "Name a color of the sky.",
        "Is water wet?",
        "Say something about cats.",
        "What day comes after Monday?",
        "Give me a short greeting.",
    ]:
        turn(text)
    store.wait_idle(timeout=300)
    answer = turn("What is my name?")
    assert "zoltan" in answer.lower(), answer
    store.close()


def test_processes_opening_a_new_database_at_once_all_get_it(tmp_path: Path):
    """Queue workers started together against a fresh database: each creates the tables, and one that
    finds a table made between its check and its CREATE looks again instead of dying."""
    import multiprocessing

    from memory.db import TABLES, sqlite_url
    from tests.db_opener import open_database

    context = multiprocessing.get_context("spawn")
    for round_ in range(2):
        url = sqlite_url(tmp_path / str(round_))
        (tmp_path / str(round_)).mkdir()
        start, results = context.Barrier(6), context.Queue()
        openers = [context.Process(target=open_database, args=(url, start, results)) for _ in range(6)]
        for opener in openers:
            opener.start()
        got = sorted(str(results.get(timeout=120)) for _ in openers)
        for opener in openers:
            opener.join(30)
        assert got == [str(len(TABLES))] * 6, got
