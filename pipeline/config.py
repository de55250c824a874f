"""Settings: `config/default.toml`, then an optional user file, then `TALKTWIN_<SECTION>__<KEY>` env vars
(`TALKTWIN_RENDER__WARP__SEED` for a section inside a section: a renderer backend's own).

Every setting is documented in config/default.toml. Secrets never live in these files: settings that
need one name the environment variable that holds it (`api_key_env`). A bad value or an unknown key
fails at start with a ConfigError that names the key, e.g. `llm.temperature: ...`.

The pipeline knows no platform: the sections of the application around it ([telegram], [discord],
[cli]) are declared where they are read and join the settings through `register_section`, as a
renderer backend's own section joins [render] (pipeline/render/registry.py).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "default.toml"
ENV_PREFIX = "TALKTWIN_"

log = logging.getLogger(__name__)


class Section(BaseModel):
    """Base of every settings section: unknown keys fail (naming them), values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PathSettings(Section):
    data_dir: Path
    checkpoints_dir: Path


class LimitSettings(Section):
    max_audio_seconds: float = Field(gt=0)
    max_upload_mb: float = Field(gt=0)
    max_text_chars: int = Field(gt=0)


class ReplySettings(Section):
    overlap: Literal["auto", "on", "off"]
    max_queue: int = Field(ge=1)
    workers: int = Field(ge=0, le=64)
    timeout_s: float = Field(gt=0)
    llm_timeout_s: float = Field(gt=0)
    asr_timeout_s: float = Field(gt=0)
    tts_timeout_s: float = Field(gt=0)
    render_timeout_s: float = Field(gt=0)
    models_process: bool
    nice: int = Field(ge=0, le=19)


class AsrSettings(Section):
    backend: Literal["whisper"]
    model: str
    device: Literal["auto", "cpu", "cuda"]
    compute_type: str
    beam_size: int = Field(ge=1, le=10)
    vad: bool
    threads: int = Field(ge=0)
    fit_window: bool = True


class LlmSettings(Section):
    backend: Literal["llamacpp", "openai", "transformers"]
    model: str
    base_url: str
    api_key_env: str
    max_tokens: int = Field(gt=0, le=4096)
    temperature: float = Field(ge=0, le=2)
    context_tokens: int = Field(ge=256)
    threads: int = Field(ge=0)
    timeout_s: float = Field(gt=0)
    persona_en: str
    persona_zh: str


class TtsSettings(Section):
    backend: Literal["auto", "edge", "piper", "espeak", "mandarin"]
    edge_timeout_s: float = Field(gt=0)
    edge_retries: int = Field(ge=0, le=5)
    edge_voice_en: str
    edge_voice_zh: str
    piper_voice: str
    espeak_voice_en: str
    espeak_voice_zh: str
    offline_zh: Literal["mandarin", "espeak"]
    mandarin_threads: int = Field(ge=1, le=16)
    voice: str
    rate: int = Field(ge=-90, le=200)
    volume: int = Field(ge=0, le=100)
    pitch: int = Field(ge=-100, le=100)


RENDER_SIZES = (256, 384, 512, 640)
# Flat [render] keys of earlier versions that moved into a backend's own section: still read (with a
# warning) so that an old settings file or TALKTWIN_RENDER__SEED keeps working.
MOVED_RENDER_KEYS = {"seed": "warp"}


class BackendSettings(Section):
    """Base of a renderer backend's own section, `[render.<name>]`, declared by the backend's module.

    The section joins the settings when the backend registers (pipeline/render/registry.py), so a new
    backend brings its settings along without edits here; unknown keys in it fail like any other.
    """


class RenderSettings(Section):
    """Settings every renderer backend honours; each backend's own are in `[render.<backend>]`."""

    backend: str
    device: Literal["auto", "cpu", "cuda"]
    size: int
    fps: int = Field(ge=10, le=60)
    batch: int = Field(ge=1, le=512)
    threads: int = Field(ge=0)
    avatar: Path
    frame: Literal["square", "photo"]
    share_batches: Literal["auto", "on", "off"]
    plugins: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        for key, section in MOVED_RENDER_KEYS.items():
            if key in data and isinstance(data.get(section, {}), Mapping):
                log.warning(
                    "render.%s has moved to render.%s.%s; please update your settings", key, section, key
                )
                data[section] = {**data.get(section, {}), key: data.pop(key)}
        return data

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        from pipeline.render.registry import backend_names

        known = backend_names()
        if name not in known:
            raise ValueError(f"unknown renderer {name!r}; known renderers: {', '.join(known)}")
        return name

    @field_validator("size")
    @classmethod
    def _known_size(cls, size: int) -> int:
        if size not in RENDER_SIZES:
            raise ValueError(f"must be one of {RENDER_SIZES}")
        return size

    def backend_settings(self, name: str | None = None) -> BackendSettings:
        """The `[render.<name>]` section (default: the configured backend's); empty if it declares none."""
        section = getattr(self, name or self.backend, None)
        return section if isinstance(section, BackendSettings) else BackendSettings()


