"""XNNPACK's packed weights in a file instead of anonymous memory. Imports no TensorFlow.

XNNPACK repacks every weight into its own layout when a model loads: with the classic Interpreter
that is an anonymous copy as large as the weights, next to the mapped .tflite (for the full-size
fp32 UNet, 3.4 GB the OS can never drop). LiteRT's CompiledModel can give XNNPACK a weight cache
file instead: the first load packs into the file, later loads map it (file-backed pages, which the
OS can drop and read again) and then never read the .tflite's weights at all.

What ai-edge-litert 2.3.0 does (LiteRT's tflite/delegates/xnnpack/weight_cache.cc):
- `CpuOptions.xnnpack_weight_cache_path` is a FILE path, although its docstring says folder: a
  folder fails to open (EISDIR), XNNPACK logs an error and packs into anonymous memory as before.
- The classic `Interpreter` cannot take a cache: its default XNNPACK delegate is built with
  default options, and the package exports no XNNPACK symbol to build another.
- A file that loads is mapped read-only. One that does not (missing, half written, another
  XNNPACK) is truncated and rebuilt in place. So sd2tflite never hands XNNPACK a file that another
  process may be mapping unless it is complete: each build goes to a temp name beside the target
  and is renamed over it once the header says it is complete (two processes building at once each
  write their own, the last rename wins, both are equal). The name carries the .tflite's sha256
  and the LiteRT version and CPU features that decide the packing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import struct
from pathlib import Path

from ..core.fsutil import TMP_MARK, cache_root, temp_path

SUFFIX = ".xnnpack"
_HEADER = struct.Struct("<QQQB")  # XNNPackCacheHeader: version, buffer_list_offset, buffer_list_size, stale


def default_cache_dir() -> Path:
    """Where `generate` keeps the cache files: $SD2TFLITE_CACHE/xnnpack (default ~/.cache/sd2tflite/xnnpack).
    Any file there can be deleted; it is written again on the next run."""
    return cache_root() / "xnnpack"


def _stack_key() -> str:
    """LiteRT's version and the CPU's features: what XNNPACK's packed layout depends on."""
    try:
        from importlib.metadata import version

        litert = version("ai-edge-litert")
    except Exception:  # noqa: BLE001 - an unknown version only costs a rebuild
        litert = "unknown"
    features = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                features = line
                break
    return hashlib.sha256(f"{litert}|{platform.machine()}|{features}".encode()).hexdigest()[:12]


def cache_file(model_sha256: str, folder: Path) -> Path:
    return Path(folder) / f"{model_sha256}-{_stack_key()}{SUFFIX}"


def is_complete(path: Path) -> bool:
    """True when XNNPACK finished writing `path`: its header is written last, with a version, and
    names a buffer list that ends inside the file; no stale flag."""
    try:
        with open(path, "rb") as f:
            header = f.read(_HEADER.size)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(header) < _HEADER.size:
        return False
    version, offset, length, stale = _HEADER.unpack(header)
    return version != 0 and not stale and length > 0 and offset + length <= size


def remove_leftovers(target: Path) -> None:
    """Temp files of builds that were interrupted (their process is gone)."""
    for leftover in target.parent.glob(f".{target.name}{TMP_MARK}*"):
        pid = leftover.name.rsplit(TMP_MARK, 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build_path(target: Path, model_bytes: int) -> Path | None:
    """A fresh temp path to build `target` in, or None when its folder is not writable or lacks
    room for about the model's size (XNNPACK aborts the process when a write into the cache
    fails). Then the model runs without a cache: that costs memory, not correctness."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        if shutil.disk_usage(target.parent).free < 1.1 * model_bytes + (256 << 20):
            return None
        tmp = temp_path(target)
        tmp.unlink(missing_ok=True)
        tmp.touch()  # proves the folder is writable before LiteRT is asked to write there
        tmp.unlink()
    except OSError:
        return None
    return tmp


def publish(tmp: Path, target: Path) -> bool:
    """Renames a complete build over `target` (fsynced first); removes an incomplete one."""
    try:
        if is_complete(tmp):
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
            return True
    except OSError:
        pass
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
    return False
