from pathlib import Path

import pytest

from pipeline.config import PROJECT_ROOT, load_settings
from pipeline.errors import ConfigError


def test_defaults_load_and_document_every_setting():
    s = load_settings(environ={})
    assert s.llm.backend == "llamacpp"
    assert s.tts.backend == "auto"
    assert s.render.size == 512
    assert s.resolve(s.paths.checkpoints_dir) == PROJECT_ROOT / "checkpoints"
    text = (PROJECT_ROOT / "config" / "default.toml").read_text()
    for section, model in s:
        for key in type(model).model_fields:
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
