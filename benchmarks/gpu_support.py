"""Which files of converted sets Android's GPU delegate takes whole, by TFLite's model analyzer: the
GPU column of `sd2tflite verify` (sd2tflite/verify/gpu.py) without the Keras comparisons, as a
Markdown table.

The analyzer of TensorFlow 2.18 and later, and ai-edge-litert's, answers "looks compatible" for any
model (its GPU checks were taken out: tensorflow/tensorflow#77042). TensorFlow 2.17's still checks:
give a Python that has it.

    python3.11 -m venv ~/tf217 && ~/tf217/bin/pip install tensorflow-cpu==2.17.1
    python -m benchmarks.gpu_support SET_DIR [SET_DIR ...] --gpu-analyzer ~/tf217/bin/python [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.records import write_record
from sd2tflite.core.errors import SD2TFLiteError
from sd2tflite.core.manifest import load_manifest
from sd2tflite.verify import gpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", type=Path)
    parser.add_argument("--gpu-analyzer", default=None, help="a Python with TensorFlow 2.17 (default: this one's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-file results")
    args = parser.parse_args()
    rows, record = [], {}
    for directory in args.sets:
        try:
            manifest = load_manifest(directory)
        except SD2TFLiteError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        results = gpu.analyze_set(directory, manifest, python=args.gpu_analyzer)
        record[str(directory)] = {"family": manifest.family, "quant": manifest.quant, "dims": manifest.dims,
                                  **gpu.summary_json(results)}
        size = f"{manifest.dims.get('img_width')}x{manifest.dims.get('img_height')}"
        for r in results:
            verdict = {"supported": "yes", "not supported": "**no**"}.get(r.status, "unknown")
            blockers = "; ".join(f"{op} ×{count}: {reason}" for op, count, reason in r.grouped()) or r.reason
            rows.append(f"| {manifest.family} {manifest.quant} {size} | {r.path} | {r.ops:,} | {verdict} | "
                        f"{r.unsupported_ops or ''} | {blockers} |")
    runtime = next((f["runtime"] for s in record.values() for f in s["files"] if f["runtime"]), None)
    print(f"GPU delegate support by TFLite {runtime or '(unknown version)'}'s model analyzer\n")
    print("| set | file | ops | whole on GPU | ops refused | refused operators: why |")
    print("|---|---|---:|---|---:|---|")
    print("\n".join(rows))
    if args.json:
        write_record(args.json, {"runtime": runtime, "sets": record})
    return 0


if __name__ == "__main__":
    sys.exit(main())
