"""The trained tiny model shipped in the package (scripts/train_tiny.py): its VAE latent is about unit
variance and round-trips the shapes pictures. What the pipelines draw with it: tests/test_adherence.py."""

from __future__ import annotations

import numpy as np
import pytest

from sd2tflite.core.registry import CORE_COMPONENTS, FAMILIES
from sd2tflite.verify import shapes

# Measured on the shipped weights (benchmarks/records/train-tiny.json); the bar leaves room for float
# differences between machines, not for a worse model. What the pipelines draw: tests/test_adherence.py.
MIN_VAE_ROUND_TRIP = 0.95  # measured 0.983 on these 30, 0.981 on all 450


@pytest.fixture(scope="module")
def trained():
    from sd2tflite.convert.weights import build_with_weights, parse_weights, resolve

    family = FAMILIES["tiny"]
    dims = family.dims()
    resolved = resolve(parse_weights("trained", family), family, list(CORE_COMPONENTS))
    return dims, {c: build_with_weights("tiny", c, dims, resolved[c]) for c in ("image_encoder", "decoder")}


def test_vae_latent_is_unit_variance_and_round_trips_the_pictures(trained):
    dims, models = trained
    assert (dims.img_height, dims.img_width) == (128, 128)
    scenes = shapes.all_scenes()[::15]
    images = np.stack([shapes.render(s, seed=i) for i, s in enumerate(scenes)])
    latents = np.asarray(models["image_encoder"](images, training=False))
    assert latents.shape == (len(scenes), 16, 16, 4)
    assert 0.8 < latents.std() < 1.25 and np.abs(latents.mean(axis=(0, 1, 2))).max() < 0.25
    decoded = np.asarray(models["decoder"](latents, training=False))
    round_trip = shapes.adherence(decoded, scenes)
    assert round_trip.score >= MIN_VAE_ROUND_TRIP, round_trip.per_attribute

