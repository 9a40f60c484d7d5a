"""Ending a command-line process at once, once its work is durable and its output is out.

The interpreter's teardown after a command that loaded onnxruntime and numpy (their modules,
thread pools, C++ destructors) takes tens of milliseconds of a short command's time: ~35 ms
of a small bundle's `satchel-agent install`, about as much of `satchel bundle build`. The
console entry points skip it for commands whose results are on disk and durable when they
return: every write of theirs is fsync'd and renamed (a power cut at any moment, which ends a
process more abruptly than this, leaves a consistent state), no other thread is working, and
logging's flush is the only exit handler registered. Never called from a library function
(tests run commands in-process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys


def exit_now(code: int) -> None:
    """Flush stdout, stderr and the logs, then end the process with `code`."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    logging.shutdown()
    os._exit(code)
