"""Lip-sync, measured independently of the renderer's own control signal.

The benchmark sentences go through the real TTS (Piper for English, the Mandarin voice for Chinese), the warp
renderer (sentence by sentence with start-time offsets, as the pipeline does) and the H.264 encoder.
The decoded mp4 is then re-analysed: FaceMesh finds the lips on every rendered frame, and the inner-lip
gap / mouth width is correlated (Pearson) with the speech loudness per frame. Target: r >= 0.6.

    .venv/bin/python -m bench.lip_sync [--size 512] [--photo assets/avatar.jpg ...] [--hard] [--lang en zh]
        [--speech speech.pkl]

`--hard` adds the hard-photo set (tests/data/hard_photos/: a small face, a tilted one, grayscale, a
thin-lipped smile, a group photo and a tiny grayscale tilted crop). Every photo gets the same
synthesised speech, so the photos are compared on equal terms. Prints one line per photo and
language and writes bench/results/lip_sync_<size>.json (lip_sync_hard_<size>.json with `--hard`).
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.media.video_output import VideoWriter
from pipeline.render.variants import frame_size
from pipeline.render.warp import WarpRenderer
from pipeline.types import Audio, Speech, VoiceSettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HARD_PHOTOS = ROOT / "tests" / "data" / "hard_photos"
HARD_SET = ("small", "tilted", "grayscale", "smiling", "group", "combo")
FPS = 25
PAUSE_S = 0.12  # what the orchestrator appends after each sentence
SENTENCES = {
    "en": [
        "Hello, I am your digital twin, and I can answer any question you send me.",
        "Maybe we should meet at noon, or perhaps a bit later in the afternoon.",
        "Papa bought a big blue map, but the bus was already gone.",
    ],
    "zh": [
        "你好，我是你的数字分身，有什么问题都可以问我。",
        "今天天气很好，我们去公园散步吧。",
        "爸爸妈妈买了一本很大的地图。",
    ],
}


def hard_photos() -> list[Path]:
    """The hard-photo set, in a fixed order."""
    return [HARD_PHOTOS / f"{name}.jpg" for name in HARD_SET]


def synthesizers() -> dict[str, object]:
    """The offline defaults, each with timings from its model: Piper for English (phoneme alignments),
    the Mandarin voice for Chinese (FastSpeech2 durations)."""
    from pipeline.tts.mandarin import MandarinSynthesizer
    from pipeline.tts.piper import PiperSynthesizer

    piper = PiperSynthesizer(ROOT / "checkpoints" / "piper" / "en_US-joe-medium.onnx")
    return {"en": piper, "zh": MandarinSynthesizer(latin=piper)}


def with_pause(speech: Speech, seconds: float) -> Speech:
    pad = np.zeros(int(seconds * speech.audio.sample_rate), np.float32)
    audio = Audio(np.concatenate([speech.audio.samples, pad]), speech.audio.sample_rate)
    return Speech(speech.text, speech.language, audio, speech.words, speech.phonemes, speech.engine)


def render_clip(
    renderer: WarpRenderer, photo: bytes, size: int, speeches: list[Speech], path: Path
) -> tuple[Path, float]:
    """Render and encode the sentences into one mp4, like the orchestrator; returns (path, render s)."""
    avatar = renderer.prepare(photo, size)
    width, height = frame_size(avatar)
    writer = VideoWriter(path, width, FPS, height=height)
    start, render_s, chunks = 0.0, 0.0, []
    rate = speeches[0].audio.sample_rate
    for speech in speeches:
        n = round((start + speech.duration) * FPS) - round(start * FPS)
        t0 = time.perf_counter()
        for frames in renderer.render(avatar, speech, fps=FPS, start_time=start, n_frames=n):
            render_s += time.perf_counter() - t0
            writer.write(frames)
            t0 = time.perf_counter()
        chunks.append(speech.audio.samples)
        start += speech.duration
    return writer.finish(Audio(np.concatenate(chunks), rate)), render_s


def clip_sync(renderer: WarpRenderer, photo: bytes, size: int, speeches: list[Speech]) -> dict:
    """Render the speeches on one photo, decode the mp4 and measure lip-sync by re-detection."""
    from tests.helpers import lip_sync, probe_mp4  # FaceMesh re-detection on decoded frames

    with tempfile.TemporaryDirectory() as tmp:
        path, render_s = render_clip(renderer, photo, size, speeches, Path(tmp) / "c.mp4")
        info = probe_mp4(path)
        result = lip_sync(info)
    return {
        "engine": speeches[0].engine,
        "seconds": round(info.audio_duration, 2),
        "frames": len(info.frames),
        "correlation": round(result.correlation, 3),
        "peak_open": round(result.peak_open, 3),
        "rest_open": round(result.rest_open, 3),
        "render_fps": round(len(info.frames) / render_s, 1),
    }


def speak(languages: list[str], cache: Path | None = None) -> dict[str, list[Speech]]:
    """The benchmark sentences per language, with the orchestrator's pause after each.

    Piper samples noise, so two runs never speak quite alike; with `cache` the speech of the first
    run is kept (pickled) and reused, so that two versions of the renderer see the same audio.
    """
    kept: dict[str, list[Speech]] = {}
    if cache is not None and cache.exists():
        kept = pickle.loads(cache.read_bytes())
    missing = [lang for lang in languages if lang not in kept]
    if missing:
        tts = synthesizers()
        for lang in missing:
            kept[lang] = [
                with_pause(tts[lang].synthesize(s, lang, VoiceSettings()), PAUSE_S)  # type: ignore[attr-defined]
                for s in SENTENCES[lang]
            ]
        if cache is not None:
            cache.write_bytes(pickle.dumps(kept))
    return {lang: kept[lang] for lang in languages}


def measure(size: int, photos: list[Path], languages: list[str], cache: Path | None = None) -> dict:
    speeches = speak(languages, cache)
    renderer = WarpRenderer(device="cpu", batch=16, seed=7)
    out: dict = {"size": size, "fps": FPS, "photos": {}}
    for photo in photos:
        name = str(photo.relative_to(ROOT)) if photo.is_relative_to(ROOT) else str(photo)
        per_lang = out["photos"].setdefault(name, {})
        for lang in languages:
            r = per_lang[lang] = clip_sync(renderer, photo.read_bytes(), size, speeches[lang])
            print(
                f"{name} {lang} ({r['engine']}, {r['seconds']} s): r = {r['correlation']:.3f}  "
                f"peak open {r['peak_open']:.3f}  rest open {r['rest_open']:.3f}",
                flush=True,
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--photo", type=Path, nargs="*", default=None)
    parser.add_argument("--hard", action="store_true", help="measure the hard-photo set as well")
    parser.add_argument("--lang", nargs="*", default=["en", "zh"])
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: bench/results/...)")
    parser.add_argument("--speech", type=Path, default=None, help="keep/reuse the synthesised speech here")
    args = parser.parse_args()
    photos = [p.resolve() for p in args.photo] if args.photo is not None else []
    if not args.hard and not photos:
        photos = [ROOT / "assets" / "avatar.jpg"]
    photos += hard_photos() if args.hard else []
    result = measure(args.size, photos, args.lang, args.speech)
    out = args.out or RESULTS / f"lip_sync{'_hard' if args.hard else ''}_{args.size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n")


if __name__ == "__main__":
    main()
