"""Load test: simulated users x messages through the HTTP API of a running service, embedded defaults.

Starts the real service in-process (every model loaded once, HTTP on a free loopback port), then
N users each send M text questions one after another (all users at once). Checks every message is
answered exactly once with a playable video; reports p50/p95 latency and throughput, writes JSON to
bench/results/ and a plot to docs/load_test.png.

    .venv/bin/python -m bench.load_test [--users 20] [--messages 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bots.http.app import HttpOptions
from bots.http.server import HttpServer
from bots.runtime import Components
from pipeline.config import PROJECT_ROOT, load_settings

QUESTIONS = [
    "What is a good breakfast?",
    "Name one fun hobby.",
    "How do I sleep better?",
    "Tell me a fact about the moon.",
    "What should I read next?",
]


async def user_session(client: httpx.AsyncClient, uid: int, messages: int, log: list[dict]) -> None:
    for m in range(messages):
        question = QUESTIONS[(uid + m) % len(QUESTIONS)]
        t0 = time.perf_counter()
        r = await client.post("/v1/reply", data={"user": f"load{uid}", "text": question})
        t1 = time.perf_counter()
        entry = {"user": uid, "message": m, "status": r.status_code, "latency": t1 - t0, "done_at": t1}
        if r.status_code == 200:
            body = r.json()
            media = await client.get(body["media_url"])
            entry |= {
                "answer": body["answer"],
                "media_ok": media.status_code == 200 and media.content[4:8] == b"ftyp",
                "video_s": body["duration"],
            }
        log.append(entry)


async def run(users: int, messages: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            environ={
                "TALKTWIN_PATHS__DATA_DIR": tmp,
                "TALKTWIN_TELEGRAM__MAX_PENDING": "5",
                "TALKTWIN_TELEGRAM__RATE_LIMIT_PER_MINUTE": "60",
            }
        )
        components = Components.load(settings)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = HttpServer(HttpOptions(port=port), components)
        await server.start()
        log: list[dict] = []
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
                await client.post("/v1/reply", data={"user": "warmup", "text": "Hi"})
                started = time.perf_counter()
                await asyncio.gather(*(user_session(client, u, messages, log) for u in range(users)))
                wall = time.perf_counter() - started
        finally:
            await server.stop()
            components.close()
    ok = [e for e in log if e["status"] == 200 and e.get("media_ok")]
    latencies = sorted(e["latency"] for e in ok)
    for e in log:
        e["done_at"] -= started
    return {
        "users": users,
        "messages_per_user": messages,
        "sent": len(log),
        "answered_ok": len(ok),
        "answered_once": len({(e["user"], e["message"]) for e in ok}) == len(ok),
        "statuses": {str(s): sum(e["status"] == s for e in log) for s in sorted({e["status"] for e in log})},
        "latency_p50_s": round(statistics.median(latencies), 2) if latencies else None,
        "latency_p95_s": round(latencies[math.ceil(0.95 * len(latencies)) - 1], 2) if latencies else None,
        "wall_s": round(wall, 1),
        "throughput_replies_per_min": round(60 * len(ok) / wall, 1),
        "video_seconds_p50": round(statistics.median(e["video_s"] for e in ok), 2) if ok else None,
        "cores": os.cpu_count(),
        "log": log,
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = sorted(report["log"], key=lambda e: e["done_at"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.scatter([e["done_at"] for e in log], [e["latency"] for e in log], s=14)
    a.set(
        xlabel="time since start (s)",
        ylabel="reply latency (s)",
        title=f"{report['users']} users x {report['messages_per_user']} messages",
    )
    a.grid(alpha=0.3)
    b.hist([e["latency"] for e in log], bins=20)
    b.axvline(report["latency_p50_s"], color="k", linestyle="--", label=f"p50 {report['latency_p50_s']} s")
    b.axvline(report["latency_p95_s"], color="r", linestyle="--", label=f"p95 {report['latency_p95_s']} s")
    b.set(xlabel="reply latency (s)", ylabel="replies", title="latency distribution")
    b.legend()
    fig.suptitle(f"TalkTwin HTTP load test, {report['cores']} CPU cores, embedded defaults")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--messages", type=int, default=3)
    args = parser.parse_args()
    report = asyncio.run(run(args.users, args.messages))
    out = PROJECT_ROOT / "bench" / "results" / "load_test.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    plot(report, PROJECT_ROOT / "docs" / "load_test.png")
    print(json.dumps({k: v for k, v in report.items() if k != "log"}, indent=2))


if __name__ == "__main__":
    main()
