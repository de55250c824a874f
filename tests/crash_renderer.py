"""A renderer backend that crashes its process natively (os.abort) mid-reply, for the crash tests.

Loaded with `TALKTWIN_RENDER__PLUGINS=tests.crash_renderer` and `TALKTWIN_RENDER__BACKEND=crash_test`.
It draws like the warp renderer until the file named by $TALKTWIN_TEST_CRASH_FILE holds a plan:
"once" aborts the next reply (and empties the file), "always" aborts every reply.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.render.backends.warp import _build, _forget_cached
from pipeline.render.registry import Backend, backend_names, register

CRASH_FILE_ENV = "TALKTWIN_TEST_CRASH_FILE"


def _crash_if_planned() -> None:
    plan_file = os.environ.get(CRASH_FILE_ENV)
    if not plan_file or not Path(plan_file).exists():
        return
    plan = Path(plan_file).read_text().strip()
    if plan == "once":
        Path(plan_file).write_text("")
    if plan in ("once", "always"):
        os.abort()  # SIGABRT, as a failed assertion in native code does


class _CrashingSession:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def feed(self, *args: Any, **kwargs: Any):
        _crash_if_planned()
        return self.inner.feed(*args, **kwargs)

    def finish(self):
        return self.inner.finish()


def _build_crashing(settings: Any) -> Any:
    renderer = _build(settings)
    session = renderer.session
    renderer.session = lambda *a, **k: _CrashingSession(session(*a, **k))  # type: ignore[method-assign]
    return renderer


if "crash_test" not in backend_names():
    register(
        Backend(
            "crash_test",
            build=_build_crashing,
            forget_cached=_forget_cached,
            summary="test only: warp that aborts its process when told to",
        )
    )
