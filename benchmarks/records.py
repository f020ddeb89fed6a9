"""Where benchmark records go and the header each one carries: the date, the commit, the machine,
the command that made it and its own path (the index in benchmarks/README.md lists the same)."""

from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
from pathlib import Path

from sd2tflite.core.fsutil import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RECORDS = Path(__file__).resolve().parent / "records"


def commit() -> str | None:
    """The checked-out commit's short hash, with "+changes" when tracked files differ from it; None
    outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if changed else "")


def machine_summary() -> str:
    """One line, e.g. "2-core AMD EPYC (AVX-512), 25.3 GB RAM, no GPU"."""
    cpu, avx512 = "CPU", False
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and cpu == "CPU":
            cpu = value.strip()
        elif key.strip() == "flags":
            avx512 = "avx512f" in value.split()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9 if hasattr(os, "sysconf") else 0.0
    gpu = "a GPU (not used)" if any(Path("/dev").glob("nvidia[0-9]*")) else "no GPU"
    return f"{os.cpu_count() or 1}-core {cpu}{' (AVX-512)' if avx512 else ''}, {ram:.1f} GB RAM, {gpu}"


def invocation() -> str:
    """This process's command line as run from the repository root (`python -m benchmarks.NAME ...`
    for a benchmark module)."""
    script = Path(sys.argv[0]).resolve()
    if script.parent == Path(__file__).resolve().parent:
        head = ["python", "-m", f"benchmarks.{script.stem}"]
    else:
        head = ["python", repo_relative(script)]
    return shlex.join([*head, *sys.argv[1:]])


def header(path: Path) -> dict:
    return {"date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(), "commit": commit(),
            "machine": machine_summary(), "command": invocation(), "file": repo_relative(path)}


def write_record(path: Path, payload: dict) -> None:
    """`payload` as JSON at `path`, the header first (an earlier header in `payload` is replaced)."""
    write_json_atomic(path, {"record": header(path), **{k: v for k, v in payload.items() if k != "record"}})


def repo_relative(path: Path) -> str:
    """A path inside the repository relative to its root (what records show), any other absolute."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)
