"""Check side of the full-size agreement check: imports the full-size SD 1.5 / SD 2.1-base single
files that tests/fixtures/make_full_size_agreement.py wrote (random weights, made with diffusers /
transformers in a torch venv), builds each Keras component at full size with sd2tflite's importer,
runs it on the same inputs and compares with the PyTorch outputs. No torch here (checked).

    python -m benchmarks.check_full_size_agreement v1 [v2] --ref-dir REF_DIR \
        [--out benchmarks/records/checkpoint-agreement-full-size.json]

Per component: largest absolute error and that error / max(1, output scale), against the reference
with keras-cv's numerics (the weight mapping alone; bar 1e-4, as tests/test_checkpoint.py holds
the tiny fixtures) and against diffusers / transformers unchanged (keras-cv's own numerics on top;
bar 1e-2). A component over 1e-4 in float32 is built again as a float64 Keras model from the same
imported weights, and the 1e-4 bar applies to that: a mapping error stays in float64, float32
rounding in the Keras model goes (the full-size VAE: keras' GroupNormalization reduces its
statistics over up to 512x512x4 values in float32, which costs ~3e-4 of the decoder's output
scale; the float32 model is then held to the 1e-2 bar of keras-cv's own numerics). Exits 1 if a
bar is exceeded or the inferred architecture is not keras-cv's v1 / v2.
The JSON (one entry per family, merged with the families already in it) records the figures, time
and peak RSS per component, versions of both sides and the commands.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

from sd2tflite.convert.checkpoint import COMPONENTS, SD1, SD2, open_checkpoint

DEFAULT_OUT = Path(__file__).resolve().parent / "records" / "checkpoint-agreement-full-size.json"
TIGHT = 1e-4  # tests/test_checkpoint.py: max abs error / max(1, output scale), keras-cv numerics
EXACT = 1e-2  # tests/test_checkpoint.py: the same against diffusers / transformers unchanged
FULL_SIZE = {"v1": SD1, "v2": SD2}  # keras-cv's v1 / v2 architectures


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def paths(ref_dir: Path, family: str) -> tuple[Path, Path, Path]:
    stem = ref_dir / f"sd-{family}-random"
    return (stem.with_suffix(".safetensors"), Path(f"{stem}.golden.npz"), Path(f"{stem}.reference.json"))


def missing(ref_dir: Path, family: str) -> list[Path]:
    return [p for p in paths(ref_dir, family) if not p.exists()]


def image_size(component: str, g: dict) -> tuple[int, int]:
    if component == "diffusion":
        return 8 * g["unet_latent"].shape[1], 8 * g["unet_latent"].shape[2]
    if component == "decoder":
        return 8 * g["decoder_latent"].shape[1], 8 * g["decoder_latent"].shape[2]
    if component == "image_encoder":
        return g["image"].shape[1], g["image"].shape[2]
    return 512, 512  # the text encoder has no image size


def runs(component: str, g: dict) -> list[tuple[str, list, str]]:
    """(label, model inputs, golden key) for each call of a component."""
    if component == "text_encoder":
        return [("text_encoder", [g["tokens"], g["positions"]], "text_encoder")]
    if component == "diffusion":
        return [(f"unet t={t}", [g["unet_latent"], g[f"timestep_embedding_{t}"], g["unet_context"]], f"unet_{t}")
                for t in g["timesteps"].tolist()]
    if component == "decoder":
        return [("decoder", [g["decoder_latent"]], "decoder")]
    return [("image_encoder", [g["image"]], "image_encoder")]


def compare(out: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    if out.shape != ref.shape:
        raise SystemExit(f"error: output shape {out.shape} differs from the reference's {ref.shape}")
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(out.astype(np.float64) - ref).max())
    return err, scale, err / scale


def run_component(ckpt, component: str, g: dict, dtype: str):
    """Builds the component in `dtype` with the checkpoint's weights and runs every call of it:
    ({label: (golden key, output)}, build seconds, {label: run seconds})."""
    import keras

    h, w = image_size(component, g)
    keras.config.set_dtype_policy(dtype)
    try:
        s = time.monotonic()
        model = ckpt.build(component, h, w)
        build_s = time.monotonic() - s
        out, run_s = {}, {}
        for label, inputs, key in runs(component, g):
            inputs = [x.astype(dtype) if x.dtype.kind == "f" else x for x in inputs]
            s = time.monotonic()
            y = model(inputs if len(inputs) > 1 else inputs[0], training=False)
            out[label] = (key, np.asarray(y).astype(np.float32 if dtype == "float32" else np.float64))
            run_s[label] = time.monotonic() - s
        del model, y
    finally:
        keras.backend.clear_session()  # also resets the dtype policy
        keras.config.set_dtype_policy("float32")
        gc.collect()
    return out, build_s, run_s


def check_family(ref_dir: Path, family: str, log=print) -> dict:
    """Builds, runs and compares every component of one family; returns its record (`ok` says
    whether every bar holds)."""
    ckpt_path, golden_path, ref_path = paths(ref_dir, family)
    t0 = time.monotonic()
    with np.load(golden_path) as z:
        g = {k: z[k] for k in z.files}
    ckpt = open_checkpoint(ckpt_path, prediction_type="epsilon" if family == "v2" else None)
    arch_ok = ckpt.architecture == FULL_SIZE[family]
    log(f"{family}: {ckpt_path.name}: family {ckpt.family}, EMA {ckpt.ema}, keras-cv's {family} architecture: "
        f"{arch_ok}")
    rows, ok = [], arch_ok and ckpt.family == family
    for component in COMPONENTS:
        out, build_s, run_s = run_component(ckpt, component, g, "float32")
        fp64 = None
        if any(compare(y, g[key])[2] >= TIGHT for key, y in out.values()):
            # Over the bar in float32: the same imported weights in a float64 model tell a mapping
            # error (stays) from float32 rounding in the Keras model (goes; the VAE at full size)
            fp64, build64_s, run64_s = run_component(ckpt, component, g, "float64")
        for label, (key, y) in out.items():
            err, scale, rel = compare(y, g[key])
            err_x, _, rel_x = compare(y, g[f"{key}_exact"])
            row = {"component": label, "shape": list(y.shape), "output_scale": round(scale, 4),
                   "max_abs_err": err, "err_over_scale": rel,
                   "max_abs_err_vs_unchanged": err_x, "err_over_scale_vs_unchanged": rel_x,
                   "build_seconds": round(build_s, 1), "run_seconds": round(run_s[label], 1)}
            mapping = rel
            if fp64 is not None:
                err64, _, mapping = compare(fp64[label][1], g[key])
                row.update({"max_abs_err_float64_model": err64, "err_over_scale_float64_model": mapping,
                            "float64_build_seconds": round(build64_s, 1),
                            "float64_run_seconds": round(run64_s[label], 1)})
            passed = mapping < TIGHT and rel < EXACT and rel_x < EXACT
            ok &= passed
            row.update({"mapping_checked_in": "float32" if fp64 is None else "float64", "pass": passed,
                        "peak_rss_gb_so_far": round(peak_rss_gb(), 2)})
            rows.append(row)
            note = "" if fp64 is None else f"; float64 model {row['max_abs_err_float64_model']:.2e} = {mapping:.2e}"
            log(f"{family} {label}: max abs err {err:.2e}, / scale {scale:.2f} = {rel:.2e}{note} (bar {TIGHT:g}); "
                f"vs unchanged {err_x:.2e} = {rel_x:.2e} (bar {EXACT:g}); {'ok' if passed else 'FAIL'} "
                f"[build {build_s:.0f} s, run {run_s[label]:.0f} s, peak RSS {peak_rss_gb():.2f} GB]")
            build_s = 0.0
    reference = json.loads(ref_path.read_text())
    return {
        "ok": ok,
        "checkpoint": str(ckpt_path),
        "checkpoint_bytes": ckpt_path.stat().st_size,
        "family": ckpt.family,
        "ema": ckpt.ema,
        "architecture_is_keras_cv": arch_ok,
        "architecture": ckpt.architecture.to_json(),
        "components": rows,
        "seconds": round(time.monotonic() - t0, 1),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "reference": reference,
    }


def versions() -> dict:
    import importlib.metadata as md

    import sd2tflite

    v = {"sd2tflite": sd2tflite.__version__, "python": platform.python_version()}
    for pkg in ("tensorflow-cpu", "keras", "keras-cv", "numpy", "safetensors"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("families", nargs="+", choices=sorted(FULL_SIZE))
    ap.add_argument("--ref-dir", type=Path, required=True, help="the folder make_full_size_agreement.py wrote")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    # Imported here, not at the top: tests/test_checkpoint_full_size.py loads this file by its path.
    from benchmarks.records import invocation, write_record

    for family in args.families:
        if gone := missing(args.ref_dir, family):
            raise SystemExit(f"error: {gone[0]} not found; run tests/fixtures/make_full_size_agreement.py {family} "
                             "in a torch venv first (its docstring says how)")
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    data.update({
        "what": "full-size agreement of sd2tflite's checkpoint importer with diffusers / transformers "
                "(random weights): tests/fixtures/make_full_size_agreement.py (reference, torch) then "
                "benchmarks/check_full_size_agreement.py (this side, no torch)",
        "machine": {"cpus": os.cpu_count(),
                    "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)},
        "bars": {"err_over_scale": TIGHT, "err_over_scale_vs_unchanged": EXACT,
                 "scale": "max(1, max |reference output|)"},
    })
    families = data.setdefault("families", {})
    failed = []
    for family in args.families:
        rec = check_family(args.ref_dir, family)
        assert "torch" not in sys.modules, "the check side must not import torch"
        rec["versions"] = versions()
        rec["command"] = invocation()
        families[family] = rec
        write_record(args.out, data)
        if not rec["ok"]:
            failed.append(family)
    print(f"wrote {args.out}")
    if failed:
        print(f"error: {', '.join(failed)}: a component exceeds its bar or the architecture is not keras-cv's "
              "(see above)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
