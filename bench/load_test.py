"""Load test: simulated users x messages through the HTTP API and through Telegram.

Starts the real service components in-process and drives them two ways, one after the other,
sharing those components:

- http: the HTTP API on a free loopback port; each request blocks until its reply is made.
- telegram: the real TelegramBot (python-telegram-bot, long polling) against the fake Bot API server
  from tests/fakes on 127.0.0.1; each user is a distinct Telegram user in a private chat.

In both, N users each send M text questions, the next only after the reply to the previous one came
back (all users at once). Checks every message is answered exactly once with playable media; reports
p50/p95 latency and throughput per mode, writes JSON to bench/results/ and a plot to docs/.

Where the replies are made (`--mode`):

- embedded (the default): as `run_bots.py` runs without a broker: every model loaded once, in the
  service's models' process (`reply.models_process`, on by default) or in this one.
- queue: a private redis-server (tests/redis_server.py) and `--workers` `run_bots.py worker`
  subprocesses that load the models; this process is the bots' side of queue mode
  (`Components.load` with `queue.broker_url` set: no model loaded here), as `run_bots.py` runs it.
  All share one temporary data folder (SQLite memory, embedded Chroma, the blob folder).

    .venv/bin/python -m bench.load_test [--users 20] [--messages 3] [--via http|telegram|both]
        [--mode embedded|queue] [--workers 1] [--worker-threads 0]
    .venv/bin/python -m bench.load_test --compare [--via http]   # embedded, 1 and 2 workers, one run
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bots.http.app import HttpOptions
from bots.http.server import HttpServer
from bots.runtime import Components
from bots.telegram.bot import TelegramBot
from bots.telegram.options import TelegramOptions
from pipeline.config import PROJECT_ROOT, Settings, load_settings
from tests.fakes.telegram_server import TOKEN, Call, FakeBotApi, message_update, user
from tests.redis_server import RedisServer

QUESTIONS = [
    "What is a good breakfast?",
    "Name one fun hobby.",
    "How do I sleep better?",
    "Tell me a fact about the moon.",
    "What should I read next?",
]
MODES = ("http", "telegram")
EXECUTIONS = ("embedded", "queue")
# Bot API methods that can carry the answer; the upload's form field, or None for text.
REPLY_METHODS = {
    "sendVideoNote": "video_note",
    "sendVideo": "video",
    "sendVoice": "voice",
    "sendMessage": None,
}
TELEGRAM_UID0 = 900_000  # the simulated Telegram users are 900000, 900001, ...
LOADED = "models loaded, taking replies"  # a queue worker's pool child logs it (bots/queue/worker.py)


def question(uid: int, m: int) -> str:
    return QUESTIONS[(uid + m) % len(QUESTIONS)]


@dataclass
class Record:
    """One message of one simulated user and what came back; times in seconds since the load began."""

    user: int
    message: int
    sent_at: float
    done_at: float | None = None  # when the (first) reply arrived
    replies: int = 0  # more than one is a duplicate
    media_ok: bool = False
    kind: str = ""  # HTTP status, or the Bot API method of the reply
    video_s: float | None = None
    answer: str = ""  # the answer text, when the reply carries it (a video note has no caption)
    message_id: int | None = None  # telegram only: matches the reply to the message

    @property
    def latency(self) -> float | None:
        return None if self.done_at is None else self.done_at - self.sent_at

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"latency": self.latency}


# ---------------------------------------------------------------------- via the HTTP API
async def http_user(
    client: httpx.AsyncClient, uid: int, messages: int, started: float, log: list[Record]
) -> None:
    for m in range(messages):
        record = Record(uid, m, sent_at=time.perf_counter() - started)
        log.append(record)
        try:
            r = await client.post("/v1/reply", data={"user": f"load{uid}", "text": question(uid, m)})
        except httpx.HTTPError as e:
            record.kind = type(e).__name__
            continue
        record.kind = str(r.status_code)
        if r.status_code != 200:
            continue
        record.done_at, record.replies = time.perf_counter() - started, 1
        body = r.json()
        media = await client.get(body["media_url"])
        record.media_ok = media.status_code == 200 and media.content[4:8] == b"ftyp"
        record.answer, record.video_s = body["answer"], body["duration"]


async def run_http(
    components: Components, users: int, messages: int, timeout: float, warmups: int = 1
) -> dict:
    """Every user posts its questions to /v1/reply in turn; the response is the reply.

    `warmups` users say hi at once first (one per queue worker: each takes one job at a time)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = HttpServer(HttpOptions(port=port), components)
    await server.start()
    log: list[Record] = []
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=timeout) as client:
            await asyncio.gather(
                *(client.post("/v1/reply", data={"user": f"warmup{i}", "text": "Hi"}) for i in range(warmups))
            )
            started = time.perf_counter()
            await asyncio.gather(*(http_user(client, u, messages, started, log) for u in range(users)))
            wall = time.perf_counter() - started
    finally:
        await server.stop()
    return summarise(log, wall) | {"statuses": dict(Counter(r.kind for r in log))}


