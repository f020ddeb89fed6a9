"""Native (C++) output kept off the terminal: TensorFlow's and LiteRT's start-up lines write to
file descriptor 2 directly, past Python's logging. The CLI sets QUIET_ENV; spawned workers and
bench cases inherit it."""

from __future__ import annotations

import contextlib
import os

QUIET_ENV = "SD2TFLITE_QUIET"


@contextlib.contextmanager
def native_stderr_muted(always: bool = False):
    """Points file descriptor 2 at /dev/null while the block runs, when quiet (or `always`): C++
    code writes there directly (the quantizer's `fully_quantize: ...` line). Python exceptions
    still propagate, and are printed after the descriptor is restored."""
    if not (always or os.environ.get(QUIET_ENV)):
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
