"""Lip-sync, measured independently of the renderer's own control signal.

The benchmark sentences go through the real TTS (Piper for English, the Mandarin voice for Chinese), the warp
renderer (sentence by sentence with start-time offsets, as the pipeline does) and the H.264 encoder.
The decoded mp4 is then re-analysed: FaceMesh finds the lips on every rendered frame, and the inner-lip
gap / mouth width is correlated (Pearson) with the speech loudness per frame. Target: r >= 0.6.

    .venv/bin/python -m bench.lip_sync [--size 512] [--photo assets/avatar.jpg]

Prints one line per language and writes bench/results/lip_sync_<size>.json.
"""

from __future__ import annotations

import argparse
import json
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


def measure(size: int, photo: Path, languages: list[str]) -> dict:
    from tests.helpers import lip_sync, probe_mp4  # FaceMesh re-detection on decoded frames

    tts = synthesizers()
    renderer = WarpRenderer(device="cpu", batch=16, seed=7)
    out: dict = {"size": size, "fps": FPS, "photo": str(photo.relative_to(ROOT)), "languages": {}}
    for lang in languages:
        speeches = [
            with_pause(tts[lang].synthesize(s, lang, VoiceSettings()), PAUSE_S)  # type: ignore[attr-defined]
            for s in SENTENCES[lang]
        ]
        with tempfile.TemporaryDirectory() as tmp:
            path, render_s = render_clip(renderer, photo.read_bytes(), size, speeches, Path(tmp) / "c.mp4")
            info = probe_mp4(path)
            result = lip_sync(info)
        out["languages"][lang] = {
            "engine": speeches[0].engine,
            "seconds": round(info.audio_duration, 2),
            "frames": len(info.frames),
            "correlation": round(result.correlation, 3),
            "peak_open": round(result.peak_open, 3),
            "rest_open": round(result.rest_open, 3),
            "render_fps": round(len(info.frames) / render_s, 1),
        }
        r = out["languages"][lang]
        print(
            f"{lang} ({r['engine']}, {r['seconds']} s): r = {r['correlation']:.3f}  "
            f"peak open {r['peak_open']:.3f}  rest open {r['rest_open']:.3f}"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--photo", type=Path, default=ROOT / "assets" / "avatar.jpg")
    parser.add_argument("--lang", nargs="*", default=["en", "zh"])
    args = parser.parse_args()
    result = measure(args.size, args.photo.resolve(), args.lang)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"lip_sync_{args.size}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