# ---------------------------------------------------------------------- via Telegram
class ReplyWatch(list[Call]):
    """Stands in for FakeBotApi.calls and notes, as each call is recorded, which message it answers.

    The fake's calls carry no time, and waiting on its condition from threads would take the bot's
    own executor threads; so replies are stamped on arrival (in the fake's thread) and announced to
    the load test's event loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self.replies: dict[tuple[int, int], list[tuple[float, Call]]] = {}  # (chat, message) -> arrivals
        self._arrived: dict[tuple[int, int], asyncio.Event] = {}

    def append(self, call: Call) -> None:
        super().append(call)
        key = replied_to(call)
        if key is not None:
            self.replies.setdefault(key, []).append((time.perf_counter(), call))
            self._loop.call_soon_threadsafe(self._wake, key)

    def _wake(self, key: tuple[int, int]) -> None:
        self._event(key).set()

    def _event(self, key: tuple[int, int]) -> asyncio.Event:  # only on the event loop's thread
        return self._arrived.setdefault(key, asyncio.Event())

    async def wait(self, key: tuple[int, int], timeout: float) -> bool:
        """True once a reply to `key` arrived (perhaps already), False after `timeout` seconds."""
        try:
            await asyncio.wait_for(self._event(key).wait(), timeout)
        except TimeoutError:
            return False
        return True


def replied_to(call: Call) -> tuple[int, int] | None:
    """(chat id, message id) that `call` replies to; None for anything else (notices, chat actions)."""
    reply = call.params.get("reply_parameters")
    if call.method not in REPLY_METHODS or not isinstance(reply, dict):
        return None
    return int(call.params["chat_id"]), int(reply["message_id"])


async def telegram_user(
    server: FakeBotApi, watch: ReplyWatch, uid: int, messages: int, started: float, timeout: float
) -> list[Record]:
    sender = user(TELEGRAM_UID0 + uid, name=f"Load{uid}")
    log: list[Record] = []
    for m in range(messages):
        update = message_update(sender, text=question(uid, m))
        message_id = update["message"]["message_id"]
        log.append(Record(uid, m, sent_at=time.perf_counter() - started, message_id=message_id))
        server.push(update)
        await watch.wait((sender["id"], message_id), timeout)  # a lost one shows in the counts
    return log


def fill_in(record: Record, replies: list[tuple[float, Call]], started: float) -> None:
    """Take what came back for `record` from the replies recorded for its message."""
    record.replies = len(replies)
    if not replies:
        return
    at, call = replies[0]
    field = REPLY_METHODS[call.method]
    data = call.files.get(field, b"") if field else b""
    record.done_at, record.kind = at - started, call.method
    record.media_ok = media_ok(field, data)
    record.video_s = float(call.params["duration"]) if "duration" in call.params else None
    record.answer = call.params.get("caption") or call.params.get("text") or ""


def media_ok(field: str | None, data: bytes) -> bool:
    """Videos must be mp4 (`ftyp` box first), voice Ogg; a text reply has no media to check."""
    if field in ("video_note", "video"):
        return data[4:8] == b"ftyp"
    if field == "voice":
        return data[:4] == b"OggS"
    return True


def notices(server: FakeBotApi, users: int) -> dict[str, int]:
    """Plain texts the simulated users got besides their replies ("queued", "working", errors)."""
    chats = {str(TELEGRAM_UID0 + u) for u in range(users)}
    texts = (
        c.params.get("text", "")[:60]
        for c in server.find("sendMessage")
        if str(c.params.get("chat_id")) in chats and replied_to(c) is None
    )
    return dict(Counter(texts))


async def run_telegram(
    components: Components,
    settings: Settings,
    users: int,
    messages: int,
    timeout: float,
    settle: float,
    warmups: int = 1,
) -> dict:
    """Every user sends its questions through the fake Bot API to the real bot, waiting for each reply."""
    server = FakeBotApi()
    watch = server.calls = ReplyWatch(asyncio.get_running_loop())
    server.start()
    environ = {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_BASE_URL": server.base_url,
        "TELEGRAM_FILE_BASE_URL": server.file_base_url,
    }
    options = TelegramOptions.from_env(environ, settings)  # as run_bots.py builds them
    assert options is not None
    bot = TelegramBot(options, components)
    await bot.start()
    try:
        greeted = []
        for i in range(warmups):  # warm-up users below the measured ones
            warmup = message_update(user(TELEGRAM_UID0 - 1 - i, name=f"Warmup{i}"), text="Hi")
            server.push(warmup)
            greeted.append((TELEGRAM_UID0 - 1 - i, warmup["message"]["message_id"]))
        await asyncio.gather(*(watch.wait(key, timeout) for key in greeted))
        started = time.perf_counter()
        sessions = [telegram_user(server, watch, u, messages, started, timeout) for u in range(users)]
        log = [r for session in await asyncio.gather(*sessions) for r in session]
        wall = time.perf_counter() - started
        await asyncio.sleep(settle)  # a duplicate or late reply would arrive now
        for r in log:
            assert r.message_id is not None
            fill_in(r, watch.replies.get((TELEGRAM_UID0 + r.user, r.message_id), []), started)
    finally:
        await bot.stop()
        server.stop()
    return summarise(log, wall) | {"notices": notices(server, users)}


# ---------------------------------------------------------------------- stats, report, plot
def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile: an observed latency, honest for small samples."""
    return round(sorted_values[math.ceil(q * len(sorted_values)) - 1], 2) if sorted_values else None


