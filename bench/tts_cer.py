"""Round-trip intelligibility of the offline voices: voice -> Whisper base -> text, error rate per voice.

Nobody has to listen: if Whisper base (the project's own recogniser) writes back what was spoken, a
person understands it too. Chinese is scored by character error rate (CER), English by word error
rate (WER); both are edit distances over the reference, after dropping punctuation and spaces and
writing numbers as the voice reads them. Also reported: real-time factor (synthesis seconds per
second of speech) on this machine, and whether a mixed sentence keeps its Latin words.

    .venv/bin/python -m bench.tts_cer [--runs 2] [--voices espeak mandarin piper]

Prints one line per voice and writes bench/results/tts_cer.json.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.types import Speech, VoiceSettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# Everyday sentences, no digits or Latin (those are scored separately below), 8 x 12-17 characters.
ZH = [
    "你好，我是你的数字分身，很高兴和你聊天。",
    "今天天气很好，我们去公园散步吧。",
    "明天早上八点我要去机场接朋友。",
    "这家饭馆的菜很好吃，价格也不贵。",
    "周末你有空吗？我们一起去看电影吧。",
    "请把窗户关上，外面有点冷。",
    "我最近在学做饭，昨天做了一碗面条。",
    "北京是中国的首都，有很多名胜古迹。",
]
EN = [
    "Hello there, I am your digital twin and I like talking with you.",
    "The weather is lovely today, so let's take a walk in the park.",
    "Please remind me to call my sister tomorrow morning.",
    "This restaurant serves great noodles at a fair price.",
]
# Mixed sentences: the Latin words must be heard, not dropped.
MIXED = [
    ("我用iPhone拍了三张照片。", ["iphone"]),
    ("这个App很好用，OK吗？", ["app", "ok"]),
]
_DROP = re.compile(r"[\W_]+", re.UNICODE)


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance between two token lists."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def zh_chars(text: str, normalise: Callable[[str], str]) -> list[str]:
    """Characters to score: numbers as the voice reads them, punctuation and spaces dropped."""
    return list(_DROP.sub("", normalise(text)).lower())


def en_words(text: str) -> list[str]:
    return [w for w in re.sub(r"[^\w' ]+", " ", text.lower()).split() if w]


def voices(names: list[str]) -> dict[str, object]:
    """The offline voices by name, built as the factory builds them (Piper from the model store)."""
    from pipeline.tts.espeak import EspeakSynthesizer
    from pipeline.tts.mandarin import MandarinSynthesizer
    from pipeline.tts.piper import PiperSynthesizer

    piper = PiperSynthesizer(ROOT / "checkpoints" / "piper" / "en_US-joe-medium.onnx", threads=2)
    built: dict[str, object] = {}
    for name in names:
        if name == "espeak":
            built[name] = EspeakSynthesizer({"en": "en-us", "zh": "cmn"})
        elif name == "mandarin":
            built[name] = MandarinSynthesizer(latin=piper, threads=2)
        elif name == "piper":
            built[name] = piper
        else:
            raise SystemExit(f"unknown voice {name!r} (espeak, mandarin, piper)")
    return built


def measure(names: list[str], runs: int) -> dict:
    from pipeline.asr.whisper import WhisperRecognizer
    from pipeline.tts.mandarin import MandarinFrontEnd, _load_normaliser, voice_files

    whisper = WhisperRecognizer(str(ROOT / "checkpoints" / "whisper-base"), threads=2)
    normaliser = MandarinFrontEnd({}, _load_normaliser(voice_files().normaliser)).normalise
    built = voices(names)
    out: dict = {"asr": "whisper-base int8, beam 1", "runs": runs, "voices": {}}
    for name, tts in built.items():
        languages = ["en"] if name == "piper" else ["zh", "en"] if name == "espeak" else ["zh"]
        for lang in languages:
            sentences = ZH if lang == "zh" else EN
            errors = total = 0
            synth_s = audio_s = 0.0
            misheard: list[str] = []
            for _ in range(runs):
                for sentence in sentences:
                    t0 = time.perf_counter()
                    speech: Speech = tts.synthesize(sentence, lang, VoiceSettings())  # type: ignore[attr-defined]
                    synth_s += time.perf_counter() - t0
                    audio_s += speech.duration
                    heard = whisper.transcribe(speech.audio, language=lang).text
                    if lang == "zh":
                        ref, hyp = zh_chars(sentence, normaliser), zh_chars(heard, normaliser)
                    else:
                        ref, hyp = en_words(sentence), en_words(heard)
                    e = edit_distance(ref, hyp)
                    errors, total = errors + e, total + len(ref)
                    if e:
                        misheard.append(f"{sentence} -> {heard}")
            key = f"{name}/{lang}"
            out["voices"][key] = {
                "metric": "CER" if lang == "zh" else "WER",
                "error_rate": round(errors / total, 4),
                "units": total,
                "rtf": round(synth_s / audio_s, 3),
                "misheard": misheard,
            }
            r = out["voices"][key]
            print(
                f"{key:14} {r['metric']} {100 * r['error_rate']:5.1f} %  ({total} units)  RTF {r['rtf']:.3f}"
            )
        if name == "mandarin":
            out["mixed"] = []
            for sentence, latin in MIXED:
                speech = tts.synthesize(sentence, "zh", VoiceSettings())  # type: ignore[attr-defined]
                heard = whisper.transcribe(speech.audio, language="zh").text
                kept = [w for w in latin if w in heard.lower().replace(" ", "")]
                out["mixed"].append({"text": sentence, "heard": heard, "latin_heard": kept, "latin": latin})
                print(f"  mixed: {sentence} -> {heard}  (Latin heard: {len(kept)}/{len(latin)})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="passes over the sentences (the voice varies)")
    parser.add_argument("--voices", nargs="*", default=["espeak", "mandarin", "piper"])
    args = parser.parse_args()
    result = measure(args.voices, args.runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tts_cer.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
