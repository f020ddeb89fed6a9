"""SIGTERM handled like Ctrl-C. `timeout`, systemd, Docker and CI stop a process with SIGTERM,
whose default action ends it at once: no `finally` block runs, so locks, work folders and temp
files stay behind. Inside `terminate_as_interrupt()` SIGTERM raises `Terminated` (a
KeyboardInterrupt) in the main thread instead, and every cleanup written for Ctrl-C runs."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; the exit code is 128 + 15."""

    exit_code = 128 + signal.SIGTERM


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the cleanup short
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
