"""What a Qualcomm NPU takes of .tflite files, by LiteRT's AOT compiler (partition only: seconds a file).

Per file: ops on the NPU / total, the number of NPU partitions (1 = nothing falls back to the CPU in
between), and every rejected op with the QNN validator's reason (grouped: same op, same reason).
Nothing is compiled and nothing runs: the partition step asks the QNN op validator about every op.

    python -m benchmarks.npu_partition FILE_OR_SET_DIR... --soc SM8650 [--json] [--record NAME]

A set directory stands for every file of its manifest. --json prints the results as JSON instead of
text; --record NAME also writes them to benchmarks/records/npu-NAME.json. --compile also compiles
each file (apply, at --opt-level, O3 is the compiler's default; pixel-space files take minutes) and
reports whether the compile passed and the compiler's reason when it did not; --timeout SECONDS
stops a compile that runs longer (full-size files at O1 may take tens of minutes).

Needs the QNN compiler libraries: pip install "sd2tflite[npu]" (see docs/compiling.md). Runs no
TensorFlow; no lock needed for partition runs (--compile at O3 is heavy: run it under the shared lock).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.records import RECORDS, write_record
from sd2tflite.core.errors import SD2TFLiteError
from sd2tflite.core.manifest import load_manifest, path_in_set
from sd2tflite.device.plugin import OPTIMIZATION_LEVELS, run_plugin
from sd2tflite.device.targets import parse_targets


def files_of(items: list[Path]) -> list[tuple[str, Path]]:
    """(label, path) per file; a set directory gives its manifest's files, labelled SET/FILE."""
    found = []
    for item in items:
        if item.is_dir():
            manifest = load_manifest(item)
            found.extend((f"{item.name}/{a.path}", path_in_set(item, a.path)) for a in manifest.artifacts)
        elif item.is_file():
            found.append((str(item), item))
        else:
            raise SD2TFLiteError(f"{item} is neither a .tflite file nor a set directory")
    return found


def measure(label: str, path: Path, target, compile_too: bool, level: str, timeout: float | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="sd2tflite-npu-bench-") as tmp:
        run = run_plugin("partition", path, Path(tmp) / "partitioned.tflite", target)
        row = {"file": label, "bytes": path.stat().st_size, "target": target.spec,
               "partition_seconds": round(run.seconds, 2)}
        if run.partition is None:
            row.update(partition_failed=run.failure or f"exit code {run.returncode}")
        else:
            row.update(run.partition.to_json())
        if compile_too:
            done = run_plugin("apply", path, Path(tmp) / "compiled.tflite", target, level, timeout=timeout)
            failure = done.failure
            if timeout is not None and done.log.endswith(f"stopped after {timeout:.0f} s"):
                failure = f"stopped after {timeout:g} s (--timeout), not finished"
            row.update(compile={"optimization_level": level, "passed": not failure,
                                "seconds": round(done.seconds, 1), "failure": failure or None})
    return row


def describe(row: dict) -> str:
    if "partition_failed" in row:
        return f"{row['file']}: partition failed: {row['partition_failed']}"
    lines = [f"{row['file']}: {row['npu_ops']}/{row['total_ops']} ops on the NPU, {row['partitions']} partition"
             f"{'' if row['partitions'] == 1 else 's'} ({row['partition_seconds']} s)"]
    for item in row["rejected"]:
        lines.append(f"    {item['op']} ×{item['count']}: {item['reason']}")
    if "compile" in row:
        c = row["compile"]
        verdict = "passed" if c["passed"] else f"FAILED: {c['failure']}"
        lines.append(f"    compile {c['optimization_level']}: {verdict} ({c['seconds']} s)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help=".tflite files or converted set directories")
    parser.add_argument("--soc", default="SM8650", help="Qualcomm SoC model (default SM8650)")
    parser.add_argument("--vendor", default="qualcomm", help="qualcomm (default), mediatek or google_tensor")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--record", default=None, metavar="NAME", help="also write benchmarks/records/npu-NAME.json")
    parser.add_argument("--compile", action="store_true", help="also compile each file (slow at O3)")
    parser.add_argument("--opt-level", default="O2", choices=OPTIMIZATION_LEVELS,
                        help="with --compile: the Qualcomm optimisation level (default O2, the fastest)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="with --compile: stop a file's compile after this long and record it as failed "
                             "(\"stopped after N s\"); the other files still run")
    args = parser.parse_args()
    try:
        target = parse_targets(f"{args.vendor}:{args.soc}")[0]
        rows = []
        for label, path in files_of(args.files):
            row = measure(label, path, target, args.compile, args.opt_level, args.timeout)
            rows.append(row)
            if not args.json:
                print(describe(row), flush=True)
    except SD2TFLiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
    if args.record:
        path = RECORDS / f"npu-{args.record}.json"
        write_record(path, {"target": target.spec, "files": rows})
        if not args.json:
            print(f"record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
