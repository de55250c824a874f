"""The command line, run as a user would run it (a real subprocess)."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import PROJECT_ROOT


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run_bots.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_models_list_shows_the_store():
    result = run_cli("models", "list")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "whisper-base" in result.stdout and "qwen2.5-coder-0.5b" in result.stdout


def test_bad_setting_fails_at_start_naming_the_key():
    import os

    result = run_cli("models", "list", env={**os.environ, "TALKTWIN_RENDER__FPS": "many"})
    assert result.returncode == 2
    assert "render.fps" in result.stderr


def test_unreadable_audio_gives_one_clear_line(tmp_path: Path):
    bogus = tmp_path / "question.ogg"
    bogus.write_bytes(b"this is not audio at all")
    result = run_cli("reply", "--audio", str(bogus), "-o", str(tmp_path / "out.mp4"))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: I could not read that audio. Please send a voice message or an audio file."
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.mp4").exists()


def test_empty_text_in_chinese_locale(tmp_path: Path):
    import os

    result = run_cli(
        "reply", "--text", "   ", "-o", str(tmp_path / "out.mp4"), env={**os.environ, "LANG": "zh_CN.UTF-8"}
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: 消息是空的，请输入文字或发送语音。"


def test_missing_input_file(tmp_path: Path):
    result = run_cli("reply", "--audio", str(tmp_path / "nope.ogg"), "-o", str(tmp_path / "o.mp4"))
    assert result.returncode == 2  # a bad argument, found before any model loads
    assert (
        result.stderr.strip()
        == f"error: --audio: cannot read {tmp_path / 'nope.ogg'}: No such file or directory"
    )


def test_reply_runs_through_the_service_composition_and_core(
    tmp_path: Path, stages, avatar_bytes: bytes, monkeypatch: pytest.MonkeyPatch, capsys
):
    """In process, with the scripted chat model: the same lines as ever, the file at -o, no blobs."""
    from bots.cli import main
    from memory.store import MemoryStore
    from pipeline.orchestrator import ReplyPipeline
    from tests.helpers import NoRecognizer, ScriptedChat

    def scripted(settings, *, context=None) -> ReplyPipeline:  # over the store the service built
        synthesizer, renderer = stages
        return ReplyPipeline(
            settings,
            recognizer=NoRecognizer(),
            chat_model=ScriptedChat("Paris, of course."),
            synthesizer=synthesizer,
            renderer=renderer,
            context=context or MemoryStore.from_settings(settings),
        )

    monkeypatch.setattr(ReplyPipeline, "from_settings", scripted)
    monkeypatch.setenv("TALKTWIN_PATHS__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TALKTWIN_RENDER__SIZE", "256")
    (tmp_path / "me.jpg").write_bytes(avatar_bytes)
    out = tmp_path / "answer.mp4"
    code = main(
        ["reply", "--text", "Capital of France?", "--avatar", str(tmp_path / "me.jpg"), "-o", str(out)]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    q, a, media, timings = printed.out.splitlines()
    assert q == "Q: Capital of France?" and a == "A: Paris, of course."
    assert media.startswith(f"{out}  (") and " s video_note, voice: " in media
    assert timings.startswith("timings: ") and "render" in timings
    assert "· answer: Paris, of course." in printed.err  # the progress lines
    assert out.read_bytes()[4:8] == b"ftyp"
    assert list((tmp_path / "data" / "blobs").iterdir()) == []  # moved out; the photo was this reply's


# --- every bad argument: one line on stderr, exit code 2, before any model loads -----------------------


@pytest.fixture(scope="module")
def a_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "a-file.txt"
    path.write_text("not a folder")
    return path


BAD_ARGUMENTS = [
    (["reply", "--user", "alice", "--text", "hi"], "error: --user must be platform:id, e.g. cli:alice"),
    (["reply", "--text", "hi", "--avatar", "/nonexistent/me.jpg"], "error: --avatar: cannot read"),
    (["reply", "--text", "hi", "-o", "{file}/answer.mp4"], "is a file, not a folder"),
    (["reply", "--text", "hi", "--format", "gif"], "argument --format: invalid choice: 'gif'"),
    (["reply"], "one of the arguments --text --audio is required"),
    (["say", "--text", "hi", "--voice", "nobody"], "error: unknown voice 'nobody'"),
    (["say", "--text", "hi", "--lang", "fr"], "argument --lang: invalid choice: 'fr'"),
    (["say", "--text", "hi", "-o", "hi.mp3"], "error: -o must end in .wav, .ogg or .opus"),
    (["say", "--text", "hi", "-o", "{file}/hi.wav"], "is a file, not a folder"),
    (["say", "--lang", "en"], "the following arguments are required: --text"),
    (["voices", "--all"], "unrecognized arguments: --all"),
    (["models", "frob"], "argument action: invalid choice: 'frob'"),
    (["frob"], "argument command: invalid choice: 'frob'"),
]


@pytest.mark.parametrize(
    ("args", "expected"), BAD_ARGUMENTS, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_a_bad_argument_is_one_line_and_exit_code_2(args: list[str], expected: str, a_file: Path):
    result = run_cli(*(a.format(file=a_file) for a in args))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert result.stdout == ""


def test_a_bad_argument_in_a_chinese_locale(tmp_path: Path):
    import os

    result = run_cli("say", "--text", "你好", "--voice", "nobody", env={**os.environ, "LANG": "zh_CN.UTF-8"})
    assert result.returncode == 2
    assert result.stderr.strip() == "error: 没有名为 'nobody' 的声音；`run_bots.py voices` 列出所有声音"


# --- say and voices: the speech stage only ----------------------------------------------------------------

SPEECH_ONLY = """
import sys
from bots.cli import main
code = main(sys.argv[1:])
other_stages = ("faster_whisper", "ctranslate2", "torch", "xllamacpp", "llama_cpp", "mediapipe")
heavy = [m for m in other_stages if m in sys.modules]
print("heavy modules:", heavy)
sys.exit(code)
"""


def run_speech_only(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter that also reports whether any other stage's runtime got imported."""
    return subprocess.run(
        [sys.executable, "-c", SPEECH_ONLY, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=PROJECT_ROOT,
    )


def test_say_speaks_chinese_with_the_mandarin_voice_into_ogg(tmp_path: Path):
    from pipeline.media.audio_input import decode_audio

    out = tmp_path / "preview.ogg"
    result = run_speech_only(
        "say", "--text", "你好，我用 iPhone 拍了三张照片。", "--voice", "mandarin", "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    first, heavy = result.stdout.strip().splitlines()
    assert first.startswith(f"{out}  (") and first.endswith(", zh, voice: mandarin)")
    assert heavy == "heavy modules: []"  # no Whisper, chat model or renderer
    assert result.stderr == ""
    audio = decode_audio(out.read_bytes())
    seconds = float(first.split("(")[1].split(" s")[0])
    assert abs(audio.duration - seconds) < 0.15 and seconds > 2


def test_say_uses_the_configured_voice_and_guesses_the_language(tmp_path: Path):
    import os
    import wave

    out = tmp_path / "hello.wav"
    env = {**os.environ, "TALKTWIN_TTS__BACKEND": "piper"}  # configured, offline
    result = run_speech_only("say", "--text", "Hello there, this is a preview.", "-o", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert ", en, voice: piper)" in result.stdout and "heavy modules: []" in result.stdout
    with wave.open(str(out)) as w:
        assert w.getnchannels() == 1 and w.getnframes() / w.getframerate() > 1.0


def test_say_with_nothing_speakable_is_a_user_error(tmp_path: Path):
    result = run_cli("say", "--text", "!!!", "--voice", "espeak", "-o", str(tmp_path / "x.wav"))
    assert result.returncode == 1
    assert result.stderr.strip() == "error: Your message is empty. Please write or say something."
    assert not (tmp_path / "x.wav").exists()


def test_voices_lists_each_engine_and_marks_the_defaults():
    import os

    result = run_speech_only("voices")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    row = {tuple(line[2:].split()[:2]): line for line in lines if line[:1] in "* " and len(line.split()) > 2}
    assert row[("mandarin", "zh")].startswith("* ") and row[("piper", "en")].startswith("* ")
    assert row[("edge", "zh")].startswith("* ") and "zh-CN-XiaoxiaoNeural" in row[("edge", "zh")]
    assert row[("espeak", "zh")].startswith("  ") and " cmn " in row[("espeak", "zh")]
    assert "heavy modules: []" in result.stdout
    # Chinese offline by espeak-ng instead: the marks follow the setting
    espeak_zh = run_speech_only("voices", env={**os.environ, "TALKTWIN_TTS__OFFLINE_ZH": "espeak"})
    marked = [line.split()[1:3] for line in espeak_zh.stdout.splitlines() if line.startswith("* ")]
    assert ["espeak", "zh"] in marked and ["mandarin", "zh"] not in marked


@pytest.mark.real_models
def test_a_reply_speaks_with_the_configured_voice_until_the_user_picks_one(tmp_path: Path):
    """[tts] rate applies to users who never used /voice (their profile keeps the default); a voice a
    user picked applies to them."""
    import os

    from memory.store import MemoryStore
    from pipeline.config import load_settings
    from pipeline.types import VoiceSettings
    from tests.test_llm import FakeOpenAIServer

    def ogg_seconds(path: Path) -> float:
        import av

        with av.open(str(path)) as media:
            stream = media.streams.audio[0]
            return sum(frame.samples for frame in media.decode(stream)) / stream.rate

    base = {
        "TALKTWIN_PATHS__DATA_DIR": str(tmp_path / "data"),
        "TALKTWIN_LLM__BACKEND": "openai",
        "TALKTWIN_LLM__MODEL": "fake",
        "TALKTWIN_TTS__BACKEND": "piper",
    }
    seconds = {}
    with FakeOpenAIServer(["Good morning, this is a sentence of a fair length."]) as llm:
        base["TALKTWIN_LLM__BASE_URL"] = llm.base_url
        runs = (("default", "0", "cli:ann"), ("fast", "60", "cli:ann"), ("own", "60", "cli:bo"))
        for name, rate, user in runs:
            if name == "own":  # bo picked a slow voice: the configured rate is not theirs
                store = MemoryStore.from_settings(load_settings(environ=base))
                store.update_profile(user, voice=VoiceSettings(rate=-30))
                store.close()
            out = tmp_path / f"{name}.ogg"
            env = {**os.environ, **base, "TALKTWIN_TTS__RATE": rate}
            args = ("reply", "--text", "Hi", "--format", "voice", "--user", user, "-o", str(out))
            done = run_cli(*args, env=env)
            assert done.returncode == 0, done.stderr
            seconds[name] = ogg_seconds(out)
    assert seconds["fast"] < 0.8 * seconds["default"], seconds
    assert seconds["own"] > 1.1 * seconds["default"], seconds
