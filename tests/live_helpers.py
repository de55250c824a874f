"""Shared by the live tests (tests/test_live.py, tests/test_live_teardown.py): the stack a module's
live sessions run on, an HTTP poster for /v1/live, and what a live session leaves behind."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bots.http.app import HttpOptions, create_app
from bots.jobs import JobStore
from bots.live import close_hub
from bots.runtime import Components
from bots.service import ReplyService
from memory.store import MemoryStore
from pipeline.config import load_settings
from pipeline.orchestrator import ReplyPipeline
from tests.helpers import ScriptedChat


def live_stack(data: Path, answer: str, recognizer: Any = None) -> Iterator[tuple[Components, ReplyPipeline]]:
    """Components over an in-process pipeline for live tests (a module-scoped fixture's body): Piper,
    warp at 256 px, a scripted chat model answering `answer`, Whisper unless `recognizer` is given,
    one live session at a time."""
    from pipeline.render.factory import build_renderer
    from pipeline.tts.factory import build_synthesizer

    settings = load_settings(
        environ={
            "TALKTWIN_PATHS__DATA_DIR": str(data),
            "TALKTWIN_RENDER__SIZE": "256",
            "TALKTWIN_LIVE__SIZE": "256",
            "TALKTWIN_TTS__BACKEND": "piper",  # offline: no edge-tts attempt
            "TALKTWIN_LIVE__MAX_SESSIONS": "1",
        }
    )
    if recognizer is None:
        from pipeline.asr.whisper import WhisperRecognizer

        recognizer = WhisperRecognizer(str(settings.resolve(settings.asr.model)))
    memory = MemoryStore.from_settings(settings)
    pipeline = ReplyPipeline(
        settings,
        recognizer=recognizer,
        chat_model=ScriptedChat(answer),
        synthesizer=build_synthesizer(settings),
        renderer=build_renderer(settings),
        context=memory,
    )
    jobs = JobStore(memory.engine, Path(data) / "jobs")
    components = Components(pipeline, memory, memory.knowledge, ReplyService(max_pending=1), jobs)
    yield components, pipeline
    close_hub(pipeline)
    components.close()


def poster(components: Components, headers: dict[str, str] | None = None):
    """An async `post(body) -> (status, JSON)` to /v1/live of an app over `components`."""
    app = create_app(components, HttpOptions())

    async def post(body: dict) -> tuple[int, dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            r = await http.post("/v1/live", json=body, headers=headers or {})
            retry = {"retry-after": r.headers["retry-after"]} if "retry-after" in r.headers else {}
            return r.status_code, r.json() | retry

    return post


def live_threads() -> list[str]:
    """Threads a live session starts: the conversation's three and aiortc's media decoders."""
    return [t.name for t in threading.enumerate() if t.name.startswith("live-") and t.name != "live-loop"] + [
        t.name for t in threading.enumerate() if t.name.endswith("-decoder")
    ]


async def until(check, timeout: float) -> None:
    for _ in range(int(timeout * 10)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("condition not met")


# ---------------------------------------------------------------------- what a process holds (Linux)
def udp_sockets() -> int:
    """UDP sockets this process has open (ICE's: one or more per peer connection)."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        inodes.update(line.split()[9] for line in lines if len(line.split()) > 9)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            count += 1
    return count


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def child_processes() -> list[str]:
    """This process's live children ("pid command"), e.g. an ffmpeg left running."""
    me = str(os.getpid())
    children = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if fields[1] == me and fields[0] != "Z":
            children.append(f"{pid} {stat[stat.index('(') + 1 : stat.rindex(')')]}")
    return sorted(children)


def rss_mb() -> float:
    """Resident memory in MB, after handing freed heap back to the system where glibc allows: what a
    leak grows, less what the allocator merely keeps. (glibc gives each new thread's heap an arena of
    its own, up to 8 per core, and an arena's first use can add tens of MB once: a step, not a leak.)"""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


MALLINFO2 = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")


class _MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2, all ten fields (it is returned by value)
    _fields_ = [(name, ctypes.c_size_t) for name in (*MALLINFO2, "keepcost")]


def heap_in_use_mb() -> float | None:
    """What malloc has handed out and not had back, in MB (glibc's mallinfo2: all arenas, mmapped
    blocks included; numpy's arrays, the codecs', the models' runtimes'): a leak's measure without
    the memory the allocator keeps for later. None where glibc's mallinfo2 is missing."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return (info.uordblks + info.hblkhd) / 1e6


def alive(*types: type) -> dict[str, int]:
    """How many objects of each of `types` (exactly) are still alive, after a full collection."""
    gc.collect()
    counts = Counter(type(obj) for obj in gc.get_objects())
    return {t.__name__: counts[t] for t in types}
