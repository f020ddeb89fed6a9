"""Measurements: peak resident memory of a process tree, sampled from /proc (Linux), timing
of repeated calls, the machine a figure was taken on.

`ru_maxrss` only covers one process at a time; a conversion spreads over worker processes, so the
honest figure for "how much RAM does this need" is the peak of the sum over the whole tree.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            text = (task / "children").read_text().split()
            kids.extend(int(k) for k in text)
    except OSError:
        pass
    return kids


def _rss_split(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of one process: file-backed pages (mapped .tflite
    files) are what the OS can drop under pressure; anonymous ones are what gets a process killed."""
    anon = file = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) * 1024
            elif line.startswith(("RssFile:", "RssShmem:")):
                file += int(line.split()[1]) * 1024
    except OSError:
        pass
    return anon, file


def tree_rss_split(root: int) -> tuple[int, int]:
    """Current (anonymous, file-backed) RSS of `root` and all its descendants."""
    anon = file = 0
    stack, seen = [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        a, f = _rss_split(pid)
        anon, file = anon + a, file + f
        stack.extend(_children(pid))
    return anon, file


def tree_rss_bytes(root: int) -> int:
    """Current RSS of `root` and all its descendants."""
    return sum(tree_rss_split(root))


class PeakTreeRSS:
    """Samples the RSS of a process tree in a background thread; `.peak` is the maximum seen."""

    def __init__(self, root: int | None = None, interval: float = 0.2):
        self.root = root or os.getpid()
        self.interval = interval
        self.peak = 0
        self.peak_anon = 0  # the largest anonymous RSS seen (not necessarily at the same moment as `peak`)
        self.peak_file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _take(self) -> None:
        anon, file = tree_rss_split(self.root)
        self.peak = max(self.peak, anon + file)
        self.peak_anon, self.peak_file = max(self.peak_anon, anon), max(self.peak_file, file)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._take()
            time.sleep(self.interval)

    def __enter__(self) -> "PeakTreeRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._take()


def measure(fn: Callable[[], object], repeats: int, warmup: int) -> dict:
    """First call (tracing, XLA compilation, lazy allocation), `warmup` untimed calls, then
    `repeats` timed ones."""
    first = seconds(fn)
    for _ in range(warmup):
        fn()
    times = [seconds(fn) for _ in range(repeats)]
    return {"first_seconds": first, **summary(times)}


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(times: list[float]) -> dict:
    import numpy as np

    return {"median_seconds": float(np.median(times)), "p90_seconds": float(np.percentile(times, 90)),
            "times": [round(t, 6) for t in times]}


class CallLog:
    """Start times of component calls during one image, to cut it into UNet steps."""

    def __init__(self):
        self.calls: list[tuple[str, float]] = []

    def wrap(self, name: str, fn: Callable) -> Callable:
        def logged(*args, **kwargs):
            self.calls.append((name, time.perf_counter()))
            return fn(*args, **kwargs)

        return logged

    def step_seconds(self) -> list[float]:
        """A step runs from its first UNet call (of two: unconditional, conditional) to the next
        step's, the last one to the decoder call: 2 UNet calls plus the update."""
        unet = [t for name, t in self.calls if name == "diffusion"]
        decode = [t for name, t in self.calls if name == "decoder"]
        marks = unet[0::2] + decode[:1]
        return [b - a for a, b in zip(marks, marks[1:])]


def machine() -> dict:
    import platform

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {"cpu_count": os.cpu_count() or 1, "ram_bytes": int(ram), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version()}
