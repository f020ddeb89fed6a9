"""Prompt adherence of the trained tiny model, per precision: keras-cv's own pipeline (Keras, fp32)
and LiteRT sets (fp32, fp16, dynamic, int8 synthetic / recorded calibration, int8 --keep-float auto)
on the held-out prompts of sd2tflite/verify/shapes.py, plus each set's image PSNR against the Keras
image from the same noise. Writes a JSON and prints a table.

    python -m benchmarks.quality --work WORK_DIR [--prompts 36] [--steps 25] [--guidance 7.5]
        [--out benchmarks/records/quality-tiny.json]

Each set converts into WORK_DIR in about a minute (export shared); sets already there are reused.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from benchmarks.records import RECORDS, invocation, write_record  # noqa: E402
from sd2tflite.core.metrics import parity  # noqa: E402
from sd2tflite.verify import shapes  # noqa: E402

# name -> convert options beyond --model tiny --quant
SETS: dict[str, dict] = {
    "fp32": dict(quant="fp32"),
    "fp16": dict(quant="fp16"),
    "dynamic": dict(quant="dynamic"),
    "int8 synthetic": dict(quant="int8", calibration="synthetic"),
    "int8 recorded": dict(quant="int8", calibration="recorded"),
    "int8 keep-float auto": dict(quant="int8", calibration="recorded", keep_float="auto"),
}
# Recorded calibration runs captions of the grammar the model draws, none of them held out.
CALIBRATION_SCENES = 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=36, help="how many held-out prompts (spread over the set)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, from: {', '.join(SETS)}")
    parser.add_argument("--out", type=Path, default=RECORDS / "quality-tiny.json")
    parser.add_argument("--work", type=Path, required=True, help="folder for the converted sets (reused)")
    args = parser.parse_args()
    names = [n.strip() for n in args.sets.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETS]
    if unknown:
        print(f"error: unknown set {unknown[0]!r}: choose from {', '.join(SETS)}", file=sys.stderr)
        return 2
    report = run(names, shapes.held_out_prompts(args.prompts), args.steps, args.guidance, args.work)
    report["command"] = invocation()
    write_record(args.out, report)
    print(table(report))
    print(f"report: {args.out}")
    return 0


def calibration_prompts(work: Path) -> Path:
    """A prompt file of training captions spread over the grammar (never a held-out one)."""
    path = work / "calibration-prompts.txt"
    path.write_text("".join(c + "\n" for c in shapes.calibration_captions(CALIBRATION_SCENES)))
    return path


def convert_sets(names: list[str], work: Path) -> dict[str, Path]:
    from sd2tflite.convert.orchestrate import convert
    from sd2tflite.convert.request import ConvertOptions, build_request

    work.mkdir(parents=True, exist_ok=True)
    prompts = calibration_prompts(work)
    sets = {}
    for name in names:
        out = work / name.replace(" ", "-")
        options = dict(SETS[name])
        if options.get("calibration") == "recorded":
            options["calibration_prompts"] = str(prompts)
        if not (out / "manifest.json").is_file():
            started = time.perf_counter()
            convert(build_request(ConvertOptions(family="tiny", out_dir=str(out), isolate=False,
                                                 export_cache=str(work / "export-cache"), **options)))
            print(f"converted {name} in {time.perf_counter() - started:.0f} s", flush=True)
        sets[name] = out
    return sets


def run(names: list[str], prompts: list[tuple[str, int]], steps: int, guidance: float, work: Path) -> dict:
    from sd2tflite.core.manifest import load_manifest
    from sd2tflite.runtime.litert import LiteRTComponents
    from sd2tflite.runtime.pipeline import GenerateSettings, Pipeline
    from sd2tflite.runtime.tokenizer import load_tokenizer
    from sd2tflite.verify.reference import KerasCVPipeline, reference_models

    sets = convert_sets(names, work)
    manifest = load_manifest(next(iter(sets.values())))
    dims = manifest.model_dims
    tokenizer = load_tokenizer("tiny")
    captions = [p for p, _ in prompts]
    noises = [np.random.default_rng(seed).standard_normal(dims.latent_shape).astype(np.float32) for _, seed in prompts]

    started = time.perf_counter()
    keras = KerasCVPipeline("tiny", dims, reference_models(manifest))
    reference = [keras.generate(np.asarray([tokenizer.tokens_for(p)], np.int32), steps, guidance, noise)[0]
                 for p, noise in zip(captions, noises)]
    rows = {"keras-cv (Keras fp32)": _row(reference, reference, captions, time.perf_counter() - started)}
    print(f"keras-cv: adherence {rows['keras-cv (Keras fp32)']['adherence']:.3f}", flush=True)
    for name, directory in sets.items():
        started = time.perf_counter()
        set_manifest = load_manifest(directory)
        pipeline = Pipeline(LiteRTComponents(directory, set_manifest), dims, tokenizer, set_manifest.prediction_type)
        images = [pipeline.generate(GenerateSettings(p, steps=steps, guidance=guidance, noise=noise)).images[0]
                  for p, noise in zip(captions, noises)]
        rows[f"LiteRT {name}"] = _row(images, reference, captions, time.perf_counter() - started)
        print(f"LiteRT {name}: adherence {rows[f'LiteRT {name}']['adherence']:.3f}", flush=True)
    return {"model": "trained tiny (sd2tflite/data/tiny)", "weights": manifest.weights,
            "prompts": len(prompts), "steps": steps, "guidance": guidance, "sampler": "keras-cv (ddim)",
            "img": dims.img_height, "rows": rows}


def _row(images, reference, captions, seconds: float) -> dict:
    result = shapes.adherence(images, captions)
    psnrs = [parity(r, i, peak=255.0).psnr_db for r, i in zip(reference, images)]
    return {"adherence": result.score, "per_attribute": result.per_attribute,
            "image_psnr_db_vs_keras": {"mean": float(np.mean(psnrs)) if np.isfinite(psnrs).all() else float("inf"),
                                       "min": float(np.min(psnrs))},
            "seconds": round(seconds, 1), "images": result.to_json()["images"]}


def table(report: dict) -> str:
    lines = [f"trained tiny model, {report['prompts']} held-out prompts, {report['steps']} steps, guidance "
             f"{report['guidance']}",
             f"{'pipeline':28s} {'adherence':>9s} {'color':>6s} {'pos':>6s} {'shape':>6s} {'bg':>6s} "
             f"{'PSNR mean':>9s} {'min':>6s}"]
    for name, row in report["rows"].items():
        a, p = row["per_attribute"], row["image_psnr_db_vs_keras"]
        lines.append(f"{name:28s} {row['adherence']:9.3f} {a['color']:6.2f} {a['position']:6.2f} {a['shape']:6.2f} "
                     f"{a['background']:6.2f} {p['mean']:9.1f} {p['min']:6.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
