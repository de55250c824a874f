"""CPU priority of reply work, so that a live conversation comes first.

Replies and live conversations share the process that holds the models (and its 2 cores, on a small
machine). A live answer is waited for by someone listening, a reply by someone reading a chat, so
the threads that make replies run at a lower CPU priority (`reply.nice`): when both want the cores
the scheduler gives them to the live session, and replies get all of the CPU whenever no live
session needs it. Linux keeps a nice value per thread, and what a thread starts inherits it: the
OpenMP worker threads of torch and CTranslate2 the reply thread starts, and its ffmpeg encoders.
The chat model's server process is shared and first come, first served (one answer at a time).
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)


def lower_this_thread(nice: int) -> None:
    """Lower the calling thread's CPU priority by `nice` (0 leaves it; at most to 19, the lowest).
    For a thread pool's `initializer`. A platform without per-thread priorities is left as it is."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as e:
        log.warning("could not lower the reply thread's CPU priority: %s", e)