def longest_run(log: list[Record]) -> int:
    """Most replies in a row that went to one user; 1 means users interleave (fair scheduling)."""
    order = [r.user for r in sorted((r for r in log if r.done_at is not None), key=lambda r: r.done_at or 0)]
    best = run = 0
    for i, uid in enumerate(order):
        run = run + 1 if i and order[i - 1] == uid else 1
        best = max(best, run)
    return best


def summarise(log: list[Record], wall: float) -> dict:
    """The same figures for every mode, plus the per-message log."""
    answered = [r for r in log if r.replies]
    good = [r for r in answered if r.media_ok]
    latencies = sorted(r.latency for r in good if r.latency is not None)
    videos = [r.video_s for r in good if r.video_s is not None]
    return {
        "sent": len(log),
        "answered": len(answered),
        "answered_ok": len(good),  # with playable media
        "duplicates": sum(r.replies > 1 for r in log),
        "lost": len(log) - len(answered),
        "bad_media": len(answered) - len(good),
        "latency_p50_s": round(statistics.median(latencies), 2) if latencies else None,
        "latency_p95_s": percentile(latencies, 0.95),
        "wall_s": round(wall, 1),
        "throughput_replies_per_min": round(60 * len(good) / wall, 1),
        "video_seconds_p50": round(statistics.median(videos), 2) if videos else None,
        "longest_run_one_user": longest_run(log),
        "log": [r.as_json() for r in sorted(log, key=lambda r: (r.user, r.message))],
    }


