"""The one generator of sample inputs (runtime/samples.py): made from the component spec, seeded,
numpy only, and its numbers fixed (synthetic calibration and verify's bars depend on them)."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys

import numpy as np
import pytest

from sd2tflite.core.registry import COMPONENTS, FAMILIES
from sd2tflite.runtime.samples import MAKERS, pipeline_samples, starting_noise, synthetic_samples
from sd2tflite.runtime.schedule import timestep_embedding

TINY = FAMILIES["tiny"].dims(128, 128)
LCM = dataclasses.replace(TINY, guidance_embedding_dim=32)  # an LCM UNet's extra input
DIMS = [TINY, FAMILIES["v1"].dims(256, 128), FAMILIES["v2"].dims(128, 256, batch_size=2), LCM]


def test_every_input_of_every_component_has_one_maker():
    assert set(MAKERS) == set(COMPONENTS)
    for name, spec in COMPONENTS.items():
        assert set(MAKERS[name]) == {s.name for s in spec.input_specs(LCM)}, name


@pytest.mark.parametrize("dims", DIMS, ids=lambda d: f"{d.img_height}x{d.img_width}x{d.batch_size}-{d.context_dim}")
@pytest.mark.parametrize("component", list(COMPONENTS))
def test_samples_have_the_signature_shapes_and_dtypes(component, dims):
    specs = COMPONENTS[component].input_specs(dims)
    samples = synthetic_samples(component, dims, 3, 5)
    assert len(samples) == 3
    for sample in samples:
        assert list(sample) == [s.name for s in specs]
        for spec in specs:
            assert sample[spec.name].shape == spec.shape and sample[spec.name].dtype == np.dtype(spec.dtype)
            assert np.isfinite(sample[spec.name]).all()


def _digest(samples, names=None) -> str:
    h = hashlib.sha256()
    for sample in samples:
        for name in names or sample:
            h.update(name.encode())
            h.update(sample[name].tobytes())
    return h.hexdigest()[:16]


def test_the_numbers_do_not_move():
    """The tiny set's synthetic calibration (seed 0, 8 samples): a manifest records only (seed,
    count), so these numbers are what that record means. Transcendental functions (the timestep
    embedding, the images' waves) are compared within rounding, the rest bit for bit."""
    assert _digest(synthetic_samples("text_encoder", TINY, 8, 0)) == "42b885a826ada9a5"
    assert _digest(synthetic_samples("decoder", TINY, 8, 0)) == "2535179d58fcebaf"
    unet = synthetic_samples("diffusion", TINY, 8, 0)
    assert _digest(unet, ("latent", "context")) == "a3db5fca69965c3c"
    for i, sample in enumerate(unet):  # timesteps spread over the schedule: 62.5, 187.5, ...
        np.testing.assert_allclose(sample["timestep_embedding"], timestep_embedding((i + 0.5) * 125, 1), atol=1e-6)
    images = synthetic_samples("image_encoder", TINY, 8, 0)
    np.testing.assert_allclose([float(np.float64(s["image"]).sum()) for s in images[:3]],
                               [153.48424682894256, 226.23369081942656, 175.5487630707794], rtol=1e-5)
    assert images[0]["image"][0, 5, 7, 1] == pytest.approx(-0.2572190761566162, abs=1e-6)


def test_seeded():
    for component in COMPONENTS:
        a, b = synthetic_samples(component, TINY, 2, 3), synthetic_samples(component, TINY, 2, 3)
        assert _digest(a) == _digest(b)
        assert _digest(a) != _digest(synthetic_samples(component, TINY, 2, 4))


def test_starting_noise_is_the_pipelines():
    from sd2tflite.runtime.pipeline import GenerateSettings, Pipeline

    pipeline = Pipeline({}, TINY, tokenizer=None)
    np.testing.assert_array_equal(starting_noise(TINY, 11), pipeline.starting_noise(GenerateSettings("x", seed=11)))
    assert starting_noise(TINY, 11).shape == TINY.latent_shape


def test_pipeline_samples_without_encoders():
    rows = [[49406] + [49407] * 76, [49406, 320, 1125] + [49407] * 74]
    inputs = pipeline_samples(TINY, rows, (999, 500, 50), 7)
    assert [len(inputs[c]) for c in ("text_encoder", "image_encoder", "diffusion", "decoder")] == [2, 2, 3, 3]
    for component, samples in inputs.items():
        for sample in samples:
            for spec in COMPONENTS[component].input_specs(TINY):
                assert sample[spec.name].shape == spec.shape and sample[spec.name].dtype == np.dtype(spec.dtype)
    # The noisiest UNet input is mostly noise, the last mostly the clean latent it was made from.
    clean = inputs["decoder"][0]["latent"]
    assert np.corrcoef(inputs["diffusion"][2]["latent"].ravel(), clean.ravel())[0, 1] > 0.9
    assert abs(np.corrcoef(inputs["diffusion"][0]["latent"].ravel(), clean.ravel())[0, 1]) < 0.2
    assert inputs["decoder"][-1]["latent"] is inputs["diffusion"][-1]["latent"]


def test_the_litert_bench_worker_needs_no_converter():
    code = ("import sys; from sd2tflite.bench.worker import bench_inputs; from sd2tflite.core.registry import FAMILIES; "
            "bench_inputs(FAMILIES['tiny'].dims(128, 128), 0); "
            "print(sorted(m for m in ('sd2tflite.convert', 'tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
