"""Attention head counts of imported checkpoints: the weights give every width but not how a width
is split into heads. A diffusers folder's config.json says it; a single file does not, so convert
takes the family's convention (SD 1.x UNet 8 per level, SD 2.x and text encoders head dim 64), says
so in one line, and `--attention-heads` (counts or a config.json) overrides it. A wrong count changes
every attention output, so verify's reference must be built with the same counts as the file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from sd2tflite.core.manifest import load_manifest

from .conftest import assert_one_line_error, run

V1_FILE = Path(__file__).resolve().parent / "data" / "checkpoints" / "v1" / "sd-v1-tiny-ema.safetensors"
SMALL = ["--img-height", "128", "--img-width", "128", "-q"]
sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))


def _open(path, *heads):
    from sd2tflite.convert.checkpoint import open_checkpoint

    return open_checkpoint(path, attention_heads=heads)


def test_a_single_file_takes_the_convention_and_says_so():
    from sd2tflite.convert.checkpoint.architecture import heads_note

    ckpt = _open(V1_FILE)
    # the fixture: UNet 32 wide (8 heads: SD 1.x's 8 per level), text encoder 64 wide (head dim 64: 1)
    assert ckpt.architecture.unet.heads == (8,) and ckpt.architecture.text.heads == 1
    identity = ckpt.identity()
    assert identity["attention_heads_from"] == {"unet": "convention", "text_encoder": "convention"}
    assert "attention_heads" not in identity  # nothing overridden: the record reopens as it is
    note = heads_note(identity)
    assert "\n" not in note and "SD 1.x convention" in note and "UNet 8 per level" in note
    assert "text encoder 1" in note and "--attention-heads unet=N" in note


def test_a_diffusers_folder_reads_its_config_and_needs_no_note(tmp_path):
    from fidelity_models import write_folder

    from sd2tflite.convert.checkpoint.architecture import heads_note

    folder = write_folder("v2", tmp_path / "v2")
    ckpt = _open(folder)
    assert ckpt.architecture.unet.heads == (1, 1, 1) and ckpt.architecture.text.heads == 1
    assert ckpt.identity()["attention_heads_from"] == {"unet": "config.json", "text_encoder": "config.json"}
    assert heads_note(ckpt.identity()) is None
    # the option beats config.json
    over = _open(folder, "unet=2,4,2")
    assert over.architecture.unet.heads == (2, 4, 2) and over.heads_from["unet"] == "--attention-heads"
    assert over.heads_from["text_encoder"] == "config.json"


def test_the_override_as_counts_or_a_config(tmp_path):
    from sd2tflite.convert.checkpoint.architecture import heads_note

    ckpt = _open(V1_FILE, "unet=4", "text=2")
    assert ckpt.architecture.unet.heads == (4,) and ckpt.architecture.text.heads == 2
    assert ckpt.identity()["attention_heads"] == {"unet": [4], "text_encoder": 2}
    assert heads_note(ckpt.identity()) is None
    (tmp_path / "unet.json").write_text(json.dumps({"attention_head_dim": 2}))  # diffusers' name for SD's heads
    (tmp_path / "text.json").write_text(json.dumps({"num_attention_heads": 4}))
    ckpt = _open(V1_FILE, f"unet={tmp_path / 'unet.json'}", f"text_encoder={tmp_path / 'text.json'}")
    assert ckpt.architecture.unet.heads == (2,) and ckpt.architecture.text.heads == 4
    # only the UNet given: the note names the text encoder alone
    note = heads_note(_open(V1_FILE, "unet=4").identity())
    assert "text encoder 1" in note and "UNet" not in note


@pytest.mark.parametrize("heads, fragments", [
    (["unet=3"], ["UNet width 32 is not divisible by 3 heads", "fix --attention-heads"]),
    (["text_encoder=3"], ["text encoder width 64 is not divisible by 3 heads", "fix --attention-heads"]),
    (["unet=4,4"], ["lists 2 head counts for 1 levels", "one per level"]),
    (["unet=0"], ["'unet=0'", "from 1 to 4096"]),
    (["unet=eight"], ["'unet=eight'", "from 1 to 4096"]),
    (["text=1,2"], ["'text=1,2'", "one head count"]),
    (["vae=1"], ["'vae=1'", "use unet=N[,N...], text_encoder=N or COMPONENT=CONFIG.json"]),
    (["unet=4", "unet=2"], ["gives unet twice"]),
    (["unet=missing.json"], ["unet=missing.json: not a readable JSON config"]),
    (["unet=EMPTY"], ["the config has no attention_head_dim / num_attention_heads"]),
])
def test_a_bad_override_is_one_line(tmp_path, heads, fragments):
    from sd2tflite.core.errors import UsageError

    (tmp_path / "empty.json").write_text("{}")
    heads = [h.replace("EMPTY", str(tmp_path / "empty.json")) for h in heads]
    with pytest.raises(UsageError) as info:
        _open(V1_FILE, *heads)
    text = str(info.value)
    assert "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, text


def test_convert_says_what_it_assumed_and_the_override_reaches_verify(tmp_path):
    """The UNet converted with 4 heads (the convention says 8): the manifest records the override,
    convert's note names only what is still assumed, and verify rebuilds its reference with 4."""
    from safetensors.numpy import load_file, save_file

    # CLIP's 49,408 token rows (the fixture keeps 256, for size; extra rows zero), as a real
    # single file has them
    tensors = load_file(V1_FILE)
    for name, value in tensors.items():
        if name.endswith("token_embedding.weight"):
            tensors[name] = np.concatenate([value, np.zeros((49408 - len(value), value.shape[1]), value.dtype)])
    weights = tmp_path / V1_FILE.name
    save_file(tensors, str(weights))
    out = tmp_path / "set"
    result = run(["convert", "--weights", str(weights), "--components", "diffusion", "--attention-heads", "unet=4",
                  *SMALL, "-o", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: attention heads")]
    assert len(notes) == 1 and "text encoder 1" in notes[0] and "UNet" not in notes[0], result.stderr
    identity = load_manifest(out).weights["diffusion"]
    assert identity["architecture"]["unet"]["heads"] == [4] and identity["attention_heads"] == {"unet": [4]}
    result = run(["verify", str(out), "--no-end-to-end", "-q"])
    assert result.exit_code == 0, result.output
    assert "✓ parity     diffusion" in result.output, result.output


def test_the_cli_refuses_bad_counts_and_counts_for_keras_cv_weights(tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(run(["convert", "--weights", str(V1_FILE), "--attention-heads", "unet=3", *SMALL,
                               "-o", str(out)]), 2, "not divisible by 3 heads", "--attention-heads")
    assert_one_line_error(run(["convert", "--model", "tiny", "--attention-heads", "unet=4", *SMALL, "-o", str(out)]),
                          2, "--attention-heads apply to PyTorch checkpoints")
    assert not out.exists()