# ---------------------------------------------------------------------- queue mode's workers
class WorkerProcess:
    """One `run_bots.py worker` (Celery's main process and its pool child), in its own session."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "run_bots.py", "worker"],
                cwd=PROJECT_ROOT,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def ready(self) -> bool:
        """Its pool child has loaded the models (Celery's own "ready." comes before that)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited ({self.proc.returncode}):\n{self.tail()}")
        return LOADED in self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Warm shutdown (SIGTERM to its process group), then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@contextmanager
def queue_workers(env: dict[str, str], workers: int, logs: Path, timeout: float = 600) -> Iterator[str]:
    """A private redis-server and `workers` worker processes with their models loaded; yields the
    broker URL."""
    with RedisServer() as redis_server:
        env = env | {"TALKTWIN_QUEUE__BROKER_URL": redis_server.url}
        started: list[WorkerProcess] = []
        try:
            for i in range(workers):
                started.append(WorkerProcess(env, logs / f"worker-{i}.log"))
            end = time.monotonic() + timeout
            while not all(w.ready() for w in started):
                if time.monotonic() > end:
                    raise RuntimeError("workers not ready:\n" + "\n".join(w.tail() for w in started))
                time.sleep(0.5)
            yield redis_server.url
        finally:
            for worker in started:
                worker.stop()


# ---------------------------------------------------------------------- one run
async def run(
    users: int,
    messages: int,
    modes: list[str],
    timeout: float = 900,
    settle: float = 5,
    *,
    execution: str = "embedded",
    workers: int = 1,
    worker_threads: int = 0,
) -> dict[str, Any]:
    """Load the models once (here, or in the queue's workers), then drive each mode in turn."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "TALKTWIN_PATHS__DATA_DIR": tmp,
            "TALKTWIN_TELEGRAM__MAX_PENDING": "5",
            "TALKTWIN_TELEGRAM__RATE_LIMIT_PER_MINUTE": "60",
        }
        if execution == "queue":
            if worker_threads:
                for key in ("ASR", "LLM", "RENDER"):
                    env[f"TALKTWIN_{key}__THREADS"] = str(worker_threads)
            with queue_workers(env, workers, Path(tmp)) as broker_url:
                settings = load_settings(environ=env | {"TALKTWIN_QUEUE__BROKER_URL": broker_url})
                results = await drive(settings, users, messages, modes, timeout, settle, warmups=workers)
        else:
            settings = load_settings(environ=env)
            results = await drive(settings, users, messages, modes, timeout, settle, warmups=1)
    return {
        "users": users,
        "messages_per_user": messages,
        "cores": os.cpu_count(),
        "execution": execution,
        "workers": workers if execution == "queue" else None,
        "worker_threads": (worker_threads or None) if execution == "queue" else None,
        "modes": results,
    }


async def drive(
    settings: Settings,
    users: int,
    messages: int,
    modes: list[str],
    timeout: float,
    settle: float,
    warmups: int,
) -> dict[str, dict]:
    """Build the components as `run_bots.py` does (no model here in queue mode) and run each mode."""
    # On this thread, as before: the model processes it may start die with the thread that started
    # them (PR_SET_PDEATHSIG), so not on a pool thread.
    components = Components.load(settings)
    results: dict[str, dict] = {}
    try:
        for mode in modes:
            if mode == "http":
                results[mode] = await run_http(components, users, messages, timeout, warmups)
            else:
                results[mode] = await run_telegram(
                    components, settings, users, messages, timeout, settle, warmups
                )
    finally:
        components.close()
        # Celery's AsyncResults unsubscribe from Redis when collected: while the private server is up
        # (otherwise each one retries for ~20 s at exit).
        gc.collect()
    return results


def plot_mode(axes: Any, mode: str, stats: dict, messages: int) -> None:
    """Left: latency over completion time, coloured by message number (rounds show users interleave).
    Right: the latency distribution with p50/p95."""
    a, b = axes
    log = [e for e in stats["log"] if e["latency"] is not None]
    for m in range(messages):
        done = [e for e in log if e["message"] == m]
        a.scatter([e["done_at"] for e in done], [e["latency"] for e in done], s=14, label=f"message {m + 1}")
    a.set(xlabel="time since start (s)", ylabel="reply latency (s)")
    a.set_title(f"{mode}: {stats['answered_ok']}/{stats['sent']} answered", loc="left")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    b.hist([e["latency"] for e in log], bins=20)
    for name, colour in (("p50", "k"), ("p95", "r")):
        value = stats[f"latency_{name}_s"]
        if value is not None:
            b.axvline(value, color=colour, linestyle="--", label=f"{name} {value} s")
    b.set(xlabel="reply latency (s)", ylabel="replies")
    b.set_title(f"{mode}: {stats['throughput_replies_per_min']} replies/min", loc="left")
    b.legend(fontsize=8)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = report["modes"]
    fig, axes = plt.subplots(len(modes), 2, figsize=(11, 3.8 * len(modes)), squeeze=False, sharex="col")
    for row, (mode, stats) in zip(axes, modes.items(), strict=True):
        plot_mode(row, mode, stats, report["messages_per_user"])
    for ax in axes[:-1].flat:  # the x axes are shared down each column
        ax.set_xlabel("")
    fig.suptitle(
        f"TalkTwin load test: {report['users']} users x {report['messages_per_user']} messages, "
        f"{report['cores']} CPU cores, {describe(report)}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def describe(report: dict) -> str:
    if report.get("execution") == "compare":
        return "embedded vs queue mode, back to back"
    if report.get("execution") != "queue":
        return "embedded defaults"
    n = report["workers"]
    threads = f", {report['worker_threads']} threads each" if report.get("worker_threads") else ""
    return f"queue mode, {n} worker{'s' if n != 1 else ''}{threads}"


COMPARED = (("embedded", 1), ("queue", 1), ("queue", 2))


def run_from(
    args: argparse.Namespace, modes: list[str], execution: str, workers: int, worker_threads: int
) -> dict[str, Any]:
    """One `run` with the command line's load and limits."""
    return asyncio.run(
        run(
            args.users,
            args.messages,
            modes,
            args.timeout,
            args.settle,
            execution=execution,
            workers=workers,
            worker_threads=worker_threads,
        )
    )


def compare(args: argparse.Namespace, modes: list[str]) -> None:
    """The three ways of running on this machine, one after the other in one run, in one report:
    each mode's figures under "<execution> · <mode>" (as `run` reports them), and one plot."""
    runs = []
    for execution, workers in COMPARED:
        report = run_from(args, modes, execution, workers, worker_threads=0)
        runs.append(report)
        print(describe(report), flush=True)
    merged = {
        "users": args.users,
        "messages_per_user": args.messages,
        "cores": os.cpu_count(),
        "execution": "compare",
        "load_average_after": round(os.getloadavg()[0], 1),
        "modes": {f"{describe(r)} · {mode}": stats for r in runs for mode, stats in r["modes"].items()},
    }
    out = args.out or PROJECT_ROOT / "bench" / "results" / "load_test_compare.json"
    picture = args.plot or PROJECT_ROOT / "docs" / "load_test_compare.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2))
    plot(merged, picture)
    keys = (
        "answered_ok",
        "latency_p50_s",
        "latency_p95_s",
        "throughput_replies_per_min",
        "video_seconds_p50",
    )
    for name, stats in merged["modes"].items():
        print(name, {k: stats.get(k) for k in keys})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--messages", type=int, default=3)
    parser.add_argument("--via", choices=[*MODES, "both"], default="both")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for one reply")
    parser.add_argument("--settle", type=float, default=5, help="seconds to wait for late duplicates")
    parser.add_argument(
        "--mode", choices=EXECUTIONS, default="embedded", help="where replies are made (see above)"
    )
    parser.add_argument("--workers", type=int, default=1, help="queue mode: worker processes")
    parser.add_argument(
        "--worker-threads",
        type=int,
        default=0,
        help="queue mode: CPU threads per worker for ASR, LLM and renderer (0 = one per core each)",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="embedded, then queue mode with 1 and with 2 workers, back to back (load_test_compare.*)",
    )
    parser.add_argument("--out", type=Path, help="JSON (default bench/results/load_test[_queue_Nw].json)")
    parser.add_argument("--plot", type=Path, help="plot (default docs/load_test[_queue_Nw].png)")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    modes = list(MODES) if args.via == "both" else [args.via]
    if args.compare:
        compare(args, modes)
        return
    name = "load_test" if args.mode == "embedded" else f"load_test_queue_{args.workers}w"
    args.out = args.out or PROJECT_ROOT / "bench" / "results" / f"{name}.json"
    args.plot = args.plot or PROJECT_ROOT / "docs" / f"{name}.png"
    report = run_from(args, modes, args.mode, args.workers, args.worker_threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(report, args.plot)
    summary = {
        mode: {k: v for k, v in stats.items() if k != "log"} for mode, stats in report["modes"].items()
    }
    print(describe(report))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
