"""PyTorch checkpoints through the product: `convert --weights FILE.safetensors` writes a set whose
manifest records where every weight came from, and `verify` rebuilds the reference from the same
files. (The importer's agreement with diffusers / transformers: tests/test_checkpoint.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sd2tflite.core.manifest import load_manifest

from .conftest import assert_one_line_error, run

DATA = Path(__file__).resolve().parent / "data" / "checkpoints"
V1_FILE = DATA / "v1" / "sd-v1-tiny-ema.safetensors"
VOCAB = Path(__file__).resolve().parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
SMALL = ["--img-height", "128", "--img-width", "128", "-q"]


@pytest.fixture(scope="module")
def decoder_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "set"
    result = run(["convert", "--weights", str(V1_FILE), "--components", "decoder", "--quant", "fp32", *SMALL,
                  "-o", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    return out


def test_the_manifest_records_the_checkpoint(decoder_set):
    from sd2tflite.core.fsutil import sha256_file

    manifest = load_manifest(decoder_set)
    identity = manifest.weights["decoder"]
    assert manifest.family == "v1" and manifest.prediction_type == "epsilon"
    assert identity["kind"] == "checkpoint" and identity["source_format"] == "single-file"
    assert identity["ema"] is True and identity["prediction_type_from"] == "family default"
    assert {f["path"] for f in identity["files"]} == {str(V1_FILE)}
    assert all(f["sha256"] == sha256_file(Path(f["path"])) for f in identity["files"])
    # The widths come from the tensors: the fixture's UNet is 32 wide, its text encoder 64.
    assert manifest.dims["timestep_dim"] == 32 and manifest.dims["context_dim"] == 64


def test_verify_rebuilds_the_reference_from_the_same_file(decoder_set, tmp_path):
    result = run(["verify", str(decoder_set), "--no-end-to-end", "--vocab", str(VOCAB), "-q"])
    assert result.exit_code == 0, result.output
    assert "✓ parity     decoder" in result.output and "PSNR 1" in result.output  # fp32: > 100 dB


def test_verify_refuses_a_changed_checkpoint(decoder_set, tmp_path):
    moved = Path(shutil.copytree(decoder_set, tmp_path / "set"))
    manifest = json.loads((moved / "manifest.json").read_text())
    changed = tmp_path / "changed.safetensors"
    changed.write_bytes(V1_FILE.read_bytes()[:-1] + b"\x00")
    manifest["weights"]["decoder"]["files"][0]["path"] = str(changed)
    (moved / "manifest.json").write_text(json.dumps(manifest))
    result = run(["verify", str(moved), "--no-end-to-end", "-q"])
    assert_one_line_error(result, 1, "changed.safetensors", "gone or changed")


@pytest.mark.parametrize("args, code, fragment", [
    (["--weights", "model.ckpt"], 1, "unpickling"),
    (["--weights", str(V1_FILE), "--model", "tiny"], 2, "--model tiny has no PyTorch checkpoints"),
    (["--lora", "x.safetensors"], 2, "apply to PyTorch checkpoints"),
    (["--weights", str(V1_FILE), "--weights", "tokenizer=x.safetensors"], 2, "bad --weights override"),
])
def test_bad_checkpoint_options(tmp_path, args, code, fragment):
    if args[1] == "model.ckpt":
        (tmp_path / "model.ckpt").write_bytes(b"\x80\x04not really a pickle")
        args = ["--weights", str(tmp_path / "model.ckpt")]
    out = tmp_path / "out"
    result = run(["convert", *args, *SMALL, "-o", str(out)])
    assert_one_line_error(result, code, fragment)
    assert not out.exists()


def _with_clip_vocabulary(source: Path, tmp_path: Path) -> Path:
    """A copy whose text encoder has CLIP's 49,408 token rows (the fixtures keep 256, for size):
    the pipeline feeds CLIP's token ids. The extra rows are zeros."""
    from safetensors.numpy import load_file, save_file

    copy = tmp_path / source.name
    (shutil.copytree if source.is_dir() else shutil.copy)(source, copy)
    for path in [copy] if copy.is_file() else sorted(copy.rglob("*.safetensors")):
        tensors = load_file(path)
        for name, value in tensors.items():
            if name.endswith("token_embedding.weight"):
                tensors[name] = np.concatenate([value, np.zeros((49408 - len(value), value.shape[1]), value.dtype)])
        save_file(tensors, path)
    return copy


def test_a_text_encoder_without_clips_vocabulary_is_one_line(tmp_path):
    out = tmp_path / "set"
    assert run(["convert", "--weights", str(V1_FILE), "--components", "text_encoder", *SMALL, "-o", str(out)]) \
        .exit_code == 0
    result = run(["generate", str(out), "a cat", "--vocab", str(VOCAB), "-o", str(tmp_path / "x.png"), "-q"])
    assert_one_line_error(result, 2, "knows 256 tokens", "CLIP's vocabulary")


@pytest.mark.slow  # all four components, twice: minutes on 2 cores
@pytest.mark.parametrize("weights, extra", [
    (DATA / "v1" / "sd-v1-tiny-ema.safetensors", ["--lora", str(DATA / "lora" / "lora_kohya.safetensors") + ":0.7"]),
    (DATA / "v2" / "diffusers", []),
])
def test_a_whole_checkpoint_converts_and_verifies(tmp_path, weights, extra):
    weights = _with_clip_vocabulary(weights, tmp_path)
    out = tmp_path / "set"
    result = run(["convert", "--weights", str(weights), *extra, "--quant", "dynamic", *SMALL, "-o", str(out)])
    assert result.exit_code == 0, result.output
    result = run(["verify", str(out), "--vocab", str(VOCAB), "-q"])
    assert result.exit_code == 0, result.output
