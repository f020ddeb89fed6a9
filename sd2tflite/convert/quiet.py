"""Keeps TensorFlow's native chatter off the terminal unless -v: the CLI process and the
conversion workers it spawns (which inherit the environment, not the CLI's state)."""

from __future__ import annotations

import contextlib
import os
import warnings

QUIET_ENV = "SD2TFLITE_QUIET"  # set by the CLI without -v; read by spawned workers


def quiet_tensorflow(verbose: bool) -> None:
    """Must run before TensorFlow is imported."""
    if verbose:
        os.environ.pop(QUIET_ENV, None)
        return
    os.environ[QUIET_ENV] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # workers' warnings (e.g. tf.lite.Interpreter's deprecation)
    warnings.filterwarnings("ignore")
    _import_tensorflow_muted()


def quiet_worker() -> None:
    """ProcessPoolExecutor initializer: a spawned worker is as quiet as the CLI that spawned it."""
    if os.environ.get(QUIET_ENV):
        warnings.filterwarnings("ignore")
        _import_tensorflow_muted()


def _import_tensorflow_muted() -> None:
    # TensorFlow's start-up lines (absl, oneDNN) ignore TF_CPP_MIN_LOG_LEVEL.
    with native_stderr_muted():
        import tensorflow  # noqa: F401


@contextlib.contextmanager
def native_stderr_muted():
    """Points file descriptor 2 at /dev/null while the block runs, when quiet: C++ code writes
    there directly (the quantizer's `fully_quantize: ...` line). Python exceptions still
    propagate, and are printed after the descriptor is restored."""
    if not os.environ.get(QUIET_ENV):
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
