"""Files: atomic writes (the one temp-name rule), sha256 of a file, sd2tflite's cache folder.

Every file sd2tflite writes goes through `atomic_write`: a temp file beside the target, named
`.<target name>.tmp-<pid>[suffix]`, fsynced and renamed over the target, removed on failure. A
reader never sees a partial file, and `is_temp_name` recognises leftovers of interrupted runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError

TMP_MARK = ".tmp-"


def temp_path(target: Path, suffix: str = "") -> Path:
    """The temp name for `target`; `suffix` for writers that insist on one (np.save adds .npy)."""
    target = Path(target)
    return target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}{suffix}")


def is_temp_name(name: str) -> bool:
    """True for a name `temp_path` makes (any process)."""
    return name.startswith(".") and TMP_MARK in name


@contextlib.contextmanager
def atomic_write(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yields a temp path to write; on success it is fsynced and renamed over `target`. An OSError
    while writing becomes one OutputError naming the file (the block should only write)."""
    target = Path(target)
    tmp = temp_path(target, suffix)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(f"cannot write {target} ({exc.strerror or type(exc).__name__}): check that its folder "
                          "is writable and has free space, or choose another path") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with atomic_write(target) as tmp:
        tmp.write_bytes(data)


def _finite(value):
    """JSON has no Infinity / NaN (strict parsers reject them): write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json_atomic(target: Path, data) -> None:
    with atomic_write(target) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    """sd2tflite's cache (vocabulary, calibration recordings, file hashes): $SD2TFLITE_CACHE or
    ~/.cache/sd2tflite."""
    root = os.environ.get("SD2TFLITE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sd2tflite")
    return Path(root)
