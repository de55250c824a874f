from pathlib import Path

import pytest
from pydantic import BaseModel

from pipeline.config import PROJECT_ROOT, load_settings
from pipeline.errors import ConfigError


def test_defaults_load_and_document_every_setting():
    import bots  # noqa: F401  registers the adapters' sections: documented like the pipeline's

    s = load_settings(environ={})
    assert s.llm.backend == "llamacpp"
    assert s.tts.backend == "auto"
    assert s.render.size == 512
    assert s.resolve(s.paths.checkpoints_dir) == PROJECT_ROOT / "checkpoints"
    text = (PROJECT_ROOT / "config" / "default.toml").read_text()
    for section, model in s:
        for key, value in model:
            if isinstance(value, BaseModel):  # a section inside the section: [render.warp]
                assert f"\n[{section}.{key}]\n" in text, f"[{section}.{key}] is not in config/default.toml"
                for inner in type(value).model_fields:
                    assert f"\n{inner} = " in text, f"{section}.{key}.{inner} is not in config/default.toml"
            else:
                assert f"\n{key} = " in text, f"{section}.{key} is not in config/default.toml"


def test_env_overrides_with_type_conversion():
    s = load_settings(
        environ={
            "TALKTWIN_LLM__TEMPERATURE": "0.25",
            "TALKTWIN_RENDER__SIZE": "256",
            "TALKTWIN_OUTPUT__SUBTITLES": "true",
        }
    )
    assert s.llm.temperature == 0.25
    assert s.render.size == 256
    assert s.output.subtitles is True


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError, match=r"llm\.temperature"):
        load_settings(environ={"TALKTWIN_LLM__TEMPERATURE": "hot"})
    with pytest.raises(ConfigError, match=r"render\.size"):
        load_settings(environ={"TALKTWIN_RENDER__SIZE": "500"})


def test_unknown_key_is_refused():
    with pytest.raises(ConfigError, match=r"tts\.voise"):
        load_settings(environ={"TALKTWIN_TTS__VOISE": "x"})


def test_user_file_overrides_defaults_and_env_wins(tmp_path: Path):
    cfg = tmp_path / "my.toml"
    cfg.write_text('[llm]\nbackend = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmax_tokens = 50\n')
    s = load_settings(cfg, environ={"TALKTWIN_LLM__MAX_TOKENS": "70"})
    assert (s.llm.backend, s.llm.base_url, s.llm.max_tokens) == ("openai", "http://127.0.0.1:9/v1", 70)
    assert s.asr.model == "checkpoints/whisper-base"  # untouched keys keep their defaults


def test_unreadable_config_file(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[llm\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(bad, environ={})


def test_env_reaches_sections_inside_sections():
    s = load_settings(environ={"TALKTWIN_RENDER__WARP__SEED": "3", "TALKTWIN_RENDER__FPS": "30"})
    assert s.render.warp.seed == 3 and s.render.fps == 30
    with pytest.raises(ConfigError, match=r"render\.warp\.sed"):
        load_settings(environ={"TALKTWIN_RENDER__WARP__SED": "3"})
    with pytest.raises(ConfigError, match=r"render\.warp\.seed"):
        load_settings(environ={"TALKTWIN_RENDER__WARP__SEED": "many"})
    with pytest.raises(ConfigError, match=r"render\.warp: set both as a value and as a section"):
        load_settings(environ={"TALKTWIN_RENDER__WARP": "1", "TALKTWIN_RENDER__WARP__SEED": "3"})
    with pytest.raises(ConfigError, match="empty section or key name"):
        load_settings(environ={"TALKTWIN_RENDER____SEED": "3"})


def test_a_moved_render_key_is_still_read(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    cfg = tmp_path / "old.toml"
    cfg.write_text("[render]\nseed = 11\n")  # a settings file from before [render.warp]
    assert load_settings(cfg, environ={}).render.warp.seed == 11
    assert "render.warp.seed" in caplog.text
    assert load_settings(environ={"TALKTWIN_RENDER__SEED": "12"}).render.warp.seed == 12


def test_unknown_renderer_lists_the_known_ones():
    with pytest.raises(
        ConfigError, match=r"render\.backend: .*unknown renderer 'wav2lipp'.*known renderers: .*warp"
    ):
        load_settings(environ={"TALKTWIN_RENDER__BACKEND": "wav2lipp"})


def test_settings_load_without_torch():
    """The CLI checks its arguments before any model loads: settings (and every renderer's section)
    must not pull in torch."""
    import subprocess
    import sys

    code = "import sys; from pipeline.config import load_settings as L; L(); print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_adapter_sections_are_checked_and_overridden_like_the_pipelines():
    """[telegram], [discord] and [cli] are declared by the adapters (bots/), not by pipeline/config.py:
    the env overrides and the refusal of unknown keys are as for any section."""
    from bots.cli import CliSettings
    from bots.discord.settings import DiscordSettings
    from bots.telegram.settings import TelegramSettings

    s = load_settings(environ={"TALKTWIN_TELEGRAM__MAX_PENDING": "5", "TALKTWIN_DISCORD__COOLDOWN_S": "0"})
    assert TelegramSettings.of(s).max_pending == 5 and DiscordSettings.of(s).cooldown_s == 0
    assert CliSettings.of(s).format == "video_note" and CliSettings.of(s).video_note_max_seconds == 60
    with pytest.raises(ConfigError, match=r"telegram\.max_pendng"):
        load_settings(environ={"TALKTWIN_TELEGRAM__MAX_PENDNG": "5"})
    with pytest.raises(ConfigError, match=r"discord\.max_pending"):
        load_settings(environ={"TALKTWIN_DISCORD__MAX_PENDING": "0"})
    with pytest.raises(ConfigError, match=r"unknown_section"):
        load_settings(environ={"TALKTWIN_UNKNOWN_SECTION__KEY": "1"})


def test_keys_that_moved_out_of_output_are_still_read(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from bots.cli import CliSettings

    cfg = tmp_path / "old.toml"
    cfg.write_text('[output]\nformat = "video"\nvideo_note_max_seconds = 30\n')
    s = CliSettings.of(load_settings(cfg, environ={}))
    assert (s.format, s.video_note_max_seconds) == ("video", 30)
    assert "output.format has moved to cli.format" in caplog.text
    assert CliSettings.of(load_settings(environ={"TALKTWIN_OUTPUT__FORMAT": "video"})).format == "video"


def test_the_pipeline_alone_reads_the_same_files():
    """A process that never imports bots (a benchmark of the pipeline) loads the same config files:
    the adapters' sections are carried along unchecked, and checked when an adapter reads them."""
    import subprocess
    import sys

    code = (
        "import sys; from pipeline.config import load_settings as L, section; "
        "s = L(environ={'TALKTWIN_TELEGRAM__MAX_PENDING': 'many'}); "
        "print('bots' in sys.modules, s.telegram['max_pending']); "
        "from bots.telegram.settings import TelegramSettings as T\n"
        "try: T.of(s)\nexcept Exception as e: print(type(e).__name__, e)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    first, second = out.stdout.strip().splitlines()
    assert first == "False many"
    assert second.startswith("ConfigError bad setting: telegram.max_pending:")
