"""The command line, run as a user would run it (a real subprocess)."""

import subprocess
import sys
from pathlib import Path

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
    assert result.returncode == 1
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr
