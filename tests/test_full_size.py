"""Full-size plans (slow: builds the real keras-cv UNet, ~4 GB; run with `scripts/test.sh -m slow`)."""

from __future__ import annotations

import pytest

from sd2tflite.convert import DEFAULT_MAX_PART_BYTES, make_request, plan_conversion

pytestmark = pytest.mark.slow


# fp16 weights of the whole UNet (1.72 GB) exceed the 1400 MiB cap, so fp16 takes 2 parts.
@pytest.mark.parametrize("family, quant, parts", [("v1", "fp32", 3), ("v1", "dynamic", 1), ("v2", "fp16", 2)])
def test_full_size_unet_plan(tmp_path, family, quant, parts):
    request = make_request(
        family=family, quant=quant, components="diffusion", weights="random", img_height=512,
        img_width=512, batch_size=1, out_dir=str(tmp_path), max_part_bytes=DEFAULT_MAX_PART_BYTES,
        unet_parts=None, force=False, isolate=False, calibration_samples=1, calibration_seed=0,
    )
    planned, split = plan_conversion(request)
    assert len(planned) == parts
    assert sum(a.params for a in planned) == {"v1": 859_520_964}.get(family, split["total_params"])
    assert all(a.estimated_bytes <= DEFAULT_MAX_PART_BYTES for a in planned)
    assert planned[-1].outputs[0].name == "noise_pred" and planned[-1].outputs[0].shape == (1, 64, 64, 4)
