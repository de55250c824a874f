"""Model servers (the chat model's llama.cpp) run as children; a crashed one is started again."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bots.core.priority import lower_this_thread
from pipeline.llm.server_process import ServerProcess
from tests.test_priority import nice_of as thread_nice


def nice_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux per-thread priorities")
def test_a_server_restarted_from_a_reply_thread_keeps_the_normal_priority():
    base = nice_of(os.getpid())
    server = ServerProcess("tests.health_server", [], start_timeout_s=30)
    try:
        server.ensure_running()
        first = server.pid
        assert first is not None and nice_of(first) == base
        server.kill()  # as after a crash: the next reply starts a new one, from its own thread
        with ThreadPoolExecutor(1, initializer=lower_this_thread, initargs=(10,)) as replies:
            url = replies.submit(server.ensure_running).result()
            reply_thread_nice = replies.submit(lambda: thread_nice(threading.get_native_id())).result()
        assert reply_thread_nice == min(19, base + 10)
        assert server.pid not in (None, first) and server.starts == 2 and url.startswith("http://127.0.0.1:")
        assert nice_of(server.pid) == base  # it serves live conversations too
    finally:
        server.close()
    assert not server.running()
