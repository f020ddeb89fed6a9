"""Where a converted component's time goes, per kernel: each file (UNet part) of the component runs
under Linux `perf` and its samples are grouped by the kernel that took them (XNNPACK micro-kernels,
TFLite's optimized and reference kernels, ...). LiteRT's own op profiler lives in its C++ benchmark
tool, which the pip wheel does not ship; the wheel's kernels keep their symbols, so perf names them.

    python -m benchmarks.profile_ops bench-out/sd-v1-int8-512 --tag v1-512-int8
    python -m benchmarks.profile_ops SET --component decoder --calls 2

One child process loads every file of the component (LiteRT Interpreter with XNNPACK, as `bench`'s
per-part figures), runs the chain once on bench's seeded inputs (each part fed what the earlier
parts produce), then calls each file `--calls` times while `perf record` samples only that window.
Writes benchmarks/records/op-profile-TAG.json and .md. Needs `perf` and perf_event_paranoid <= 2.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.records import RECORDS, ROOT, invocation, write_record
from sd2tflite.bench.measure import machine
from sd2tflite.core.manifest import load_manifest

CHILD = """
import json, sys, time
from collections import Counter
from pathlib import Path
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from sd2tflite.bench.worker import bench_inputs
from sd2tflite.core.manifest import load_manifest, path_in_set

directory, component, threads, calls = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
manifest = load_manifest(directory)
values = dict(bench_inputs(manifest.model_dims, 0)[component])
runs = []
for part in manifest.parts_of(component):
    interpreter = Interpreter(model_path=str(path_in_set(directory, part.path)), num_threads=threads)
    interpreter.allocate_tensors()
    # After the delegate is applied, each DELEGATE node is one XNNPACK partition; every other node
    # in the execution plan runs on TFLite's own kernels.
    ops = interpreter._get_ops_details()
    runner = interpreter.get_signature_runner(part.signature_key)
    feed = {s.name: np.asarray(values[s.name], dtype=s.dtype) for s in part.inputs}
    values.update(runner(**feed))
    runs.append((part, runner, feed, Counter(o["op_name"] for o in ops)))
for part, runner, feed, ops in runs:
    print(json.dumps({"ready": part.path}), flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    for _ in range(calls):
        runner(**feed)
    seconds = (time.perf_counter() - start) / calls
    print(json.dumps({"file": part.path, "seconds_per_call": seconds, "delegate_partitions": ops.pop("DELEGATE", 0),
                      "bytes": part.bytes}), flush=True)
    sys.stdin.readline()
"""

# (family, pattern) in order: the first match names a symbol's kernel.
FAMILIES = (
    ("XNNPACK {0}", re.compile(r"^xnn_(.+?)_(?:minmax_|ukernel)")),
    ("XNNPACK (other)", re.compile(r"^xnn|xnnpack", re.I)),
    ("TFLite reference {0}", re.compile(r"tflite::reference_(?:integer_)?ops::(?:\w+::)*?([A-Z]\w+)")),
    ("TFLite optimized {0}", re.compile(r"tflite::optimized_(?:integer_)?ops::(?:\w+::)*?([A-Z]\w+)")),
    ("TFLite requantize (MultiplyByQuantizedMultiplier)", re.compile(r"MultiplyByQuantizedMultiplier")),
    ("TFLite builtin {0}", re.compile(r"tflite::ops::builtin::(\w+)::")),
    ("ruy GEMM (TFLite's own matmul)", re.compile(r"^ruy::")),
    ("thread pool", re.compile(r"pthreadpool|thread_main|cpuinfo")),
    ("memcpy / memset", re.compile(r"mem(move|cpy|set)")),
)


def family_of(symbol: str) -> str:
    """A perf symbol ("[.] name" for user space, "[k] name" for the kernel) -> its kernel family."""
    if symbol.startswith("[k]"):
        return "OS kernel (page faults, scheduling)"
    symbol = symbol.removeprefix("[.]").strip()
    for label, pattern in FAMILIES:
        match = pattern.search(symbol)
        if match:
            return label.format(*match.groups())
    return "other"


def perf_symbols(data: Path) -> list[tuple[float, str]]:
    """(percent of samples, symbol) from `perf report`, self time."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "symbol", "--stdio"],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\[[.k]\])\s+(.*?)\s*$", line)
        if match:
            rows.append((float(match.group(1)), f"{match.group(2)} {match.group(3)}".strip()))
    return rows


def profile(directory: Path, component: str, threads: int, calls: int, frequency: int) -> list[dict]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(directory), component, str(threads), str(calls)],
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    files, work = [], Path(tempfile.mkdtemp(prefix="sd2tflite-perf-"))
    try:
        for line in child.stdout:
            ready = json.loads(line)
            data = work / "perf.data"
            perf = subprocess.Popen(["perf", "record", "-q", "-F", str(frequency), "-p", str(child.pid),
                                     "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # perf attaches before the calls start
            child.stdin.write("\n")
            child.stdin.flush()
            result = json.loads(child.stdout.readline())
            perf.send_signal(signal.SIGINT)
            perf.wait()
            assert result["file"] == ready["ready"]
            symbols = perf_symbols(data)
            families = Counter()
            for percent, symbol in symbols:
                families[family_of(symbol)] += percent
            result["kernels"] = [{"kernel": k, "percent": round(v, 2)} for k, v in families.most_common()]
            result["top_symbols"] = [{"symbol": s, "percent": p} for p, s in symbols[:12]]
            files.append(result)
            print(f"{result['file']}: {result['seconds_per_call']:.2f} s per call; "
                  + ", ".join(f"{k['kernel']} {k['percent']:.1f}%" for k in result["kernels"][:4]), flush=True)
            child.stdin.write("\n")
            child.stdin.flush()
    finally:
        child.kill()
        child.wait()
        shutil.rmtree(work, ignore_errors=True)
    if not files:
        raise SystemExit(f"profiling {directory} ({component}) produced nothing: does it have that component?")
    return files


def markdown(report: dict, share: float = 1.0) -> str:
    lines = [f"**{report['set']}** ({report['quant']}, {report['component']}, {report['threads']} threads, "
             f"random weights): kernels with at least {share:g} % of a file's samples",
             "", "| file | s per call | XNNPACK partitions | kernel | share of samples |", "|---|---:|---:|---|---:|"]
    for f in report["files"]:
        for i, k in enumerate(k for k in f["kernels"] if k["percent"] >= share):
            head = [f["file"], f"{f['seconds_per_call']:.2f}", str(f["delegate_partitions"])] if i == 0 else ["", "", ""]
            lines.append("| " + " | ".join([*head, k["kernel"], f"{k['percent']:.1f} %"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set", type=Path)
    parser.add_argument("--component", default="diffusion")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=1, help="timed calls per file under perf")
    parser.add_argument("--frequency", type=int, default=499, help="perf samples per second")
    parser.add_argument("--tag", default=None, help="result file suffix (default: the set's folder name)")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed: install linux-tools (perf) to profile kernels")
    manifest = load_manifest(args.set)
    report = {"set": args.set.name, "quant": manifest.quant, "component": args.component, "threads": args.threads,
              "calls": args.calls, "machine": machine(), "versions": manifest.versions,
              "command": invocation(),
              "files": profile(args.set, args.component, args.threads, args.calls, args.frequency)}
    tag = args.tag or args.set.name
    RECORDS.mkdir(parents=True, exist_ok=True)
    write_record(RECORDS / f"op-profile-{tag}.json", report)
    table = markdown(report)
    (RECORDS / f"op-profile-{tag}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
