"""Weight sources: parsing, local directory layout, Hub download with pinned hashes (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

import sd2tflite.convert.weights as W
from sd2tflite.core.fsutil import sha256_file
from sd2tflite.core.registry import FAMILIES, HubFile
from sd2tflite.core.errors import UsageError, WeightsError

HDF5 = b"\x89HDF\r\n\x1a\n"


def fake_h5(path: Path, payload: bytes = b"") -> Path:
    path.write_bytes(HDF5 + payload)
    return path


def test_parse_sources(tmp_path):
    v1, tiny = FAMILIES["v1"], FAMILIES["tiny"]
    assert W.parse_weights(None, v1).kind == "hub"
    assert W.parse_weights(None, tiny) == W.WeightsSource("random", seed=0)
    assert W.parse_weights("random:7", tiny).seed == 7
    assert W.parse_weights(str(tmp_path), v1).directory == tmp_path
    files = W.parse_weights("decoder=a.h5, diffusion=b.h5", v1).files
    assert dict(files) == {"decoder": Path("a.h5"), "diffusion": Path("b.h5")}
    with pytest.raises(UsageError, match="COMPONENT=PATH"):
        W.parse_weights("decoder=", v1)


def test_directory_uses_hub_file_names(tmp_path):
    v1 = FAMILIES["v1"]
    for hub_file in v1.hub_files.values():
        fake_h5(tmp_path / hub_file.filename, hub_file.filename.encode())
    resolved = W.resolve(W.parse_weights(str(tmp_path), v1), v1, ["text_encoder", "image_encoder"])
    assert resolved["text_encoder"].path == tmp_path / "kcv_encoder.h5"
    assert resolved["image_encoder"].identity["kind"] == "file"
    assert resolved["image_encoder"].identity["sha256"] == sha256_file(tmp_path / "vae_encoder.h5")
    (tmp_path / "kcv_decoder.h5").unlink()
    with pytest.raises(WeightsError, match="kcv_decoder.h5"):
        W.resolve(W.parse_weights(str(tmp_path), v1), v1, ["decoder"])


def test_hub_download_checks_the_pinned_sha256(tmp_path, monkeypatch):
    import huggingface_hub

    good = fake_h5(tmp_path / "kcv_decoder.h5", b"released")
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(good)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    family = FAMILIES["v1"]
    with pytest.raises(WeightsError, match="sha256"):
        W.resolve(W.WeightsSource("hub"), family, ["decoder"])
    assert calls == [("fchollet/stable-diffusion", "kcv_decoder.h5")]
    pinned = dict(family.hub_files, decoder=HubFile("fchollet/stable-diffusion", "kcv_decoder.h5", sha256_file(good)))
    patched = type(family)(**{**family.__dict__, "hub_files": pinned})
    resolved = W.resolve(W.WeightsSource("hub"), patched, ["decoder"])["decoder"]
    assert resolved.path == good
    assert resolved.identity == {"kind": "hub", "repo_id": "fchollet/stable-diffusion",
                                 "filename": "kcv_decoder.h5", "sha256": sha256_file(good)}


def test_random_seeds_differ_per_component():
    resolved = W.resolve(W.WeightsSource("random", seed=5), FAMILIES["tiny"], ["text_encoder", "decoder"])
    assert resolved["text_encoder"].seed == 5 and resolved["decoder"].seed == 7
