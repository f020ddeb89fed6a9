"""Where the accelerators place each converted set's ops: LiteRT's GPU accelerator (LiteRT.js WebGPU in
headless Chromium) and a Qualcomm NPU (LiteRT AOT partitioning), per component file.

    python -m benchmarks.device_placement SET_DIR... [--soc SM8650] [--record NAME] [--json]

Per file: ops on the GPU / total with the accelerator's refusals, ops on the NPU / total, NPU
partitions and the QNN validator's reasons. --record NAME writes
benchmarks/records/device-placement-NAME.json. Either side reads "not measured" with the reason
when its tool is missing (Chromium and LiteRT.js: docs/browser.md; the QNN libraries: the `npu`
extra). Runs no TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.records import RECORDS, write_record
from sd2tflite.core.manifest import load_manifest, path_in_set


def set_files(set_dir: Path) -> list[tuple[str, Path]]:
    manifest = load_manifest(set_dir)
    return [(f"{set_dir.name}/{a.path}", path_in_set(set_dir, a.path)) for a in manifest.artifacts]


def npu_rows(files: list[tuple[str, Path]], soc: str) -> dict[str, dict]:
    from sd2tflite.device.plugin import DeviceSdkError, check_sdk, run_plugin
    from sd2tflite.device.targets import parse_targets

    target = parse_targets(f"qualcomm:{soc}")[0]
    try:
        check_sdk(target)
    except DeviceSdkError as exc:
        return {label: {"measured": False, "reason": str(exc)} for label, _ in files}
    rows = {}
    with tempfile.TemporaryDirectory(prefix="sd2tflite-placement-") as tmp:
        for label, path in files:
            run = run_plugin("partition", path, Path(tmp) / "partitioned.tflite", target)
            rows[label] = ({"measured": True, "target": target.spec, **run.partition.to_json()} if run.partition
                           else {"measured": False, "reason": run.failure})
    return rows


def gpu_rows(files: list[tuple[str, Path]], litertjs: str | None, chromium: str | None) -> dict[str, dict]:
    try:
        from sd2tflite.serve.placement import measure_gpu_placement
    except ImportError as exc:
        return {label: {"measured": False, "reason": f"no GPU placement tool: {exc}"} for label, _ in files}
    results = measure_gpu_placement([p for _, p in files], chromium=chromium, litertjs=litertjs)
    return {label: r.to_json() for (label, _), r in zip(files, results)}


def describe(label: str, gpu: dict, npu: dict) -> str:
    if gpu.get("measured"):
        g = f"GPU {gpu['gpu_ops']:,}/{gpu['total_ops']:,}"
        if gpu.get("rejected"):
            g += " (" + "; ".join(f"{k} ×{n}" for k, n in gpu["rejected"].items()) + ")"
    else:
        g = f"GPU not measured ({gpu.get('reason', '')})"
    if npu.get("measured"):
        n = f"NPU {npu['npu_ops']:,}/{npu['total_ops']:,}, {npu['partitions']} partition(s)"
        if npu.get("rejected"):
            n += " (" + "; ".join(f"{r['op']} ×{r['count']}: {r['reason']}" for r in npu["rejected"]) + ")"
    else:
        n = f"NPU not measured ({npu.get('reason', '')})"
    return f"{label}: {g}; {n}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", type=Path, help="converted set directories")
    parser.add_argument("--soc", default="SM8650", help="Qualcomm SoC model (default SM8650)")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU side (e.g. files over LiteRT.js' 2 GiB heap)")
    parser.add_argument("--litertjs", default=None, help="folder holding node_modules/@litertjs")
    parser.add_argument("--chromium", default=None, help="Chromium executable")
    parser.add_argument("--record", default=None, help="also write benchmarks/records/device-placement-NAME.json")
    parser.add_argument("--note", default=None, help="a note stored in the record (e.g. which code made the sets)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    rows = []
    for set_dir in args.sets:
        manifest = load_manifest(set_dir)
        files = set_files(set_dir)
        npu = npu_rows(files, args.soc)
        gpu = ({label: {"measured": False, "reason": "--no-gpu"} for label, _ in files} if args.no_gpu
               else gpu_rows(files, args.litertjs, args.chromium))
        for (label, path), artifact in zip(files, manifest.artifacts):
            rows.append({"file": label, "component": artifact.component, "quant": manifest.quant,
                         "family": manifest.family, "bytes": path.stat().st_size, "gpu": gpu[label], "npu": npu[label]})
    if args.record:
        write_record(RECORDS / f"device-placement-{args.record}.json",
                     {**({"note": args.note} if args.note else {}), "files": rows})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for row in rows:
            print(describe(row["file"], row["gpu"], row["npu"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
