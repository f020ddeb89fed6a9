"""Full-size plans (slow: builds the real keras-cv UNet, ~4 GB; run with `scripts/test.sh -m slow`)."""

from __future__ import annotations

import pytest

from sd2tflite.convert.limits import DEFAULT_MAX_PART_BYTES
from sd2tflite.convert.plan import plan_conversion
from sd2tflite.convert.request import ConvertOptions, build_request

pytestmark = pytest.mark.slow


# fp16 weights of the whole UNet (1.72 GB) exceed the 1400 MiB cap, so fp16 takes 2 parts; the dynamic
# UNet fits one file but not the converter's memory on a 24 GB machine: 2 parts, joined into one file.
@pytest.mark.parametrize("family, quant, parts", [("v1", "fp32", 3), ("v1", "dynamic", 2), ("v2", "fp16", 2)])
def test_full_size_unet_plan(tmp_path, family, quant, parts):
    request = build_request(ConvertOptions(family=family, quant=quant, components="diffusion", weights="random",
                                           out_dir=str(tmp_path), isolate=False, memory_budget=int(0.8 * 24e9)),
                            resolve_weights=False)
    plan = plan_conversion(request)
    planned = plan.artifacts
    assert len(planned) == parts
    # keras-cv's UNets: v1 as DESIGN.md counts it, v2 as diffusers' SD 2.1 UNet2DConditionModel.
    assert sum(a.params for a in planned) == plan.split.total_params == {"v1": 859_520_964, "v2": 865_910_724}[family]
    assert all(a.estimated_bytes <= DEFAULT_MAX_PART_BYTES for a in planned)
    assert planned[-1].outputs[0].name == "noise_pred" and planned[-1].outputs[0].shape == (1, 64, 64, 4)
    assert (plan.joined is not None) == (quant == "dynamic")
