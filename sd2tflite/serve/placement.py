"""Where LiteRT's GPU accelerator places a file's ops, measured: LiteRT.js (WebGPU) compiles the
file in headless Chromium and its own partitioning log is counted. No TensorFlow.

The count comes from the accelerator's partition line ("selected N ops, from a total of M ops")
and its list of refused operators, not from `isFullyAccelerated()`, which said true for a model
with 178 CPU ops. Headless Chromium's WebGPU adapter is SwiftShader (a CPU implementation):
placement is the GPU accelerator's real decision, speed is not a GPU's.

Where Chromium or LiteRT.js is missing, each file is "not measured" with the reason, never a guess.
"""

from __future__ import annotations

import json
import queue
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import SD2TFLiteError, UsageError
from .browser import find_chromium, find_litertjs, headless_chromium
from .server import PageServer, Reply

last_answer: dict | None = None  # the page's raw answer of the last measurement (its log lines: debugging)
DEFAULT_TIMEOUT = 900.0  # seconds for the whole page; SwiftShader compiles a v1 UNet part slowly


@dataclass(frozen=True)
class GpuPlacement:
    """One file: ops on the GPU accelerator out of all ops, and the refused operators
    grouped by the accelerator's reason ("ADD: Tensor dimensions must be less than 5." -> how many
    ops it listed for it; it lists an (operator, reason, tensor) once). `measured` False: `reason` says why (no browser, no LiteRT.js, a failure)."""

    path: str
    measured: bool
    gpu_ops: int = 0
    total_ops: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)  # constant tensors the accelerator could not lay out
    reason: str = ""
    fully_accelerated_claim: bool | None = None  # what isFullyAccelerated() said (not trusted)
    seconds: float = 0.0
    adapter: str = ""  # the WebGPU adapter ("SwiftShader" headless)

    @property
    def share(self) -> float:
        return self.gpu_ops / self.total_ops if self.total_ops else 0.0

    @property
    def summary(self) -> str:
        if not self.measured:
            return f"not measured: {self.reason}"
        return f"{self.gpu_ops:,} of {self.total_ops:,} ops on the GPU ({100 * self.share:.1f} %)"

    def to_json(self) -> dict:
        return {**asdict(self), "share": self.share}


_SUMMARY = re.compile(r"(\d+) operations? will run on the GPU, and the remaining (\d+) operations? will run on the CPU")
_REJECTED_HEADER = "Following operations are not supported by GPU delegate:"
_REJECTED = re.compile(r"^([A-Z][A-Z0-9_]*):(?:\s+(.*))?$")  # the reason may be empty ("CUSTOM:")
NO_REASON = "(no reason logged)"
_CONST_DIMS = re.compile(r"dims: (\[[0-9,\s]*\])\s*\}? isn't (\S+?)-convertible")
_NOT_FULLY = "not fully compiled for webgpu"


def _reason(text: str) -> str:
    """The accelerator's reason without the tensor name it appends ("... less than 5. a/b/mul_2")."""
    text = " ".join(text.split())
    head, _, last = text.rpartition(" ")
    return head if head.endswith(".") and not last.endswith(".") else text


def parse_gpu_log(lines: list[str]) -> dict:
    """What one compile's log says: {"gpu_ops", "cpu_ops"} from the accelerator's summary line (None
    when it logged none: nothing refused), "rejected" ({"OP: reason": listed ops}), "notes" (constant
    tensors it could not lay out, by shape) and "partial" (LiteRT.js said the model is split)."""
    text = "\n".join(lines).splitlines()
    rejected: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    gpu = cpu = None
    listing = False
    for line in text:
        line = line.strip()
        m = _SUMMARY.search(line)
        if m:
            gpu, cpu = int(m.group(1)), int(m.group(2))
            listing = False
            continue
        if _REJECTED_HEADER in line:
            listing = True
            continue
        m = _REJECTED.match(line)
        if listing and m:
            rejected[f"{m.group(1)}: {_reason(m.group(2) or '') or NO_REASON}"] += 1
            continue
        listing = listing and not line
    joined = " ".join(" ".join(lines).split())
    for m in _CONST_DIMS.finditer(joined):
        notes[f"constant tensor {m.group(1).replace(' ', '')} isn't {m.group(2).split('::')[-1]}-convertible"] += 1
    return {"gpu_ops": gpu, "cpu_ops": cpu,
            "rejected": dict(sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0]))),
            "notes": dict(notes), "partial": _NOT_FULLY in joined.lower()}


