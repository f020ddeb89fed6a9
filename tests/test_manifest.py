"""Manifest round trip, schema and path safety (no TensorFlow needed)."""

from __future__ import annotations

import copy
import json

import pytest

from sd2tflite.core.registry import TensorSpec
from sd2tflite.core.errors import ManifestError
from sd2tflite.core.manifest import (
    MANIFEST_SCHEMA,
    Artifact,
    Manifest,
    load_manifest,
    save_manifest,
)


def sample_manifest() -> Manifest:
    spec_in = TensorSpec("latent", (1, 16, 16, 4), "float32")
    spec_mid = TensorSpec("t010_res_block", (1, 4, 4, 64), "float32")
    parts = tuple(
        Artifact(
            component="diffusion", part=i, num_parts=2, path=f"diffusion_part{i}.tflite",
            sha256="ab" * 32, bytes=1000 + i, params=250 + i, signature_key="serving_default",
            inputs=(spec_in,) if i == 0 else (spec_mid,), outputs=(spec_mid,) if i == 0 else (spec_in,),
            wiring={"latent": None} if i == 0 else {"t010_res_block": 0},
            conversion_seconds=1.5, peak_rss_bytes=123456, build_key="k" * 64,
        )
        for i in range(2)
    )
    return Manifest(family="tiny", quant="fp32", dims={"img_height": 128}, weights={"diffusion": {"kind": "random", "seed": 1}},
                    artifacts=parts, versions={"sd2tflite": "0.1.0"}, command="sd2tflite convert")


def test_round_trip(tmp_path):
    manifest = sample_manifest()
    save_manifest(manifest, tmp_path)
    loaded = load_manifest(tmp_path)
    assert loaded == manifest
    assert loaded.parts_of("diffusion")[1].wiring == {"t010_res_block": 0}
    assert not list(tmp_path.glob(".*tmp*")), "no temp file left behind"


def test_schema_describes_every_field_the_dataclasses_write():
    # A field added to Manifest / Artifact without its schema entry would go unvalidated.
    assert set(MANIFEST_SCHEMA["properties"]) == set(Manifest.__dataclass_fields__)
    assert set(MANIFEST_SCHEMA["properties"]["artifacts"]["items"]["properties"]) == set(Artifact.__dataclass_fields__)
    json.dumps(MANIFEST_SCHEMA)  # publishable as JSON


@pytest.mark.parametrize("dims, message", [
    ({"img_height": 128}, "dims.img_width is None"),
    ({"img_height": 128, "img_width": 128, "batch_size": 0, "max_text_length": 77, "context_dim": 768,
      "vocab_size": 49408}, "dims.batch_size is 0"),
])
def test_dims_must_be_complete(dims, message):
    # A missing img_width must not silently become 512 (generate would allocate for the wrong size).
    manifest = Manifest(**{**sample_manifest().__dict__, "dims": dims})
    with pytest.raises(ManifestError, match=message):
        manifest.model_dims


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("artifacts"), "manifest.artifacts is missing"),
        (lambda d: d.__setitem__("format_version", 99), "format_version"),
        (lambda d: d["artifacts"][0].__setitem__("bytes", "big"), "bytes should be integer"),
        (lambda d: d["artifacts"][0].__setitem__("path", "../../etc/passwd"), "outside the model directory"),
        (lambda d: d["artifacts"][0].__setitem__("path", "/abs/file.tflite"), "outside the model directory"),
    ],
)
def test_bad_manifests_are_refused(tmp_path, mutate, message):
    data = copy.deepcopy(sample_manifest().to_json())
    mutate(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        load_manifest(tmp_path)


def test_missing_and_broken_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)
