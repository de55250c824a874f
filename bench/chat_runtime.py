"""The embedded chat model's runtime: start, first token, generation speed and memory, per model.

Each model is started as the service starts it (`LlamaCppChat`: llama.cpp in a child process, spoken
to over HTTP), then asked the same short questions; the speed figures come from llama.cpp's own
timings in the last event of each stream, the first-token time is measured at the client.

    .venv/bin/python -m bench.chat_runtime [--runs 5] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import httpx

from pipeline.config import PROJECT_ROOT
from pipeline.llm.llamacpp import LlamaCppChat

MODELS = ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
QUESTIONS = (
    "What is a good way to relax after a long day?",
    "用一句话介绍一下长城。",
    "Why is the sky blue? Answer in two sentences.",
    "给我一个学习英语的小建议。",
)


def measure(model_file: Path, runs: int, threads: int) -> dict:
    started = time.perf_counter()
    chat = LlamaCppChat(model_file, threads=threads)
    load_s = time.perf_counter() - started
    url = chat.server.base_url + "/v1/chat/completions"
    first, gen_tps, prompt_tps = [], [], []
    try:
        for n in range(runs):
            body = {
                "messages": [{"role": "user", "content": QUESTIONS[n % len(QUESTIONS)]}],
                "max_tokens": 64,
                "temperature": 0,
                "stream": True,
            }
            t0 = time.perf_counter()
            seen_first = False
            with httpx.stream("POST", url, json=body, timeout=120) as response:
                for line in response.iter_lines():
                    if not line.startswith("data:") or line.endswith("[DONE]"):
                        continue
                    event = json.loads(line[5:])
                    if not seen_first and event["choices"] and event["choices"][0]["delta"].get("content"):
                        first.append(time.perf_counter() - t0)
                        seen_first = True
                    if timings := event.get("timings"):
                        gen_tps.append(timings["predicted_per_second"])
                        prompt_tps.append(timings["prompt_per_second"])
        rss_mb = _peak_rss_mb(chat.server.pid)
    finally:
        chat.close()
    return {
        "model": model_file.name,
        "load_s": round(load_s, 2),
        "first_token_s_p50": round(statistics.median(first), 3),
        "generation_tok_s_p50": round(statistics.median(gen_tps), 1),
        "prompt_tok_s_p50": round(statistics.median(prompt_tps), 1),
        "server_peak_rss_mb": rss_mb,
    }


def _peak_rss_mb(pid: int | None) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 0)
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    rows = [measure(PROJECT_ROOT / "checkpoints" / name, args.runs, args.threads) for name in MODELS]
    for row in rows:
        print(json.dumps(row))
    out = PROJECT_ROOT / "bench" / "results" / "chat_runtime.json"
    out.write_text(
        json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
