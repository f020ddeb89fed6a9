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
- XNNPACK trusts a cache file that loads: bytes altered in place change the picture, and a file
  that fails its write midway (a quota, a full disk) aborts the process (SIGABRT) with no message.
  So every build runs in a child process (its failure is a note, the run goes on without the
  cache, the temp file is removed), and a finished build's sha256 is recorded beside it
  (`<name>.sha256`: the digest and the file's name). Before a cache file is used its content is checked against that record
  (read again whenever its inode, size, mtime or ctime moved, as integrity.file_sha256 does); a
  file without a record or that does not match it is rebuilt, never used.
- A cache folder that cannot take the file (not writable, not enough room, a write failing) is a
  note: the run continues without the cache (more memory, same pictures).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ..core.fsutil import TMP_MARK, cache_root, temp_path, write_bytes_atomic

SUFFIX = ".xnnpack"
RECORD_SUFFIX = ".sha256"  # the finished build's sha256, beside it
UNUSABLE = "unusable"  # a record that says: this model's outputs change with a cache; run it without
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


def record_path(target: Path) -> Path:
    return Path(target).with_name(Path(target).name + RECORD_SUFFIX)


def problem(target: Path) -> str | None:
    """None when `target` is a complete build whose content is the sha256 recorded when it was
    built; else why it cannot be used ("missing" when there is no file)."""
    from .integrity import file_sha256

    try:
        if not target.exists():
            return UNUSABLE if _says_unusable(target) else "missing"
    except OSError:  # a folder name over the OS limit: build_path says why
        return "missing"
    try:
        recorded, _, name = record_path(target).read_text().strip().partition(" ")
    except (OSError, UnicodeDecodeError):
        recorded, name = "", ""
    if recorded == UNUSABLE and name == target.name:
        return UNUSABLE
    if not recorded:
        return "has no sha256 record (not written by this sd2tflite, or its build was interrupted)"
    if name != target.name:  # another model's file and record, copied under this name
        return "has a record written for another file"
    if not is_complete(target):
        return "is incomplete (its header is not XNNPACK's finished one)"
    try:
        digest = file_sha256(target, reuse=True)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if digest != recorded:
        return f"was modified after it was built (sha256 {digest[:12]}…, recorded {recorded[:12]}…)"
    return None


def _says_unusable(target: Path) -> bool:
    try:
        return record_path(target).read_text().split() == [UNUSABLE, target.name]
    except (OSError, UnicodeDecodeError):
        return False


def remove(target: Path) -> None:
    for path in (target, record_path(target)):
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


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


def build_path(target: Path, model_bytes: int) -> tuple[Path | None, str]:
    """A fresh temp path to build `target` in, or (None, why) when its folder is not writable or
    lacks room for about the model's size. Then the model runs without a cache: that costs
    memory, not correctness."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        free = shutil.disk_usage(target.parent).free
        if free < 1.1 * model_bytes + (256 << 20):
            return None, f"has {free / 2**20:.0f} MiB free, the file needs about {model_bytes / 2**20:.0f} MiB"
        tmp = temp_path(target)
        tmp.unlink(missing_ok=True)
        tmp.touch()  # proves the folder is writable before LiteRT is asked to write there
        tmp.unlink()
    except OSError as exc:
        return None, f"is not writable ({exc.strerror or type(exc).__name__})"
    return tmp, ""


def build(model: Path, tmp: Path, threads: int) -> str | None:
    """Packs `model`'s weights into `tmp` in a child process (XNNPACK aborts the process whose
    cache write fails); None when `tmp` is a complete build, else why not. `tmp` is removed on
    failure and on any interruption."""
    done = False
    try:
        proc = subprocess.run([sys.executable, "-m", __name__, str(model), str(tmp), str(threads)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
        if proc.returncode == 4:
            return UNUSABLE
        if proc.returncode != 0:
            lines = [line for line in (proc.stderr or "").splitlines() if line.strip()]
            if proc.returncode < 0:
                import signal

                why = f"the build was killed by {signal.Signals(-proc.returncode).name}"
            else:
                why = f"the build failed ({lines[-1].strip()[:160] if lines else f'exit {proc.returncode}'})"
            return why + " (a quota or a disk filling up?)"
        if not is_complete(tmp):
            return "the build did not finish its file"
        done = True
        return None
    finally:
        if not done:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def publish(tmp: Path, target: Path) -> str | None:
    """Records a complete build's sha256 and renames it over `target` (fsynced first); None on
    success, else why not (the temp file is removed)."""
    from ..core.fsutil import sha256_file

    try:
        digest = sha256_file(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):
            record_path(target).unlink(missing_ok=True)  # no window where an old record names new bytes
        os.replace(tmp, target)
        write_bytes_atomic(record_path(target), f"{digest} {target.name}\n".encode())
        return None
    except Exception as exc:  # noqa: BLE001 - OSError or OutputError: the run goes on without the file
        remove(target)
        return f"cannot be written ({getattr(exc, 'strerror', None) or exc})"
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def prepare(model: Path, model_sha256: str, folder: Path, threads: int,
            note: Callable[[str], None]) -> Path | None:
    """The checked cache file for `model` (built first when missing or not matching its record),
    or None when the folder cannot take it; `note` says why (and that the run goes on without)."""
    target = cache_file(model_sha256, folder)
    found = problem(target)
    if found is None:
        return target
    if found == UNUSABLE:
        return None
    if found != "missing":
        note(f"weight cache file {target} {found}: rebuilt")
        remove(target)
    tmp, why = build_path(target, model.stat().st_size)
    if tmp is None:
        note(f"weight cache folder {target.parent} {why}: running without it (more memory, same "
             "pictures); free space, set SD2TFLITE_CACHE to another folder, or pass --no-weight-cache")
        return None
    failed = build(model, tmp, threads)
    if failed == UNUSABLE:
        note(f"weight cache: XNNPACK's cached weights change {model.name}'s outputs; it runs without the cache "
             "(more memory, right pictures)")
        with contextlib.suppress(Exception):
            write_bytes_atomic(record_path(target), f"{UNUSABLE} {target.name}\n".encode())
        return None
    failed = failed or publish(tmp, target)
    if failed:
        note(f"weight cache file {target}: {failed}; running {model.name} without it (more memory, same "
             "pictures); free space, set SD2TFLITE_CACHE to another folder, or pass --no-weight-cache")
        return None
    return target


def _run_once(model: str, environment, cache: str | None, threads: int) -> dict:
    """Every signature of `model` called once on fixed inputs (normal noise, integer zeros); its
    outputs. Some kernels (dynamic-range int8) pack their weights at the first call, so after this
    the cache file holds every packed weight."""
    import numpy as np
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import CpuOptions, Options

    cpu = CpuOptions(num_threads=threads, **({"xnnpack_weight_cache_path": cache} if cache else {}))
    compiled = CompiledModel.from_file(model, environment=environment,
                                       options=Options(HardwareAccelerator.CPU, cpu_options=cpu))
    rng = np.random.default_rng(0)
    results = {}
    for key in compiled.get_signature_list():
        inputs = compiled.get_input_tensor_details(key)
        outputs = {name: (tuple(int(d) for d in spec["shape"]), np.dtype(spec["dtype"]))
                   for name, spec in compiled.get_output_tensor_details(key).items()}
        feeds = {name: compiled.create_input_buffer_by_name(key, name) for name in inputs}
        for name, spec in inputs.items():
            shape, dtype = [int(d) for d in spec["shape"]], np.dtype(spec["dtype"])
            value = rng.standard_normal(shape) if dtype.kind == "f" else np.zeros(shape)
            feeds[name].write(np.ascontiguousarray(value, dtype=dtype))
        buffers = {name: compiled.create_output_buffer_by_name(key, name) for name in outputs}
        compiled.run_by_name(key, feeds, buffers)
        for name, (shape, dtype) in outputs.items():
            results[(key, name)] = buffers[name].read(int(np.prod(shape)), dtype).reshape(shape).copy()
    del compiled
    return results


def _build_main(argv: list[str]) -> int:
    """The child process of `build`: the model run once without a cache, then once packing into
    `tmp` (XNNPACK writes the header last); exit 4 when the two differ in any bit (then the cache
    would change pictures: XNNPACK's cache path has had such bugs on some graphs)."""
    import numpy as np
    from ai_edge_litert.compiled_model import Environment

    model, tmp, threads = argv
    environment = Environment.create()
    plain = _run_once(model, environment, None, int(threads))
    cached = _run_once(model, environment, tmp, int(threads))
    if not is_complete(Path(tmp)):
        return 3
    differ = [name for key, name in plain if not np.array_equal(plain[key, name], cached[key, name])]
    if differ:
        print(f"XNNPACK's cached weights change the output {differ[0]}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(_build_main(sys.argv[1:]))
