"""The README's one table (and picture) from bench reports written by benchmarks/generate.py.

    python -m benchmarks.summary benchmarks/records/bench-v1-512.json \
        --plot benchmarks/records/bench-v1-512-summary.png

A row per image size and backend (LiteRT per precision, Keras eager, Keras XLA): file sizes,
median UNet call, UNet step and image, median call of the other components, the image run's
peak RSS, the step against both Keras modes (medians from the same report), and the conversion
cost (the `convert` cases benchmarks/generate.py folded in). Every figure is copied from the reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sd2tflite.bench.report import validate_bench_json

KERAS = {"keras": "Keras eager", "keras-xla": "Keras XLA"}
PRECISIONS = ["fp32", "fp16", "dynamic", "int8"]


def rows(report: dict) -> list[dict]:
    """One dict per benchmarked backend of one report (one image size)."""
    medians = {c["backend"]: {s["name"]: s for s in c["stages"]} for c in report["cases"] if c["backend"] in KERAS}
    conversions = {c["quant"]: c for c in report["cases"] if c["backend"] == "convert"}
    found = []
    for case in report["cases"]:
        if case["backend"] == "convert":
            continue
        stages = {s["name"]: s for s in case["stages"]}
        dims = case["dims"]
        row = {
            "size": f"{dims['img_width']}×{dims['img_height']}",
            "what": f"LiteRT {case['quant']}" if case["backend"] == "litert" else KERAS[case["backend"]],
            "order": (PRECISIONS.index(case["quant"]) if case["quant"] in PRECISIONS else 9)
            if case["backend"] == "litert" else 10 + list(KERAS).index(case["backend"]),
            "parts": sum(1 for name in stages if name.startswith("diffusion_part")),
            "unet_mib": _mib(stages["diffusion"]["bytes"]),
            "all_mib": _mib(sum(stages[c]["bytes"] for c in ("text_encoder", "diffusion", "decoder", "image_encoder")
                                if c in stages and stages[c]["bytes"] is not None) or None),
            **{name: stages[name]["median_seconds"] for name in
               ("diffusion", "unet_step", "image", "text_encoder", "decoder", "image_encoder") if name in stages},
            "peak_gb": stages["image"]["peak_rss_bytes"] / 1e9,
            "anon_gb": stages["image"]["peak_anon_bytes"] / 1e9 if "peak_anon_bytes" in stages["image"] else None,
            "vs": {b: medians[b]["unet_step"]["median_seconds"] / stages["unet_step"]["median_seconds"]
                   for b in KERAS if b in medians},
        }
        convert = conversions.get(case["quant"]) if case["backend"] == "litert" else None
        row["convert"] = (convert["wall_seconds"], convert["peak_rss_bytes"] / 1e9) if convert else None
        found.append(row)
    return sorted(found, key=lambda r: r["order"])


def _seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 1 else f"{value:.2f} s"


def _peak_detail(row: dict) -> str:
    """" (1.49 anon; 0.98×)": the part the OS cannot drop, and the peak over the set's file bytes."""
    parts = [] if row["anon_gb"] is None else [f"{row['anon_gb']:.2f} anon"]
    if row["all_mib"]:
        parts.append(f"{row['peak_gb'] * 1e9 / (row['all_mib'] * 2**20):.2f}×")
    return f" ({'; '.join(parts)})" if parts else ""


def _mib(value):
    return None if value is None else value / 2**20


def markdown(all_rows: list[dict]) -> str:
    header = ["size", "", "UNet files", "all files", "UNet call", "UNet step", "image, 3 steps",
              "text encoder", "decoder", "image encoder", "peak RSS, image run (anonymous; × all files)",
              "step vs Keras eager",
              "step vs Keras XLA", "conversion (tree peak)"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for r in all_rows:
        unet = "–" if r["unet_mib"] is None else f"{r['unet_mib']:,.0f} MiB ({r['parts']} parts)"
        files = "–" if r["all_mib"] is None else f"{r['all_mib']:,.0f} MiB"
        ratios = [f"{r['vs'][b]:.2f}×" if b in r["vs"] else "–" for b in KERAS]
        convert = "–" if not r["convert"] else f"{r['convert'][0]:,.0f} s ({r['convert'][1]:.2f} GB)"
        secs = [_seconds(r[k]) if k in r else "–" for k in ("diffusion", "unet_step", "image", "text_encoder",
                                                               "decoder", "image_encoder")]
        peak = f"{r['peak_gb']:.2f} GB" + _peak_detail(r)
        lines.append("| " + " | ".join([r["size"], r["what"], unet, files, *secs, peak, *ratios, convert]) + " |")
    return "\n".join(lines)


def plot(all_rows: list[dict], path: Path) -> None:
    """UNet step, peak RSS and file size, a group of bars per image size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sizes = list(dict.fromkeys(r["size"] for r in all_rows))
    labels = list(dict.fromkeys(r["what"] for r in sorted(all_rows, key=lambda r: r["order"])))
    panels = [("unet_step", "UNet step (s)"), ("peak_gb", "peak RSS, image run (GB)"), ("all_mib", "all files (MiB)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.5))
    width = 0.8 / len(labels)
    for axis, (key, title) in zip(axes, panels):
        for i, label in enumerate(labels):
            values = [next((r.get(key) or 0 for r in all_rows if r["size"] == s and r["what"] == label), 0)
                      for s in sizes]
            axis.bar(np.arange(len(sizes)) + i * width, values, width, label=label)
        axis.set_xticks(np.arange(len(sizes)) + 0.4 - width / 2, sizes)
        axis.set_title(title)
    axes[0].legend(fontsize="small")
    fig.suptitle("sd2tflite bench: full-size v1, random weights, 2 cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": "sd2tflite bench"})
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="bench reports (benchmarks/records/bench-*.json)")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the picture (PNG)")
    args = parser.parse_args()
    all_rows = []
    for path in args.reports:
        report = json.loads(path.read_text())
        validate_bench_json(report)
        all_rows += rows(report)
    print(markdown(all_rows))
    if args.plot:
        plot(all_rows, args.plot)
        print(f"(picture: {args.plot})", file=sys.stderr)


if __name__ == "__main__":
    main()
