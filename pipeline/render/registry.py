"""Renderer backends by name: what `[render] backend = "..."` may say, and how each is built.

Every module in `pipeline/render/backends/` registers one backend when imported: its name, its own
settings section (`[render.<name>]`, a `BackendSettings` model), how to build it from the settings,
and how to remove what it keeps on disk about a photo. Adding a backend is that one module plus its
section in config/default.toml; the settings loader, the factory and `/forget` find it here.

This module and the backend modules stay free of torch and model code at import time (they import
those when building), because the settings loader imports them to know the sections.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import BackendSettings, Settings
    from pipeline.render.base import AvatarRenderer

BACKENDS_PACKAGE = "pipeline.render.backends"


@dataclass(frozen=True)
class Backend:
    """One registered renderer backend."""

    name: str
    # Construct the renderer from the settings (cheap checks only; build_renderer then calls load()).
    build: Callable[[Settings], AvatarRenderer]
    # Its own settings section, [render.<name>]; None when it has no settings of its own.
    settings: type[BackendSettings] | None = None
    # Remove what it keeps on disk about one photo, without loading a model: `/forget` calls this for
    # every registered backend, since a user's photo may have met a backend configured earlier.
    forget_cached: Callable[[Settings, bytes], None] | None = None
    # One line for the operator: what it is and what it needs.
    summary: str = ""
    # The model files the user brings, checked without building the renderer: (path, None when it is
    # usable, else why not). `models list` shows them.
    check_files: Callable[[Settings], list[tuple[Path, str | None]]] | None = None


_backends: dict[str, Backend] = {}
_discovered = False
_lock = threading.RLock()
# Renderers built in this process: `/forget` also drops what they hold in memory about the photo.
_live: weakref.WeakSet[AvatarRenderer] = weakref.WeakSet()


def register(backend: Backend) -> Backend:
    """Add a backend (called by its module at import). Names are unique and never a [render] key."""
    from pipeline.config import RenderSettings

    if not backend.name.isidentifier() or backend.name != backend.name.lower():
        raise ValueError(f"renderer name {backend.name!r} must be a lower-case identifier")
    if backend.name in RenderSettings.model_fields:
        raise ValueError(f"renderer name {backend.name!r} clashes with the [render] key of that name")
    with _lock:
        if backend.name in _backends and _backends[backend.name] != backend:
            raise ValueError(f"renderer {backend.name!r} is registered twice")
        _backends[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    """Remove a backend (for tests that register one of their own)."""
    with _lock:
        _backends.pop(name, None)


def backends() -> dict[str, Backend]:
    """Every registered backend by name, after importing the modules in pipeline/render/backends/."""
    global _discovered
    with _lock:
        if not _discovered:
            package = importlib.import_module(BACKENDS_PACKAGE)
            for module in pkgutil.iter_modules(package.__path__):
                if not module.name.startswith("_"):
                    importlib.import_module(f"{BACKENDS_PACKAGE}.{module.name}")
            _discovered = True
        return dict(sorted(_backends.items()))


def backend_names() -> list[str]:
    return list(backends())


def get_backend(name: str) -> Backend:
    """The backend called `name`; a ConfigError listing the known ones otherwise."""
    found = backends().get(name)
    if found is None:
        raise ConfigError(
            f"render.backend: unknown renderer {name!r}; known renderers: {', '.join(backends())}"
        )
    return found


def avatar_cache_dir(settings: Settings) -> Path:
    """Where backends cache per-photo data (landmarks, face boxes): <data_dir>/cache/avatars."""
    return settings.resolve(settings.paths.data_dir) / "cache" / "avatars"


def track(renderer: AvatarRenderer) -> None:
    """Remember a built renderer so that forget_photo reaches its in-memory caches (weakly held)."""
    _live.add(renderer)


def forget_photo(settings: Settings, image: bytes) -> None:
    """Drop everything derived from `image` that any renderer keeps: in the memory of the renderers
    this process built, and on disk for every registered backend."""
    for renderer in list(_live):
        renderer.forget(image)
    for backend in backends().values():
        if backend.forget_cached is not None:
            backend.forget_cached(settings, image)
