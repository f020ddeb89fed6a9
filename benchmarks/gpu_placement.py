"""Where LiteRT's GPU accelerator places each file's ops: LiteRT.js (WebGPU) in headless Chromium.

    python -m benchmarks.gpu_placement FILE_OR_SET... [--json] [--record NAME] [--litertjs DIR] [--chromium PATH]

A set folder stands for the files its manifest lists (not the NPU copies under npu/). Prints ops on the GPU / total and the refused operators
grouped by the accelerator's reason; --json prints the list as JSON; --record NAME writes
benchmarks/records/NAME.json. Needs Chromium and LiteRT.js (docs/browser.md); without them every
file is "not measured" and the exit code is 1. Headless WebGPU is SwiftShader: the placement is the
accelerator's real decision, the speed is not a GPU's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sd2tflite.core.manifest import COMPILED_FOLDER, load_manifest
from sd2tflite.serve.placement import measure_gpu_placement

from .records import RECORDS, write_record


def expand(paths: list[str]) -> list[Path]:
    """Files as given; a set folder stands for the files its manifest lists, a folder without one
    for its .tflite files, never the NPU-compiled copies under npu/ (the GPU does not run those)."""
    files = []
    for p in map(Path, paths):
        if not p.is_dir():
            files.append(p)
        elif (p / "manifest.json").is_file():
            files += [p / a.path for a in load_manifest(p).artifacts]
        else:
            files += sorted(f for f in p.rglob("*.tflite") if COMPILED_FOLDER not in f.relative_to(p).parts)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help=".tflite files or set folders")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--record", default=None, help="also write benchmarks/records/NAME.json")
    parser.add_argument("--litertjs", default=None, help="folder holding node_modules/@litertjs")
    parser.add_argument("--chromium", default=None, help="Chromium executable")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for all files")
    args = parser.parse_args(argv)
    files = expand(args.paths)
    if not files:
        parser.error("no .tflite files in the given paths")
    results = measure_gpu_placement(files, chromium=args.chromium, litertjs=args.litertjs, timeout=args.timeout)
    payload = [r.to_json() for r in results]
    if args.record:
        write_record(RECORDS / f"{args.record}.json", {"placements": payload})
    if args.json:
        print(json.dumps(payload, indent=1))
    else:
        for r in results:
            print(f"{r.path}: {r.summary}")
            for reason, count in r.rejected.items():
                print(f"    {count:4d}  {reason}")
            for note, count in r.notes.items():
                print(f"    {count:4d}  ({note})")
    return 0 if all(r.measured for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
