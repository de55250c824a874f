"""Live conversation latency at a real WebRTC client: end of the user's speech → first answer audio and
first moving-mouth frame, as the client receives them.

The service runs as `run_bots.py` runs it (Components.load: by default the models in their own
process, the embedded chat model, the configured voice), with its HTTP server on a free port; an
aiortc client (bots/live/client.py) posts its offer to /v1/live and plays spoken questions as its
microphone, in real time, one after the other, each after the previous answer has ended.

Per question:
- `audio_s`: from the end of the question's last sample leaving the client's microphone to the first
  received answer audio (decoded Opus louder than -40 dBFS; the idle avatar sends digital silence).
- `mouth_s`: to the first received video frame whose mouth is open (FaceMesh landmarks re-detected
  on the decoded frames: inner-lip gap / mouth width above the idle frames' level by a margin).
- `av_lag_ms`: audio/video offset at the client while the answer plays: the lag (10 ms steps, ±400 ms)
  that best lines up mouth opening (the same landmarks) with received audio loudness; positive = the
  picture comes after the sound.
- `fps_speaking`, `gaps_80ms`, `repeats`: frames received per second while the answer plays, arrival
  gaps over 80 ms (two frame periods), and frames that repeat the previous one (a server underrun
  sends the last frame again).
- the server's split, from its `speaking` event: VAD hang-over (the configured end silence), ASR,
  memory/knowledge, first LLM sentence, its TTS, its first render batch, and `first_frame` (from end
  of turn detected to the first frame handed to WebRTC); `transport_s` is what remains of `audio_s`
  (microphone and network transport, the client's jitter buffer, Opus, pacing).

The client shares the service's 2 cores here, where a real one runs on the user's own machine: it
decodes every frame, and at the same priority it took ~12 % of a core and slowed the chat model by a
quarter. So by default it runs niced (`--client-nice 19`; the service, in the models' process, keeps
its priority). A starved client only stamps what it receives later, and sends its microphone later:
it can make the figures worse, never better. `--client-nice 0` measures with a client at equal
priority.

With `--with-replies N`, N users of the HTTP API ask text questions one after the other, each the
next as soon as its reply came, for as long as the live questions last: what the live conversation
gets while the bots' replies share the machine (see docs/architecture.md, "CPU: live first").

    .venv/bin/python -m bench.live_latency [--runs 3] [--langs en,zh] [--size 256] [--out FILE]
        [--with-replies 1] [--client-nice 19]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import platform
import re
import socket
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bots.live.client import LiveClient, to_mic
from pipeline.config import load_settings
from pipeline.types import VoiceSettings

QUESTIONS = {
    "en": [
        "What is the capital of France?",
        "Can you tell me a fun fact about cats?",
        "How do I make a good cup of tea?",
        "What should I cook for dinner tonight?",
        "Why is the sky blue?",
        "How far away is the moon?",
        "What is a good book to read?",
        "How many legs does a spider have?",
        "What is the best way to learn to swim?",
        "Why do leaves change colour in autumn?",
    ],
    "zh": [
        "法国的首都是哪里？",
        "给我讲一个关于猫的小知识。",
        "怎么泡一杯好茶？",
        "今天晚饭吃什么好？",
        "天空为什么是蓝色的？",
        "月亮离地球有多远？",
        "推荐一本好书吧。",
        "蜘蛛有几条腿？",
        "怎样才能学会游泳？",
        "秋天的树叶为什么会变色？",
    ],
    # 4-6 s each: what reading ahead while the user speaks (`[live] read_ahead_ms`) is for
    "en-long": [
        "I am planning a trip to Japan next spring with my family, which city should we visit first?",
        "My friend says that coffee in the afternoon ruins your sleep at night, is that actually true?",
        "I have been learning the guitar for a few months now, how can I practise more effectively?",
        "We want to grow some vegetables on our balcony this year, which ones are the easiest to grow?",
        "My daughter keeps asking why the moon changes its shape every night, how should I explain it?",
    ],
    "zh-long": [
        "我下个月要去北京出差三天，你觉得有哪些地方值得在空闲的时候去看看？",
        "我最近晚上总是睡不好觉，白天也没有精神，你有什么简单的好办法吗？",
        "我想开始每天跑步锻炼身体，但是一直坚持不下来，你能给我一些建议吗？",
        "我的孩子今年上小学了，每天做作业都很慢，我应该怎么帮助他？",
        "周末想和朋友们一起做一顿中国菜，你推荐做哪几道比较简单的菜？",
    ],
}
LOUD = 0.01  # RMS of received audio that counts as the answer (-40 dBFS)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mouth_openness(frames: list[np.ndarray]) -> np.ndarray:
    """Inner-lip gap / mouth width per frame (FaceMesh landmarks re-detected; nan without a face)."""
    import mediapipe as mp

    openness = []
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=False, max_num_faces=1, refine_landmarks=True
    ) as mesh:
        for frame in frames:
            found = mesh.process(np.ascontiguousarray(frame))
            if not found.multi_face_landmarks:
                openness.append(np.nan)
                continue
            lm = found.multi_face_landmarks[0].landmark
            gap = np.hypot(lm[13].x - lm[14].x, lm[13].y - lm[14].y)
            width = np.hypot(lm[61].x - lm[291].x, lm[61].y - lm[291].y)
            openness.append(gap / width)
    return np.array(openness)


def av_lag_ms(
    times: list[float], openness: np.ndarray, audio_times: list[float], audio_rms: list[float]
) -> float | None:
    """The shift of the picture against the sound (ms, positive = picture late) that best lines up
    mouth opening with loudness, over the span both cover; None when too short to tell."""
    ok = ~np.isnan(openness)
    t_video, mouth = np.asarray(times)[ok], openness[ok]
    t_audio, loud = np.asarray(audio_times), np.asarray(audio_rms)
    if len(t_video) < 25 or len(t_audio) < 50:
        return None
    step, span = 0.01, 0.4
    grid = np.arange(max(t_video[0], t_audio[0]) + span, min(t_video[-1], t_audio[-1]) - span, step)
    if len(grid) < 100:
        return None
    sound = np.interp(grid, t_audio, loud)
    sound = (sound - sound.mean()) / (sound.std() or 1)
    best, best_lag = -np.inf, 0.0
    for lag in np.arange(-span, span + step / 2, step):
        picture = np.interp(grid + lag, t_video, mouth)  # the picture `lag` s after the sound
        picture = (picture - picture.mean()) / (picture.std() or 1)
        score = float(np.mean(sound * picture))
        if score > best:
            best, best_lag = score, lag
    return round(best_lag * 1000)


def smoothness(times: list[float], frames: list[np.ndarray]) -> dict[str, float]:
    """Frames per second received, arrival gaps over 80 ms, and repeated frames."""
    if len(times) < 2:
        return {}
    gaps = np.diff(times)
    repeats = sum(
        float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16)))) < 0.3
        for a, b in itertools.pairwise(frames)
    )
    return {
        "fps_speaking": round((len(times) - 1) / (times[-1] - times[0]), 1),
        "gaps_80ms": int(np.sum(gaps > 0.08)),
        "repeats": int(repeats),
    }


def first_open_mouth(times: list[float], frames: list[np.ndarray], after: float) -> float | None:
    """Arrival time of the first frame after `after` whose mouth is clearly open (vs the idle frames
    received just before `after`)."""
    picked = [(t, f) for t, f in zip(times, frames, strict=True) if t > after - 1.0]
    if not picked:
        return None
    values = mouth_openness([f for _, f in picked])
    idle = values[[t <= after for t, _ in picked]]
    idle = idle[~np.isnan(idle)]
    base = float(np.median(idle)) if len(idle) else float(np.nanmin(values))
    spread = float(np.std(idle)) if len(idle) > 2 else 0.0
    threshold = base + max(0.05, 4 * spread)
    for (t, _), value in zip(picked, values, strict=True):
        if t > after and value > threshold:
            return t
    return None


def _onset(pcm: np.ndarray) -> float:
    """Seconds of leading silence in 48 kHz int16 speech (first 10 ms louder than -34 dBFS)."""
    window = 480
    for i in range(0, len(pcm) - window, window):
        if np.sqrt(np.mean((pcm[i : i + window] / 32768.0) ** 2)) > 0.02:
            return i / 48000
    return 0.0


def _loud_after(client: LiveClient, t0: float) -> bool:
    got = client.got
    return any(t > t0 and r > LOUD for t, r in zip(got.audio_times, got.audio_rms, strict=True))


def _first(client: LiveClient, kinds: tuple[str, ...], since: int) -> int | None:
    """Index (1-based, so always true) of the first event of `kinds` at or after `since`."""
    for i, (_, event) in enumerate(client.got.events[since:], since):
        if event["type"] in kinds:
            return i + 1
    return None


REPLY_QUESTIONS = ["What is a good name for a cat?", "Tell me a short joke.", "What is tea made of?"]


async def keep_replying(base: str, users: int, done: asyncio.Event, log: list[dict]) -> None:
    """`users` HTTP API users asking one text question after another until `done`."""

    async def user(n: int) -> None:
        async with httpx.AsyncClient(timeout=600) as http:
            k = 0
            while not done.is_set():
                t0 = time.monotonic()
                r = await http.post(
                    f"{base}/v1/reply",
                    data={"user": f"replier{n}", "text": REPLY_QUESTIONS[k % len(REPLY_QUESTIONS)]},
                )
                log.append({"reply_s": round(time.monotonic() - t0, 2), "status": r.status_code})
                k += 1

    await asyncio.gather(*(user(n) for n in range(users)))


async def run_questions(
    url: str,
    questions: list[tuple[str, np.ndarray]],
    interruptions: list[tuple[np.ndarray, np.ndarray]],
    log: list[dict],
) -> None:
    async def post(body: dict) -> tuple[int, dict]:
        async with httpx.AsyncClient(timeout=120) as http:
            r = await http.post(url, json=body)
            return r.status_code, r.json()

    client = LiveClient(keep_frames=True)
    status, body = await client.connect(post, "bench")
    if status != 200:
        raise SystemExit(f"/v1/live answered {status}: {body}")
    try:
        await client.wait_event("idle", 120)
        await asyncio.sleep(2.0)  # a little idle video first
        for n, (text, pcm) in enumerate(questions):
            got = client.got
            # forget what came before the last 2 s (frames are large)
            keep = time.monotonic() - 2.0
            cut = next((i for i, t in enumerate(got.video_times) if t >= keep), len(got.video_times))
            del got.video_times[:cut], got.video_frames[:cut]
            mark = len(client.got.events)
            _, end = client.mic.say(pcm)

            began = await client.wait_for(lambda m=mark: _first(client, ("speaking", "error"), m), 180)
            ended = await client.wait_for(lambda b=began: _first(client, ("idle",), b), 180)
            await asyncio.sleep(1.0)
            speak_from, speak_to = client.got.events[began - 1][0], client.got.events[ended - 1][0]
            speaking = [e for _, e in client.got.events[mark:] if e["type"] == "speaking"]
            heard = next((e for _, e in client.got.events[mark:] if e["type"] == "heard"), {})
            answer = [e["text"] for _, e in client.got.events[mark:] if e["type"] == "answer"]
            audio_at = next(
                (t for t, rms in zip(got.audio_times, got.audio_rms, strict=True) if t > end and rms > LOUD),
                None,
            )
            mouth_at = await asyncio.to_thread(
                first_open_mouth, list(got.video_times), list(got.video_frames), end
            )
            during = [
                (t, f)
                for t, f in zip(got.video_times, got.video_frames, strict=True)
                if speak_from <= t <= speak_to
            ]
            openness = await asyncio.to_thread(mouth_openness, [f for _, f in during])
            lag = av_lag_ms([t for t, _ in during], openness, got.audio_times, got.audio_rms)
            timings = speaking[0]["timings"] if speaking else {}
            row = {
                "question": text,
                "heard": heard.get("text", ""),
                "answer": " ".join(answer),
                "audio_s": round(audio_at - end, 3) if audio_at else None,
                "mouth_s": round(mouth_at - end, 3) if mouth_at else None,
                "av_lag_ms": lag,
                **smoothness([t for t, _ in during], [f for _, f in during]),
                "server": timings,
            }
            if audio_at and timings:
                row["transport_s"] = round(
                    audio_at - end - timings["vad_hangover"] - timings["first_frame"], 3
                )
            log.append(row)
            print(f"{n + 1}. {json.dumps(row, ensure_ascii=False)}", flush=True)
        for n, (story, stop) in enumerate(interruptions):
            got = client.got
            mark = len(client.got.events)
            _, asked = client.mic.say(story)
            began = await client.wait_for(lambda m=mark: _first(client, ("speaking", "error"), m), 180)
            await client.wait_for(lambda a=asked: _loud_after(client, a), 60)
            await asyncio.sleep(0.8)  # the twin is talking
            start, _ = client.mic.say(stop)
            start += _onset(stop)  # the voice's own leading silence is not the user speaking yet
            await client.wait_for(lambda b=began: _first(client, ("idle",), b), 60)
            await asyncio.sleep(1.5)
            loud = [
                t for t, r in zip(got.audio_times, got.audio_rms, strict=True) if t > start - 1 and r > LOUD
            ]
            before_answer = [t for t in loud if t < start + 2.0]  # the interrupted answer's last sound
            silent_at = max(before_answer) + 0.02 if before_answer else None
            told = next((t for t, e in client.got.events[mark:] if e.get("interrupted")), None)
            row = {
                "barge_in": n + 1,
                "stop_s": round(silent_at - start, 3) if silent_at else None,
                # the server's "interrupted" event at the client: detection (mic transport, VAD)
                "told_s": round(told - start, 3) if told else None,
                "interrupted": any(e.get("interrupted") for _, e in client.got.events[mark:]),
            }
            log.append(row)
            print(json.dumps(row), flush=True)
            # let the answer to the interruption finish
            mark = len(client.got.events)
            with contextlib.suppress(TimeoutError):
                await client.wait_for(lambda m=mark: _first(client, ("idle",), m), 120)
        log.append({"client": {"errors": client.events("error")}})
    finally:
        await client.close()


_PRINT_TIMING = re.compile(r"(prompt eval|\s{2}eval) time =\s*([\d.]+) ms /\s*(\d+) tokens")


def chat_model_requests(log_path: Path) -> list[dict]:
    """Per request of the chat model's server, from its log: tokens read, tokens written, and how long
    each took (llama.cpp prints both after every request)."""
    if not log_path.is_file():
        return []
    requests: list[dict] = []
    for kind, ms, n in _PRINT_TIMING.findall(log_path.read_text(errors="replace")):
        if kind == "prompt eval":
            requests.append({"prompt_tokens": int(n), "prompt_ms": float(ms), "tokens": 0, "ms": 0.0})
        elif requests:
            requests[-1].update(tokens=int(n), ms=float(ms))
    return requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3, help="questions per language")
    parser.add_argument("--langs", default="en,zh", help="question sets: en, zh, en-long, zh-long")
    parser.add_argument("--size", type=int, default=0, help="live frame size (default: [live] size)")
    parser.add_argument("--barge-in", type=int, default=2, help="interruptions to time (English)")
    parser.add_argument("--with-replies", type=int, default=0, help="HTTP users asking the whole time")
    parser.add_argument(
        "--client-nice",
        type=int,
        default=5,
        help="niceness of the client's side (this process; the models' process keeps its own)",
    )
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from bots.http.app import HttpOptions
    from bots.http.server import HttpServer
    from bots.runtime import Components
    from pipeline.tts.factory import build_synthesizer

    with tempfile.TemporaryDirectory() as tmp:
        env = {"TALKTWIN_PATHS__DATA_DIR": tmp, "TALKTWIN_LLM__TEMPERATURE": "0"}
        if args.size:
            env["TALKTWIN_LIVE__SIZE"] = str(args.size)
        settings = load_settings(environ={**os.environ, **env})
        voice = build_synthesizer(settings)
        langs = [lang for lang in args.langs.split(",") if lang]
        questions = []
        for lang in langs:
            for text in QUESTIONS[lang][: args.runs]:
                speech = voice.synthesize(text, lang.split("-")[0], VoiceSettings())
                questions.append((text, to_mic(speech.audio.samples, speech.audio.sample_rate)))
        story = voice.synthesize(
            "Please tell me a long story about a brave little dragon.", "en", VoiceSettings()
        )
        stop = voice.synthesize("Wait, stop please.", "en", VoiceSettings())
        interruptions = [
            (
                to_mic(story.audio.samples, story.audio.sample_rate),
                to_mic(stop.audio.samples, stop.audio.sample_rate),
            )
        ] * args.barge_in
        t0 = time.perf_counter()
        components = Components.load(settings)
        load_s = time.perf_counter() - t0
        client_nice = 0
        if settings.reply.models_process and args.client_nice:
            client_nice = os.nice(args.client_nice)  # threads started from here on inherit it
        port = free_port()
        results: list[dict] = []
        replies: list[dict] = []

        async def serve() -> None:
            server = HttpServer(HttpOptions(port=port), components)
            await server.start()
            done = asyncio.Event()
            base = f"http://127.0.0.1:{port}"
            replying = (
                asyncio.ensure_future(keep_replying(base, args.with_replies, done, replies))
                if args.with_replies
                else None
            )
            try:
                await run_questions(f"{base}/v1/live", questions, interruptions, results)
            finally:
                done.set()
                if replying is not None:
                    await replying
                await server.stop()

        try:
            asyncio.run(serve())
        finally:
            components.close()
        requests = chat_model_requests(Path(tmp) / "logs" / "chat-model.log")
    rows = [r for r in results if "question" in r]
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at "
        "the end (shared with other work)",
        "live_size": settings.live.size,
        "end_silence_ms": settings.live.end_silence_ms,
        "chat_model": settings.live.chat_model or settings.llm.model,
        "models": "own process" if settings.reply.models_process else "in the service's process",
        "load_s": round(load_s, 1),
        "client_nice": client_nice,
        "with_replies": args.with_replies,
    }
    if replies:
        times = [r["reply_s"] for r in replies if r["status"] == 200]
        summary["replies"] = {
            "n": len(times),
            "failed": len(replies) - len(times),
            "p50_s": percentile(times, 0.5),
        }
    rows += [r for r in results if "barge_in" in r]
    for key in ("audio_s", "mouth_s", "transport_s", "stop_s", "told_s", "av_lag_ms", "fps_speaking"):
        values = [r[key] for r in rows if r.get(key) is not None]
        summary[key] = {
            "p50": round(percentile(values, 0.5), 3),
            "p95": round(percentile(values, 0.95), 3),
            "n": len(values),
        }
    summary["gaps_80ms"] = sum(r.get("gaps_80ms", 0) for r in rows)
    summary["repeats"] = sum(r.get("repeats", 0) for r in rows)
    stages = sorted({k for r in rows for k in r.get("server", {})})
    summary["server_p50"] = {
        s: round(percentile([r["server"][s] for r in rows if s in r.get("server", {})], 0.5), 3)
        for s in stages
    }
    # llama.cpp's own timings: what a question costs to read and how fast the answer is written
    answers = [r for r in requests if r["tokens"] > 1]
    if answers:
        summary["chat_model_p50"] = {
            "prompt_tokens": percentile([r["prompt_tokens"] for r in answers], 0.5),
            "prompt_ms": percentile([r["prompt_ms"] for r in answers], 0.5),
            "tokens_per_s": round(percentile([r["tokens"] / r["ms"] * 1000 for r in answers], 0.5), 1),
            "n": len(answers),
        }
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"summary": summary, "questions": results, "chat_model_requests": requests},
                indent=2,
                ensure_ascii=False,
            )
        )


if __name__ == "__main__":
    main()
