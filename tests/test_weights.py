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
    assert W.parse_weights(None, tiny) == W.WeightsSource("trained")
    assert W.parse_weights("random", tiny) == W.WeightsSource("random", seed=0)
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


def test_trained_weights_ship_with_the_package_and_name_their_sha256():
    tiny = FAMILIES["tiny"]
    resolved = W.resolve(W.parse_weights(None, tiny), tiny, ["text_encoder", "diffusion", "decoder", "image_encoder"])
    total = 0
    for component, weights in resolved.items():
        assert weights.path == W.TRAINED_ROOT / "tiny" / f"{component}.weights.h5"
        assert weights.identity == {"kind": "trained", "name": "sd2tflite-tiny", "file": f"tiny/{component}.weights.h5",
                                    "sha256": sha256_file(weights.path)}
        assert W.from_identity(weights.identity, tiny, component) == weights
        total += weights.path.stat().st_size
    assert total < 10e6  # float16, gzip, unused token rows zeroed
    with pytest.raises(UsageError, match="ships no trained weights"):
        W.parse_weights("trained", FAMILIES["v1"])
    stale = dict(resolved["decoder"].identity, sha256="0" * 64)
    with pytest.raises(WeightsError, match="convert it again"):
        W.from_identity(stale, tiny, "decoder")


def test_the_tiny_default_size_is_what_it_is_trained_for():
    from sd2tflite.convert.request import ConvertOptions, build_request

    tiny = build_request(ConvertOptions(family="tiny"), resolve_weights=False)
    assert (tiny.dims.img_height, tiny.dims.img_width) == (128, 128)
    v1 = build_request(ConvertOptions(family="v1"), resolve_weights=False)
    assert (v1.dims.img_height, v1.dims.img_width) == (512, 512)
    wide = build_request(ConvertOptions(family="tiny", img_width=256), resolve_weights=False)
    assert (wide.dims.img_height, wide.dims.img_width) == (128, 256)


def test_reused_builds_are_keyed_by_everything_a_build_depends_on():
    """reuse_keras_builds (the suite runs inside one): the same model and weights give the same
    object; another seed, another dtype policy or no block at all give their own build; planning
    takes any build of the same graph."""
    import keras

    tiny = FAMILIES["tiny"]
    # A size no other test builds: the suite's own block may already hold other tiny decoders.
    dims = tiny.dims(384, 128)
    seed1, seed2 = (W.resolve(W.parse_weights(f"random:{s}", tiny), tiny, ["decoder"])["decoder"] for s in (1, 2))
    with W.reuse_keras_builds():
        first = W.build_with_weights("tiny", "decoder", dims, seed1)
        with W.reuse_keras_builds():  # nested: the outer block's builds
            assert W.build_with_weights("tiny", "decoder", dims, seed1) is first
        assert W.build_for_plan("tiny", "decoder", dims, seed2) is first
        other = W.build_with_weights("tiny", "decoder", dims, seed2)
        assert other is not first
        assert not all((a == b).all() for a, b in zip(first.get_weights(), other.get_weights()))
        before = keras.config.dtype_policy()
        keras.config.set_dtype_policy("float64")
        try:
            assert W.build_with_weights("tiny", "decoder", dims, seed1) is not first
        finally:
            keras.config.set_dtype_policy(before)
        assert W.build_with_weights("tiny", "decoder", dims.__class__(64, 64, context_dim=768), seed1) is not first
