"""Precisions: one table of recipes (converter settings as data, size model, parity tolerances).

Adding a precision is one entry in RECIPES; tests parametrize over it. The converter settings are
plain names (tf.lite.Optimize / OpsSet members, dtypes) that convert/tflite.py applies and the
manifest records, so this module imports no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError

# The name scope of GroupNorm's variance and normalisation in the device graph
# (convert/device_layers.py): the int8 recipe keeps tensors under it float.
GROUP_NORM_FLOAT_SCOPE = "group_norm_float"


@dataclass(frozen=True)
class QuantRecipe:
    name: str
    description: str
    bytes_per_weight: float  # for planning parts and checking file sizes
    needs_calibration: bool
    # Parity against the float Keras model on seeded inputs (PSNR over the reference's range).
    min_psnr_db: float
    min_cosine: float
    # End to end: PSNR of the LiteRT pipeline's uint8 images against keras-cv's (peak 255), after
    # `end_to_end_steps` steps unless verify is told otherwise.
    min_image_psnr_db: float
    # Component-specific (min_psnr_db, min_cosine) where the mode is known to do worse.
    overrides: tuple[tuple[str, float, float], ...] = ()
    # Converter settings. Builtins only by default: ai-edge-litert ships no Flex kernels, so a graph
    # that needs them fails at conversion, not on the device.
    optimizations: tuple[str, ...] = ()  # tf.lite.Optimize members
    supported_types: tuple[str, ...] = ()  # e.g. float16
    supported_ops: tuple[str, ...] = ("TFLITE_BUILTINS",)  # tf.lite.OpsSet members
    # After converting, any operator left with float activations is an error (int8-strict).
    integer_only: bool = False
    end_to_end_steps: int = 3
    # Converter peak RSS per float32 weight byte of the part (convert/plan.py's memory model).
    converter_rss_per_float_byte: float = 6.8
    # Operator types this precision always keeps in float (merged into --keep-float).
    float_ops: tuple[str, ...] = ()

    def tolerance(self, component: str) -> tuple[float, float]:
        for name, psnr, cosine in self.overrides:
            if name == component:
                return psnr, cosine
        return self.min_psnr_db, self.min_cosine

    def converter_settings(self) -> dict:
        """What the TFLite converter is told, as recorded in the manifest."""
        return {"optimizations": list(self.optimizations), "supported_types": list(self.supported_types),
                "supported_ops": list(self.supported_ops), "representative_dataset": self.needs_calibration,
                "integer_only": self.integer_only}


# int8, measured on the trained tiny model (verify's inputs; benchmarks/records/quality-tiny.json has
# the sets): components 28.8-46.7 dB / cosine >= 0.970 with either calibration, the text encoder
# lowest. Whole images: after 3 steps guidance 7.5 turns int8's error into another picture (7.5-12.6
# dB, no better than a flat gray image's 10.5 dB), so the check runs 25 steps, where the int8 sets
# measure 15.9-18.6 dB and other pictures of the same prompt (other seeds) 7.1-11.0 dB.
_INT8_BARS = dict(min_psnr_db=22.0, min_cosine=0.95, min_image_psnr_db=13.0, end_to_end_steps=25,
                  overrides=(("text_encoder", 25.0, 0.95),))
# Calibrating holds the float graph, an instrumented copy and the samples' activations: v1 UNet
# parts of 162-181M parameters peaked at 11.2-13.2 bytes per float byte at 512x512, fp32 / fp16 /
# dynamic parts at 4.7-6.5 (tests/data/converter-peak-rss.json, two machines).
_CALIBRATED_RSS = dict(converter_rss_per_float_byte=14.0)
# Integer kernels where they exist, float fallback elsewhere; inputs and outputs stay float32
# either way (the pipeline feeds floats).
_WEIGHTS = dict(optimizations=("DEFAULT",))
_INT8 = dict(optimizations=("DEFAULT",), supported_ops=("TFLITE_BUILTINS_INT8", "TFLITE_BUILTINS"))

RECIPES: dict[str, QuantRecipe] = {
    r.name: r
    for r in (
        # Thresholds sit below what the tiny model measures (README, "Parity"), with margin.
        QuantRecipe("fp32", "float32 weights and activations", 4.0, False,
                    min_psnr_db=90.0, min_cosine=0.99999, min_image_psnr_db=40.0),
        QuantRecipe("fp16", "float16 weights, float32 compute", 2.0, False,
                    min_psnr_db=35.0, min_cosine=0.9999, min_image_psnr_db=30.0,  # 35 dB: Apple's bar
                    supported_types=("float16",), **_WEIGHTS),
        QuantRecipe("dynamic", "int8 weights, float activations (dynamic range)", 1.0, False,
                    min_psnr_db=35.0, min_cosine=0.995, min_image_psnr_db=20.0, **_WEIGHTS),
        # Whole images: guidance 7.5 amplifies the UNet's int8-weight error over the steps; the
        # tiny model measured 24.0 dB (512x512) and 26.9 dB (128x128) at 3 steps.
        # GroupNorm's variance and normalisation stay float too (GROUP_NORM_FLOAT_SCOPE; why:
        # convert/device_layers.py, docs/device-placement.md).
        # Attention's matmuls and softmax stay float: LiteRT has only a scalar, single-threaded
        # reference kernel for an int8 BATCH_MATMUL of two activations, XNNPACK refuses it (non-zero
        # zero point) and takes no int8 SOFTMAX; in float XNNPACK runs both. Measured on full-size v1
        # at 512x512: the 64x64-level UNet parts spent 79-81 % of their time in that kernel and its
        # requantization (benchmarks/records/op-profile-v1-512-int8-attention-int8.md).
        QuantRecipe("int8", "int8 weights and activations, float fallback and float attention, calibrated",
                    1.0, True, **_INT8_BARS, **_INT8, **_CALIBRATED_RSS,
                    float_ops=("BATCH_MATMUL", "SOFTMAX", f"*{GROUP_NORM_FLOAT_SCOPE}*")),
        QuantRecipe("int8-strict", "int8 weights and activations, integer-only (fails naming any op "
                    "without an int8 kernel)", 1.0, True, **_INT8_BARS, optimizations=("DEFAULT",),
                    supported_ops=("TFLITE_BUILTINS_INT8",), integer_only=True, **_CALIBRATED_RSS),
        QuantRecipe("int16x8", "int8 weights, int16 activations, float fallback", 1.0, True,
                    min_psnr_db=30.0, min_cosine=0.99, min_image_psnr_db=15.0, optimizations=("DEFAULT",),
                    supported_ops=("EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8",
                                   "TFLITE_BUILTINS"), **_CALIBRATED_RSS),
    )
}


def get_recipe(name: str) -> QuantRecipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise UsageError(f"unknown precision {name!r}: choose from {', '.join(RECIPES)}") from None
