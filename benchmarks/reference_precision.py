"""Which side is wrong when an fp32 file and Keras disagree: each component of a converted set
against its float32 Keras model AND a float64 copy of it (same weights), on verify's parity inputs.

The full-size fp32 VAE files failed verify's 90 dB bar against float32 Keras; this measures whether
the files or the float32 reference are off. Convert the components first, e.g.

    sd2tflite convert --weights random:0 --components decoder,image_encoder --quant fp32 -o bench-out/v1-vae
    python -m benchmarks.reference_precision bench-out/v1-vae

and the record shows, per component, PSNR of float32 Keras, and of the files, against float64 Keras.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.records import RECORDS, write_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set_dir", type=Path, help="a converted fp32 set (any components)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="record path (default records/reference-precision-FAMILY-IMG.json)")
    args = parser.parse_args()

    from sd2tflite.convert.keras_models import call_keras
    from sd2tflite.core.manifest import load_manifest
    from sd2tflite.core.metrics import parity
    from sd2tflite.runtime.litert import LiteRTComponent
    from sd2tflite.runtime.samples import synthetic_images
    from sd2tflite.verify.reference import reference_models

    manifest = load_manifest(args.set_dir)
    dims = manifest.model_dims
    keras = reference_models(manifest)
    images = synthetic_images(dims, 2, 7)  # verify's parity images (seed 7)
    encoder = keras.get("image_encoder")
    inputs = {
        "image_encoder": [{"image": image} for image in images],
        "decoder": [{"latent": call_keras(encoder, {"image": image})[0]} for image in images] if encoder
        else [{"latent": np.random.default_rng(7).standard_normal(dims.latent_shape).astype(np.float32)}],
    }
    results = {}
    for component in manifest.components:
        if component not in inputs:
            continue
        started = time.perf_counter()
        samples = inputs[component]
        files = LiteRTComponent(args.set_dir, manifest.parts_of(component), num_threads=args.threads)
        output = manifest.parts_of(component)[-1].outputs[0].name
        single = np.stack([call_keras(keras[component], s)[0] for s in samples])
        actual = np.stack([files(**s)[output] for s in samples])
        exact = np.stack([call_keras(keras.float64(component), s)[0] for s in samples])
        results[component] = {
            "keras_float32_vs_float64": _figures(parity(exact, single)),
            "files_vs_keras_float64": _figures(parity(exact, actual)),
            "files_vs_keras_float32": _figures(parity(single, actual)),
            "samples": len(samples),
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(f"{component}: PSNR against float64 Keras: float32 Keras "
              f"{results[component]['keras_float32_vs_float64']['psnr_db']:.1f} dB, files "
              f"{results[component]['files_vs_keras_float64']['psnr_db']:.1f} dB "
              f"(files against float32 Keras: {results[component]['files_vs_keras_float32']['psnr_db']:.1f} dB)")
    out = args.out or RECORDS / f"reference-precision-{manifest.family}-{dims.img_height}.json"
    write_record(out, {"set": {"family": manifest.family, "quant": manifest.quant, "img": dims.img_height,
                               "weights": {c: manifest.weights.get(c, {}).get("kind") for c in results}},
                       "components": results})
    print(f"record: {out}")


def _figures(p) -> dict:
    return {"psnr_db": round(p.psnr_db, 2), "max_abs": float(f"{p.max_abs:.3g}"),
            "mean_abs": float(f"{p.mean_abs:.3g}"), "cosine": p.cosine}


if __name__ == "__main__":
    main()
