"""Sampler quality on the trained tiny model: prompt adherence and image PSNR against a 50-step
`ddim` reference (same starting noise) for each sampler at 8, 12, 16 and 25 steps, on LiteRT fp32.
Writes a JSON and prints a table; the README's "Samplers" section quotes it.

    python -m benchmarks.samplers --work WORK_DIR [--prompts 36] [--steps 8,12,16,25]
        [--out benchmarks/records/samplers-tiny.json]

The fp32 set is converted into WORK_DIR (benchmarks/quality.py's layout) unless it is already there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from benchmarks.quality import convert_sets  # noqa: E402
from benchmarks.records import RECORDS, invocation, write_record  # noqa: E402
from sd2tflite.core.metrics import parity  # noqa: E402
from sd2tflite.verify import shapes  # noqa: E402

REFERENCE = ("ddim", 50, False)  # sampler, steps, karras
# (sampler, karras) in the table: each sampler as diffusers users run it, plus Karras sigmas for
# the two the field uses them with.
VARIANTS = [("ddim", False), ("euler", False), ("euler-a", False), ("dpm++2m", False), ("euler", True),
            ("dpm++2m", True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=36, help="how many held-out prompts (spread over the set)")
    parser.add_argument("--steps", default="8,12,16,25", help="comma-separated step counts")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--out", type=Path, default=RECORDS / "samplers-tiny.json")
    parser.add_argument("--work", type=Path, required=True, help="folder for the converted fp32 set (reused)")
    args = parser.parse_args()
    try:
        step_counts = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        print(f"error: --steps {args.steps!r}: give comma-separated whole numbers, e.g. 8,12,16,25", file=sys.stderr)
        return 2
    report = run(shapes.held_out_prompts(args.prompts), step_counts, args.guidance, args.work)
    report["command"] = invocation()
    write_record(args.out, report)
    print(table(report))
    print(f"report: {args.out}")
    return 0


def run(prompts: list[tuple[str, int]], step_counts: list[int], guidance: float, work: Path) -> dict:
    from sd2tflite.core.manifest import load_manifest
    from sd2tflite.runtime.litert import LiteRTComponents
    from sd2tflite.runtime.pipeline import GenerateSettings, Pipeline
    from sd2tflite.runtime.tokenizer import load_tokenizer

    set_dir = convert_sets(["fp32"], work)["fp32"]
    manifest = load_manifest(set_dir)
    dims = manifest.model_dims
    # Everything stays loaded: hundreds of runs in one process (releasing is for one run's peak).
    pipeline = Pipeline(LiteRTComponents(set_dir, manifest, release_unused=False), dims, load_tokenizer("tiny"),
                        manifest.prediction_type)
    captions = [p for p, _ in prompts]
    noises = [np.random.default_rng(seed).standard_normal(dims.latent_shape).astype(np.float32) for _, seed in prompts]

    def draw(sampler: str, steps: int, karras: bool) -> tuple[list[np.ndarray], float]:
        started = time.perf_counter()
        images = [pipeline.generate(GenerateSettings(p, steps=steps, guidance=guidance, noise=noise, sampler=sampler,
                                                     karras=karras)).images[0]
                  for p, noise in zip(captions, noises)]
        return images, time.perf_counter() - started

    reference, seconds = draw(*REFERENCE)
    rows = [_row(REFERENCE, reference, reference, captions, seconds)]
    print(f"reference {REFERENCE}: adherence {rows[0]['adherence']:.3f}", flush=True)
    for sampler, karras in VARIANTS:
        for steps in step_counts:
            images, seconds = draw(sampler, steps, karras)
            rows.append(_row((sampler, steps, karras), images, reference, captions, seconds))
            print(f"{sampler}{' karras' if karras else ''} {steps}: adherence {rows[-1]['adherence']:.3f}, "
                  f"PSNR {rows[-1]['psnr_db_vs_reference']['mean']:.1f} dB", flush=True)
    return {"model": "trained tiny (sd2tflite/data/tiny)", "set": "LiteRT fp32", "weights": manifest.weights,
            "prompts": len(prompts), "guidance": guidance, "img": dims.img_height,
            "reference": {"sampler": REFERENCE[0], "steps": REFERENCE[1], "karras": REFERENCE[2]}, "rows": rows}


def _row(variant, images, reference, captions, seconds: float) -> dict:
    sampler, steps, karras = variant
    result = shapes.adherence(images, captions)
    psnrs = [parity(r, i, peak=255.0).psnr_db for r, i in zip(reference, images)]
    finite = [p for p in psnrs if np.isfinite(p)]
    return {"sampler": sampler, "steps": steps, "karras": karras, "adherence": result.score,
            "per_attribute": result.per_attribute,
            "psnr_db_vs_reference": {"mean": float(np.mean(finite)) if finite else float("inf"),
                                     "min": float(np.min(psnrs))},
            "seconds": round(seconds, 1)}


def table(report: dict) -> str:
    lines = [f"trained tiny model, LiteRT fp32, {report['prompts']} held-out prompts, guidance {report['guidance']}, "
             f"PSNR against {report['reference']['sampler']} at {report['reference']['steps']} steps",
             f"{'sampler':18s} {'steps':>5s} {'adherence':>9s} {'color':>6s} {'shape':>6s} {'bg':>6s} "
             f"{'PSNR mean':>9s} {'min':>6s} {'s/image':>7s}"]
    for row in report["rows"]:
        a, p = row["per_attribute"], row["psnr_db_vs_reference"]
        name = row["sampler"] + (" (Karras)" if row["karras"] else "")
        lines.append(f"{name:18s} {row['steps']:5d} {row['adherence']:9.3f} {a['color']:6.2f} {a['shape']:6.2f} "
                     f"{a['background']:6.2f} {p['mean']:9.1f} {p['min']:6.1f} "
                     f"{row['seconds'] / report['prompts']:7.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