class OutputSettings(Section):
    """How replies are encoded. Their shape (kind, square frames, longest duration) comes with each
    request: it is the caller's to decide (bots/core/reply_job.py `OutputSpec`)."""

    subtitles: bool
    font: str
    crf: int = Field(ge=0, le=51)
    preset: str
    audio_bitrate_k: int = Field(ge=16, le=320)


class MemorySettings(Section):
    database_url: str
    recent_turns: int = Field(ge=0, le=50)
    summarize: bool
    summary_max_tokens: int = Field(ge=16, le=1024)
    notes_budget: float = Field(gt=0, lt=1)
    knowledge_budget: float = Field(gt=0, lt=1)
    group_shared: bool


class KnowledgeSettings(Section):
    enabled: bool
    shared_folder: str
    chunk_size: int = Field(ge=100, le=4000)
    chunk_overlap: int = Field(ge=0, le=1000)
    max_file_mb: float = Field(gt=0)
    max_pages: int = Field(ge=1)
    max_documents: int = Field(ge=1)
    top_k: int = Field(ge=1, le=20)
    min_relevance: float = Field(ge=-1, le=1)
    chroma_url: str


class QueueSettings(Section):
    broker_url: str
    blob_dir: str
    worker_concurrency: int = Field(ge=0, le=32)
    redelivery_after_s: float = Field(gt=0)
    max_deliveries: int = Field(ge=1, le=10)


class LiveSettings(Section):
    """`[live]`: live conversations over WebRTC (bots/live, pipeline/live)."""

    enabled: bool
    max_sessions: int = Field(ge=1, le=64)
    idle_timeout_s: float = Field(gt=0)
    max_session_s: float = Field(gt=0)
    size: int
    end_silence_ms: float = Field(ge=100, le=5000)
    think_after_ms: float = Field(ge=0, le=5000)
    read_ahead_ms: float = Field(ge=0, le=30000)
    min_speech_ms: float = Field(ge=32, le=2000)
    vad_threshold: float = Field(gt=0, lt=1)
    max_utterance_s: float = Field(gt=0, le=120)
    offline_voice: bool
    ice_servers: list[str] = Field(default_factory=list)
    chat_model: str = ""

    @field_validator("size")
    @classmethod
    def _known_size(cls, size: int) -> int:
        if size not in RENDER_SIZES:
            raise ValueError(f"must be one of {RENDER_SIZES}")
        return size


