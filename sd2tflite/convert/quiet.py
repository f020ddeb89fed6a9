"""Keeps TensorFlow's native chatter off the terminal unless -v: the CLI process and the
conversion workers it spawns (which inherit the environment, not the CLI's state)."""

from __future__ import annotations

import os
import warnings

from ..core.quiet import QUIET_ENV, native_stderr_muted


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
