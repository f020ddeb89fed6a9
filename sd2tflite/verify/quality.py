"""The int8 quality report: each component against the float Keras model on held-out pipeline
inputs (recorded from prompts and seeds that calibration never uses), plus file size and the share
of operators that run with integer activations. verify prints it for calibrated precisions.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from ..core.metrics import parity
from ..core.registry import COMPONENTS
from ..convert.calibration.recorded import RecordingSettings, record

# Disjoint from calibration/recorded.DEFAULT_PROMPTS, and other seeds: never calibration data.
HELD_OUT = RecordingSettings(
    prompts=(
        "a photograph of an astronaut riding a horse",
        "a bowl of fruit on a marble table, still life painting",
        "a busy train station at rush hour, motion blur",
    ),
    steps=4, samples=12, seed=10_000,
)


def held_out_inputs(keras: dict, dims, tokenizer, settings: RecordingSettings = HELD_OUT,
                    prediction_type: str = "epsilon") -> dict[str, list[dict]]:
    return record(keras, dims, tokenizer, settings, prediction_type=prediction_type)


def component_figures(keras_model, litert, samples: list[dict], component: str):
    from ..convert.keras_models import call_keras

    output = COMPONENTS[component].output_name
    expected = np.stack([call_keras(keras_model, s)[0] for s in samples])
    actual = np.stack([litert(**s)[output] for s in samples])
    return parity(expected, actual)


def quality_report(manifest, keras: dict, litert, held_out: dict[str, list[dict]]) -> dict[str, dict]:
    """component -> SNR / PSNR / cosine on held-out inputs, bytes, quantized operator share."""
    report = {}
    for component in manifest.components:
        if component not in held_out:
            continue
        figures = component_figures(keras[component], litert[component], held_out[component], component)
        parts = manifest.parts_of(component)
        ops = sum((a.op_stats or {}).get("ops", 0) for a in parts)
        quantized = sum((a.op_stats or {}).get("quantized_ops", 0) for a in parts)
        report[component] = {
            **asdict(figures),
            "samples": len(held_out[component]),
            "bytes": sum(a.bytes for a in parts),
            "quantized_op_share": quantized / ops if ops else None,
            "calibration": parts[0].calibration,
        }
    return report


def describe(report: dict[str, dict]) -> list[str]:
    lines = []
    for component, r in report.items():
        share = "n/a" if r["quantized_op_share"] is None else f"{100 * r['quantized_op_share']:.0f} %"
        source = (r["calibration"] or {}).get("source", "none")
        lines.append(f"    {component:14s} SNR {r['snr_db']:6.1f} dB  PSNR {r['psnr_db']:6.1f} dB  "
                     f"cosine {r['cosine']:.4f}  {r['bytes'] / 2**20:8.1f} MiB  {share} of ops integer  "
                     f"(calibration: {source}; {r['samples']} held-out inputs)")
    return lines
