"""Reply threads run at a lower CPU priority, and so does what they start (ffmpeg, OpenMP threads)."""

import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bots.core.priority import lower_this_thread


def nice_of(tid: int) -> int:
    stat = Path(f"/proc/{os.getpid()}/task/{tid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[16])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux per-thread priorities")
def test_a_reply_thread_and_what_it_starts_run_below_the_rest():
    base = nice_of(threading.get_native_id())
    own_nice = ["sh", "-c", "cut -d' ' -f19 /proc/self/stat"]
    with ThreadPoolExecutor(1, initializer=lower_this_thread, initargs=(10,)) as replies:
        tid, child = replies.submit(
            lambda: (
                threading.get_native_id(),
                subprocess.run(own_nice, capture_output=True, text=True),
            )
        ).result()
        assert nice_of(tid) == min(19, base + 10)
        assert int(child.stdout) == min(19, base + 10)  # ffmpeg and friends inherit it
    assert nice_of(threading.get_native_id()) == base  # the rest of the process is untouched
    with ThreadPoolExecutor(1, initializer=lower_this_thread, initargs=(0,)) as same:
        assert nice_of(same.submit(threading.get_native_id).result()) == base
