"""End-to-end reply latency on the embedded defaults, warm.

A fixed ~5 s spoken English question (made with the offline voice) goes through the whole pipeline
(decode, ASR, LLM, TTS, render, encode) several times after one warm-up reply. Prints per-stage
p50/p95, total p50/p95 and the process's peak RSS, and writes them as JSON to bench/results/.

    .venv/bin/python -m bench.reply_latency [--runs 5] [--size 512]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.config import PROJECT_ROOT, load_settings
from pipeline.media.video_output import write_wav
from pipeline.orchestrator import ReplyPipeline, ReplyRequest
from pipeline.types import VoiceSettings

QUESTION = "Could you please give me one simple idea to relax after a long and very busy day at work?"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _child_peak_rss_mb(chat_model: object) -> int:
    """Peak RSS of the chat model's server process, 0 when the model runs in this process."""
    server = getattr(chat_model, "server", None)
    if server is None or server.pid is None:
        return 0
    for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--model", default="", help="a GGUF under checkpoints/ (default: the configured one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            environ={
                "TALKTWIN_RENDER__SIZE": str(args.size),
                "TALKTWIN_LLM__TEMPERATURE": "0",
                "TALKTWIN_PATHS__DATA_DIR": tmp,  # a fresh memory: every run is a first question
                **({"TALKTWIN_LLM__MODEL": f"checkpoints/{args.model}"} if args.model else {}),
            }
        )
        t0 = time.perf_counter()
        pipeline = ReplyPipeline.from_settings(settings)
        load_s = time.perf_counter() - t0
        question = pipeline.synthesizer.synthesize(QUESTION, "en", VoiceSettings())
        wav = Path(tmp) / "question.wav"
        write_wav(wav, question.audio)
        audio = wav.read_bytes()
        runs = []
        for i in range(args.runs + 1):
            result = pipeline.reply(ReplyRequest(user=f"cli:bench{i}", audio=audio), Path(tmp) / f"r{i}.mp4")
            if i > 0:  # the first reply warms caches (avatar preparation, allocator, llama.cpp)
                runs.append(result)
            print(
                f"run {i}: total {result.timings.seconds['total']:.2f} s, answer {result.duration:.1f} s: "
                f"{result.answer!r}"
            )
        chat_rss_mb = _child_peak_rss_mb(pipeline.chat_model)
        pipeline.close()
    stages = sorted({k for r in runs for k in r.timings.seconds})
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU used",
        "size": args.size,
        "chat_model": settings.llm.model,
        "question_seconds": round(question.duration, 2),
        "answer_seconds_p50": round(statistics.median(r.duration for r in runs), 2),
        "model_load_seconds": round(load_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        # the embedded chat model runs in a child process: its peak counts too
        "chat_model_peak_rss_mb": chat_rss_mb,
        "total_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024) + chat_rss_mb,
        "stages": {
            s: {
                "p50": round(percentile([r.timings.seconds.get(s, 0) for r in runs], 0.5), 3),
                "p95": round(percentile([r.timings.seconds.get(s, 0) for r in runs], 0.95), 3),
            }
            for s in stages
        },
    }
    suffix = f"_{Path(args.model).stem}" if args.model else ""
    out = PROJECT_ROOT / "bench" / "results" / f"reply_latency_{args.size}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
