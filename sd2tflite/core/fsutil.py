"""Files: atomic writes (the one temp-name rule), sha256 of a file, sd2tflite's cache folder.

Every file sd2tflite writes goes through `atomic_write`: a temp file beside the target, named
`.<target name>.tmp-<pid>[suffix]`, fsynced and renamed over the target, removed on failure. A
reader never sees a partial file, and `is_temp_name` recognises leftovers of interrupted runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputDirError, OutputError

TMP_MARK = ".tmp-"
LOCK_NAME = ".sd2tflite-lock"  # one writer per set folder: convert and compile take the same lock


@contextlib.contextmanager
def folder_lock(directory: Path, what: str, fix: str) -> Iterator[None]:
    """Holds `directory` for one writer (`what`, e.g. "convert"): a second one is refused, naming the
    process that holds it, with `fix` as the way out. An flock, so the kernel releases it when the
    holder dies (kill -9 included): a crashed run leaves no stale lock. The lock file (holding the
    pid) is removed on the way out."""
    path = Path(directory) / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write into {directory} ({exc.strerror}): {fix}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)  # the lock file is the holder's: left in place
            raise OutputDirError(f"{directory} is being written by another sd2tflite {what} (process {holder}): "
                                 f"wait for it to finish, or {fix}") from None
        try:  # the holder before us may have removed the file between our open and our lock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)  # releases the lock


def temp_path(target: Path, suffix: str = "") -> Path:
    """The temp name for `target`; `suffix` for writers that insist on one (np.save adds .npy)."""
    target = Path(target)
    return target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}{suffix}")


def is_temp_name(name: str) -> bool:
    """True for a name `temp_path` makes (any process)."""
    return name.startswith(".") and TMP_MARK in name


class DiscardWrite(Exception):
    """Raised inside an `atomic_write` block whose result must not land (e.g. a compile that failed
    after writing): the temp file is removed, `target` stays as it was, and the block ends quietly."""


@contextlib.contextmanager
def atomic_write(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yields a temp path to write; on success it is fsynced and renamed over `target`; on
    DiscardWrite it is dropped. An OSError while writing becomes one OutputError naming the file
    (the block should only write)."""
    target = Path(target)
    tmp = temp_path(target, suffix)
    try:
        try:
            yield tmp
        except DiscardWrite:
            return
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
