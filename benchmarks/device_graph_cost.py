"""CPU cost of the device-ready graphs (sd2tflite/convert/device_layers.py): the tiny UNet converted
twice per precision, once as convert writes it (device graph) and once traced through Keras' own layers
(GroupNormalization, LayerNormalization, UpSampling2D, keras-cv's blocks; only the export attention,
which both graphs share), then timed on LiteRT's CPU runtime in the same run, calls interleaved.

    python -m benchmarks.device_graph_cost --work WORK_DIR [--quant fp32,dynamic,int8] [--calls 30]
        [--threads 2] [--out benchmarks/records/device-graph-cost-tiny.json]

The Keras-layer graph is made only here (convert has no switch for it: verify and every file use the
device graph). Sets already in WORK_DIR are reused. Per precision and graph: file bytes, ops, median
and fastest ms per UNet call, and the largest difference between the two graphs' outputs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from benchmarks.records import RECORDS, write_record  # noqa: E402

GRAPHS = ("device", "keras")


def convert_unet(out: Path, quant: str, graph: str) -> None:
    """The tiny UNet (one file) in `quant`, as convert writes it or through Keras' own layers."""
    from sd2tflite.convert import attention, export
    from sd2tflite.convert.orchestrate import convert
    from sd2tflite.convert.request import ConvertOptions, build_request

    if (out / "manifest.json").is_file():
        return
    device_graph = export.device_graph
    if graph == "keras":  # the export attention alone: no device_layers formulation
        export.device_graph = attention.export_attention
    try:  # no export cache: the Keras-layer SavedModel must not be stored under the device graph's key
        convert(build_request(ConvertOptions(family="tiny", quant=quant, img_height=128, img_width=128,
                                             out_dir=str(out), isolate=False, components="diffusion",
                                             unet_parts=1, calibration="synthetic", calibration_samples=8)))
    finally:
        export.device_graph = device_graph


def op_count(path: Path) -> int:
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(path.read_bytes(), 0)
    return sum(model.Subgraphs(i).OperatorsLength() for i in range(model.SubgraphsLength()))


def measure(sets: dict[str, Path], calls: int, threads: int) -> dict[str, dict]:
    """ms per UNet call for each set, calls interleaved (round-robin) after two warm-up calls each."""
    from sd2tflite.core.manifest import load_manifest
    from sd2tflite.runtime.litert import load_component
    from sd2tflite.runtime.samples import synthetic_samples

    runners = {name: load_component(d, "diffusion", load_manifest(d), threads) for name, d in sets.items()}
    dims = load_manifest(next(iter(sets.values()))).model_dims
    sample = synthetic_samples("diffusion", dims, 1, 5)[0]
    outputs = {}
    for name, runner in runners.items():
        for _ in range(2):
            outputs[name] = runner(**sample)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(calls):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner(**sample)
            times[name].append((time.perf_counter() - start) * 1e3)
    rows = {}
    for name, d in sets.items():
        manifest = load_manifest(d)
        (artifact,) = manifest.artifacts
        rows[name] = {"bytes": artifact.bytes, "ops": op_count(d / artifact.path),
                      "median_ms": round(statistics.median(times[name]), 2), "min_ms": round(min(times[name]), 2),
                      "calls": calls, "output": {k: np.asarray(v) for k, v in outputs[name].items()}}
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the converted UNets (reused)")
    parser.add_argument("--quant", default="fp32,dynamic,int8")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RECORDS / "device-graph-cost-tiny.json")
    args = parser.parse_args()
    quants = [q.strip() for q in args.quant.split(",") if q.strip()]
    from sd2tflite.core.precisions import RECIPES

    unknown = [q for q in quants if q not in RECIPES]
    if unknown or not 1 <= args.calls <= 10_000:
        print(f"error: unknown precision {unknown[0]!r}" if unknown else "error: --calls must be 1..10000",
              file=sys.stderr)
        return 2
    report = {"model": "tiny (trained), 128x128, UNet in one file", "threads": args.threads, "precisions": {}}
    for quant in quants:
        sets = {g: args.work / f"{quant}-{g}" for g in GRAPHS}
        for graph, out in sets.items():
            convert_unet(out, quant, graph)
        rows = measure(sets, args.calls, args.threads)
        device, keras = rows["device"].pop("output"), rows["keras"].pop("output")
        diff = max(float(np.max(np.abs(device[k].astype(np.float64) - keras[k]))) for k in device)
        ratio = rows["device"]["median_ms"] / rows["keras"]["median_ms"]
        report["precisions"][quant] = {**rows, "device_over_keras": round(ratio, 3), "max_abs_output_diff": diff}
        print(f"{quant:8s} device {rows['device']['median_ms']:8.2f} ms ({rows['device']['ops']} ops)  keras "
              f"{rows['keras']['median_ms']:8.2f} ms ({rows['keras']['ops']} ops)  ratio {ratio:.3f}  "
              f"max |diff| {diff:.3g}", flush=True)
    write_record(args.out, report)
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