class Settings(Section):
    paths: PathSettings
    limits: LimitSettings
    reply: ReplySettings
    asr: AsrSettings
    llm: LlmSettings
    tts: TtsSettings
    render: RenderSettings
    output: OutputSettings
    memory: MemorySettings
    knowledge: KnowledgeSettings
    queue: QueueSettings
    live: LiveSettings
    # and a field per registered section (`register_section`): read them with `section()`

    def resolve(self, path: str | Path) -> Path:
        """A configured path, relative ones taken from the project root (not the working dir)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else PROJECT_ROOT / p


def _merge(base: dict[str, Any], override: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping):
            if not isinstance(out.get(key, {}), Mapping):
                raise ConfigError(f"{where}{key}: expected a value, got a section")
            out[key] = _merge(out.get(key, {}), value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """TALKTWIN_LLM__TEMPERATURE=0.3 -> {"llm": {"temperature": "0.3"}} (pydantic converts types).

    Each further `__` is one more level, for sections inside sections:
    TALKTWIN_RENDER__WARP__SEED=3 -> {"render": {"warp": {"seed": "3"}}}.
    """
    out: dict[str, Any] = {}
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        *sections, key = name[len(ENV_PREFIX) :].lower().split("__")
        if not key or not all(sections):
            raise ConfigError(f"{name}: empty section or key name (TALKTWIN_<SECTION>__<KEY>)")
        node = out
        for depth, section in enumerate(sections):
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(sections[: depth + 1])}: set both as a value and as a section")
        if isinstance(node.get(key), dict):
            raise ConfigError(f"{'.'.join([*sections, key])}: set both as a value and as a section")
        node[key] = value
    return out


S = TypeVar("S", bound=Section)


@dataclass(frozen=True)
class _Registered:
    model: type[Section]
    moved_from: tuple[tuple[str, str], ...]  # ("output.format", "format"): an old key read here


_REGISTERED: dict[str, _Registered] = {}


def register_section(name: str, model: type[Section], *, moved_from: Mapping[str, str] | None = None) -> None:
    """Add the section `[name]`, checked by `model`, for a part of the application the pipeline does
    not know (an adapter's own behaviour, such as [telegram]).

    Registered before settings are loaded (bots/__init__.py registers the adapters' sections when
    `bots` is imported), the section is checked with the rest: an unknown key fails at start, naming
    it. A section of config/default.toml that no module of this process registered is carried along
    unchecked, so a process that runs the pipeline alone reads the same files. `moved_from` maps keys
    that lived in another section before, such as {"output.format": "format"}: still read, with a
    warning, so that an old settings file keeps working. Registering the same model again is a no-op.
    """
    if name in Settings.model_fields:
        raise ValueError(f"[{name}] is one of the pipeline's own sections")
    registered = _Registered(model, tuple((moved_from or {}).items()))
    earlier = _REGISTERED.setdefault(name, registered)
    if earlier.model is not model:
        raise ValueError(f"[{name}] is registered already, by {earlier.model.__module__}")


def section(settings: Settings, name: str, model: type[S]) -> S:
    """The registered section `[name]` of `settings`, typed (`section(settings, "telegram",
    TelegramSettings)`). Settings loaded before the section was registered carry it unchecked: it is
    checked here instead, and a bad key fails the same way, naming it."""
    value = getattr(settings, name, None)
    if isinstance(value, model):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{name}]: no such settings section (is it in config/default.toml?)")
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise ConfigError(_problems(e, f"{name}.")) from None


def _problems(error: ValidationError, where: str = "") -> str:
    found = "; ".join(
        f"{where}{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in error.errors()
    )
    return f"bad setting: {found}"


@functools.cache
def _default_sections() -> frozenset[str]:
    with DEFAULT_CONFIG.open("rb") as f:
        return frozenset(name for name, value in tomllib.load(f).items() if isinstance(value, dict))


def _settings_model() -> type[Settings]:
    """Settings with each registered section, and whose [render] has each registered backend's own."""
    from pipeline.render.registry import backends

    registered = tuple((name, r.model) for name, r in _REGISTERED.items())
    unregistered = _default_sections() - set(Settings.model_fields) - set(_REGISTERED)
    return _with_sections(
        tuple((b.name, b.settings) for b in backends().values() if b.settings is not None),
        registered,
        tuple(sorted(unregistered)),
    )


@functools.cache
def _with_sections(
    backend_sections: tuple[tuple[str, type[BackendSettings]], ...],
    registered: tuple[tuple[str, type[Section]], ...],
    unregistered: tuple[str, ...],
) -> type[Settings]:
    fields: dict[str, Any] = {}
    for name, model in backend_sections:
        try:
            fields[name] = (model, model())  # a section whose keys all have defaults may be left out
        except ValidationError:
            fields[name] = (model, ...)
    render = create_model("RenderSettings", __base__=RenderSettings, **fields)
    sections: dict[str, Any] = {name: (model, ...) for name, model in registered}
    sections.update({name: (dict[str, Any], Field(default_factory=dict)) for name in unregistered})
    return create_model("Settings", __base__=Settings, render=(render, ...), **sections)


def _move_registered_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Keys that moved into a registered section, read from where they were (with a warning)."""
    for name, registered in _REGISTERED.items():
        for old, key in registered.moved_from:
            where, _, old_key = old.partition(".")
            before = data.get(where)
            if isinstance(before, Mapping) and old_key in before:
                log.warning("%s has moved to %s.%s; please update your settings", old, name, key)
                data[where] = {k: v for k, v in before.items() if k != old_key}
                data[name] = {**data.get(name, {}), key: before[old_key]}
    return data


def _import_plugins(modules: object) -> list[str]:
    """Renderer backends from outside the project register themselves when imported, before the
    settings (which name them) are checked."""
    if isinstance(modules, str):
        modules = [m for m in modules.split(",") if m.strip()]
    if not isinstance(modules, list):
        raise ConfigError("render.plugins: a list of module names")
    for module in modules:
        try:
            importlib.import_module(str(module).strip())
        except ImportError as e:
            raise ConfigError(f"render.plugins: cannot import {module!r}: {e}") from None
    return [str(m).strip() for m in modules]


def settings_from_dump(data: dict[str, Any]) -> Settings:
    """Settings rebuilt from `settings.model_dump()` (how they reach another process)."""
    data = dict(data)
    if isinstance(data.get("render"), dict):
        data["render"] = dict(data["render"])
        data["render"]["plugins"] = _import_plugins(data["render"].get("plugins", []))
    return _settings_model().model_validate(data)


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the file at `path` (or $TALKTWIN_CONFIG), then env overrides; validated."""
    environ = os.environ if environ is None else environ
    with DEFAULT_CONFIG.open("rb") as f:
        data = tomllib.load(f)
    path = path or environ.get("TALKTWIN_CONFIG")
    if path:
        try:
            with Path(path).open("rb") as f:
                data = _merge(data, tomllib.load(f), "")
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
    data = _move_registered_keys(_merge(data, _env_overrides(environ), ""))
    if isinstance(data.get("render"), dict):
        data["render"]["plugins"] = _import_plugins(data["render"].get("plugins", []))
    try:
        return _settings_model().model_validate(data)
    except ValidationError as e:
        raise ConfigError(_problems(e)) from None
