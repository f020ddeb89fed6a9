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


def run_child(args: list[str], input: str | None = None, stop_seconds: float = 30.0,
              **popen) -> tuple[int, str, str]:
    """`subprocess.run(args, input=input, capture_output=True, text=True)` for a child that may
    itself start processes or write files: when this process is interrupted (Ctrl-C, SIGTERM,
    any exception) the child gets SIGTERM and `stop_seconds` to run its own cleanups before
    SIGKILL, instead of subprocess.run's immediate SIGKILL, which would orphan its children."""
    import subprocess

    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)
    try:
        stdout, stderr = proc.communicate(input)
    except BaseException:
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(stop_seconds)
        except BaseException:  # a second interrupt, or the child does not stop: no more waiting
            proc.kill()
            proc.wait()
            raise
        raise
    return proc.returncode, stdout, stderr


def interruptible(fn):
    """fn() run so that Ctrl-C and SIGTERM reach the caller at once. Network libraries wait in
    places a signal cannot break (huggingface_hub joins its upload threads, each blocked on a
    socket, before an exception leaves it): fn runs in a daemon thread and the main thread waits
    for it in short, interruptible joins. Its result or exception is the caller's."""
    if threading.current_thread() is not threading.main_thread():
        return fn()
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as it is
            box["error"] = exc

    worker = threading.Thread(target=target, name="sd2tflite-interruptible", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if "error" in box:
        raise box.pop("error")
    return box["result"]