def count_ops(path: Path) -> int:
    """Operators in a .tflite file's first subgraph (its signature's graph), read from the
    flatbuffer directly (Model.subgraphs[0].operators): no TensorFlow."""
    data = memoryview(Path(path).read_bytes())

    def u32(at: int) -> int:
        return int.from_bytes(data[at:at + 4], "little")

    def field(table: int, index: int) -> int | None:
        vtable = table - int.from_bytes(data[table:table + 4], "little", signed=True)
        vsize = int.from_bytes(data[vtable:vtable + 2], "little")
        slot = 4 + 2 * index
        if slot >= vsize:
            return None
        offset = int.from_bytes(data[vtable + slot:vtable + slot + 2], "little")
        return table + offset if offset else None

    model = u32(0)
    subgraphs_at = field(model, 2)
    if subgraphs_at is None:
        return 0
    vector = subgraphs_at + u32(subgraphs_at)
    if u32(vector) == 0:
        return 0
    first = vector + 4 + u32(vector + 4)
    operators_at = field(first, 3)
    if operators_at is None:
        return 0
    return u32(operators_at + u32(operators_at))


def _not_measured(paths: list[Path], reason: str) -> list[GpuPlacement]:
    return [GpuPlacement(str(p), False, reason=reason) for p in paths]


def measure_gpu_placement(paths: list[str | Path], chromium: str | Path | None = None,
                          litertjs: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT) -> list[GpuPlacement]:
    """One GpuPlacement per file, in order. Never raises for a missing browser or LiteRT.js
    (the files are "not measured: <why>"); a missing file is a UsageError."""
    files = [Path(p) for p in paths]
    for path in files:
        if not path.is_file():
            raise UsageError(f"{path} is not a file: pass .tflite files")
    try:
        find_chromium(chromium)
        js = find_litertjs(litertjs)
    except SD2TFLiteError as exc:
        return _not_measured(files, str(exc))

    results: queue.Queue = queue.Queue()
    server = PageServer(js)
    server.index = "placement.html"
    names = [f"/files/{i}/{p.name}" for i, p in enumerate(files)]
    server.files.update(dict(zip(names, files)))
    server.gets["/api/files"] = lambda q: Reply.json([{"name": str(p), "url": u} for p, u in zip(files, names)])

    def collect(query, body: bytes) -> Reply:
        try:
            results.put(json.loads(body))
        except ValueError:
            results.put({"error": "the page posted no JSON"})
        return Reply.json({"ok": True})

    server.posts["/api/result"] = collect
    started = time.monotonic()
    with server:
        try:
            with headless_chromium(server.url, chromium, webgpu=True) as browser:
                answer = None
                while answer is None:
                    try:
                        answer = results.get(timeout=1.0)
                    except queue.Empty:
                        if browser.poll() is not None:
                            return _not_measured(files, f"Chromium exited ({browser.returncode}) before the page answered")
                        if time.monotonic() - started > timeout:
                            return _not_measured(files, f"the page did not answer within {timeout:.0f} s")
        except SD2TFLiteError as exc:
            return _not_measured(files, str(exc))
    global last_answer
    last_answer = answer
    if "error" in answer:
        return _not_measured(files, " ".join(str(answer["error"]).split())[:300])
    adapter = answer.get("adapter", {})
    adapter_name = " ".join(x for x in (adapter.get("vendor"), adapter.get("architecture"), adapter.get("description")) if x)
    out = []
    for path, entry in zip(files, answer.get("results", [])):
        log = parse_gpu_log(entry.get("log", []))
        base = dict(path=str(path), seconds=round(float(entry.get("seconds", 0.0)), 2), adapter=adapter_name,
                    fully_accelerated_claim=entry.get("isFullyAccelerated"), rejected=log["rejected"],
                    notes=log["notes"])
        total = count_ops(path)
        if entry.get("error"):
            out.append(GpuPlacement(measured=False, reason=f"LiteRT.js failed to compile it: {entry['error']}", **base))
        elif entry.get("allocationFailed"):
            out.append(GpuPlacement(measured=False, reason="LiteRT.js logged \"Failed to allocate tensors\" "
                                    "(the file is too large for the browser's 2 GiB wasm heap)", **base))
        elif log["gpu_ops"] is not None:
            out.append(GpuPlacement(measured=True, gpu_ops=log["gpu_ops"], total_ops=log["gpu_ops"] + log["cpu_ops"],
                                    **base))
        elif not log["partial"] and not log["rejected"]:
            out.append(GpuPlacement(measured=True, gpu_ops=total, total_ops=total, **base))  # nothing refused
        else:
            out.append(GpuPlacement(measured=False, reason="the GPU accelerator refused ops but logged no count "
                                    "(another LiteRT.js version?)", **base))
    return out + _not_measured(files[len(out):], "the page returned no result for it")
