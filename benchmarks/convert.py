"""Full-size conversion benchmark: seconds, peak RSS (whole process tree) and bytes per file.

    python -m benchmarks.convert --quant fp32 --quant dynamic [--model v1] [--img 512]
    python -m benchmarks.convert --quant dynamic --tag budget8GB -- --memory-budget 8GB

Runs `sd2tflite convert --weights random:0` (same shapes and sizes as the released weights), or
--weights CHECKPOINT, as a subprocess, samples the RSS of it and all its workers, and writes
benchmarks/records/convert-MODEL-IMG-QUANT[-TAG].json plus a Markdown table on stdout. Never run two
of these at once on a 24 GB machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.records import RECORDS, ROOT, repo_relative, write_record
from sd2tflite.bench.measure import PeakTreeRSS
from sd2tflite.core.manifest import load_manifest
from sd2tflite.core.precisions import RECIPES


def run_one(model: str, quant: str, img: int, out_root: Path, extra: list[str], tag: str = "",
            weights: str = "random:0") -> dict:
    out_dir = out_root / f"sd-{model}-{quant}-{img}{'-' + tag if tag else ''}"
    cmd = [
        sys.executable, "-m", "sd2tflite.cli", "convert", "--model", model, "--quant", quant,
        "--weights", weights, "--img-height", str(img), "--img-width", str(img),
        "-o", repo_relative(out_dir), "--force", "-q", *extra,  # relative: the record names no machine path
    ]
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    with PeakTreeRSS(proc.pid) as rss:
        code = proc.wait()
    seconds = time.monotonic() - start
    if code != 0:
        raise SystemExit(f"conversion failed with exit code {code}")
    manifest = load_manifest(out_dir)
    bpw = RECIPES[quant].bytes_per_weight
    files = [
        {
            "file": a.path,
            "bytes": a.bytes,
            "params": a.params,
            "bytes_over_params_x_bpw": round(a.bytes / (a.params * bpw), 4),
            "seconds": a.conversion_seconds,
            "peak_rss_bytes": a.peak_rss_bytes,
        }
        for a in manifest.artifacts
    ]
    return {
        "model": model,
        "quant": quant,
        "img": img,
        "weights": weights,
        "command": " ".join(cmd[2:]),
        "total_seconds": round(seconds, 1),
        "peak_tree_rss_bytes": rss.peak,
        "files": files,
        # The plan the run was made for (parts, budget, estimated converter RSS; a joined UNet's check).
        "split": manifest.split,
        "versions": manifest.versions,
    }


def markdown(result: dict) -> str:
    gb = 1e9
    lines = [
        f"**{result['model']} {result['quant']} {result['img']}×{result['img']}** (random weights, "
        f"--weights {Path(result.get('weights', 'random:0')).name}): "
        f"{result['total_seconds']:.0f} s total, peak RSS of the whole process tree "
        f"{result['peak_tree_rss_bytes'] / gb:.2f} GB",
        "",
        "| file | bytes | parameters | bytes / (params × bytes per weight) | seconds | worker peak RSS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for f in result["files"]:
        lines.append(
            f"| {f['file']} | {f['bytes']:,} | {f['params']:,} | {f['bytes_over_params_x_bpw']:.3f} "
            f"| {f['seconds']:.1f} | {f['peak_rss_bytes'] / gb:.2f} GB |"
        )
    joined = result.get("split", {}).get("joined", {})
    if "seconds" in joined:
        lines.append(f"\n{joined['file']} joined from {len(result['split']['parts'])} parts in {joined['seconds']:.1f} s "
                     f"(max |difference| to the chained parts {joined['max_abs_diff_vs_parts']:.3g})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="v1")
    parser.add_argument("--quant", action="append", default=None)
    parser.add_argument("--img", type=int, default=512)
    parser.add_argument("--out", default=str(ROOT / "bench-out"),
                        help="folder for the converted sets (default: bench-out/ here, which git ignores)")
    parser.add_argument("--tag", default="", help="suffix for the result file (e.g. the extra options)")
    parser.add_argument("--weights", default="random:0",
                        help="what to convert: random:0 (keras-cv's shapes) or a checkpoint, e.g. the file "
                             "tests/fixtures/make_full_size_checkpoint.py writes (SD 1.5's names and shapes, random values)")
    parser.add_argument("extra", nargs="*", help="extra convert options after --")
    args = parser.parse_args()
    RECORDS.mkdir(parents=True, exist_ok=True)
    for quant in args.quant or ["fp32", "dynamic"]:
        result = run_one(args.model, quant, args.img, Path(args.out), args.extra, args.tag, args.weights)
        suffix = f"-{args.tag}" if args.tag else ""
        path = RECORDS / f"convert-{args.model}-{args.img}-{quant}{suffix}.json"
        write_record(path, result)
        print(markdown(result), flush=True)
        print(f"(written to {path.relative_to(ROOT)})\n", flush=True)


if __name__ == "__main__":
    main()
