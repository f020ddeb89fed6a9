"""Manifest round trip, schema and path safety (no TensorFlow needed)."""

from __future__ import annotations

import copy
import json

import pytest

from sd2tflite.components import TensorSpec
from sd2tflite.errors import ManifestError
from sd2tflite.manifest import (
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


def test_schema_is_valid_json_and_documents_fields():
    text = json.dumps(MANIFEST_SCHEMA)
    for field in ("sha256", "wiring", "peak_rss_bytes", "conversion_seconds", "signature_key"):
        assert field in text


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("artifacts"), "missing manifest.artifacts"),
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
