"""A set is a closed box, one conversion per folder (tests/test_cli.py), no silent garbage: every
class of hostile or broken input ends in one line naming the problem, and nothing is written."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import assert_one_line_error, run


def _generate(model_dir, out, *extra):
    return run(["generate", str(model_dir), "a red circle", "--steps", "1", "-o", str(out), "-q", *extra])


# ---------------------------------------------------------------- 1. files that resolve outside the set


def _link_out(set_dir: Path, name: str, tmp_path: Path) -> Path:
    """Moves a file of the set out and leaves a symlink in its place (same bytes, same sha256)."""
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir(exist_ok=True)
    shutil.move(set_dir / name, outside)
    (set_dir / name).symlink_to(outside)
    return outside


@pytest.mark.parametrize("name", ["decoder.tflite", "manifest.json"])
def test_a_link_out_of_the_set_is_refused_by_every_command(fp32_set, tmp_path, name):
    _link_out(fp32_set, name, tmp_path)
    assert_one_line_error(_generate(fp32_set, tmp_path / "o.png"), 1, name, "resolves outside the set")
    assert not (tmp_path / "o.png").exists()
    assert_one_line_error(run(["bench", str(fp32_set), "-q"]), 1, name, "resolves outside the set")
    result = run(["push-hub", str(fp32_set), "--repo-id", "someone/x", "--dry-run"])
    assert_one_line_error(result, 1, name, "resolves outside the set")


def test_verify_reports_a_link_out_as_a_failed_check(fp32_set, tmp_path):
    from sd2tflite.runtime.integrity import check_integrity

    _link_out(fp32_set, "decoder.tflite", tmp_path)
    _, checks = check_integrity(fp32_set)
    failed = [c for c in checks if not c.passed]
    assert [(c.name, c.component) for c in failed] == [("decoder.tflite", "decoder")]
    assert "resolves outside the set" in failed[0].detail


def test_push_hub_never_uploads_a_linked_verify_report(fp32_set, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"checks": [], "passed": True}))
    (fp32_set / "verify.json").symlink_to(secret)
    result = run(["push-hub", str(fp32_set), "--repo-id", "someone/x", "--dry-run"])
    assert_one_line_error(result, 1, "verify.json", "resolves outside the set")


# ---------------------------------------------------------------- 3. non-finite numbers


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_guidance_is_refused(fp32_set, tmp_path, value):
    assert_one_line_error(_generate(fp32_set, tmp_path / "o.png", "--guidance", value), 2, "--guidance", "finite")
    assert not (tmp_path / "o.png").exists()


def test_noise_with_nan_is_refused(fp32_set, tmp_path):
    from sd2tflite.core.manifest import load_manifest

    noise = np.zeros(load_manifest(fp32_set).model_dims.latent_shape, np.float32)
    noise[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "n.npy", noise)
    result = _generate(fp32_set, tmp_path / "o.png", "--noise", str(tmp_path / "n.npy"))
    assert_one_line_error(result, 2, "noise holds NaN or Inf")


def test_a_component_that_outputs_nan_stops_the_run_naming_it(tiny_dims):
    from sd2tflite.core.errors import NumericsError
    from sd2tflite.runtime.pipeline import GenerateSettings, Pipeline
    from sd2tflite.runtime.tokenizer import ClipTokenizer

    calls = {"diffusion": 0}

    def unet(latent, timestep_embedding, context):
        calls["diffusion"] += 1  # the second step overflows
        return {"noise_pred": latent * (math.inf if calls["diffusion"] > 2 else 0.5)}

    components = {
        "text_encoder": lambda tokens, positions: {"context": np.zeros((1, 77, tiny_dims.context_dim), np.float32)},
        "diffusion": unet,
        "decoder": lambda latent: {"image": np.zeros((1, 128, 128, 3), np.float32)},
    }
    pipeline = Pipeline(components, tiny_dims, ClipTokenizer.generated())
    with pytest.raises(NumericsError, match="the diffusion output holds .* NaN/Inf values at step 2 of 3"):
        pipeline.generate(GenerateSettings("x", steps=3))


# ---------------------------------------------------------------- 4. the manifest beyond its schema


def _edit_manifest(set_dir: Path, edit) -> None:
    path = set_dir / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d["dims"].__setitem__("img_height", 4096), "latent is float32[1, 16, 16, 4], dims give"),
    (lambda d: d["dims"].pop("img_width"), "dims.img_width is None"),
    (lambda d: d.__setitem__("quant", "fp8"), "precision 'fp8' is unknown"),
    (lambda d: d["artifacts"][-1].__setitem__("component", "vae_encoder"), "component 'vae_encoder' is unknown"),
])
def test_a_manifest_that_does_not_describe_its_files_is_refused(fp32_set, tmp_path, edit, fragment):
    _edit_manifest(fp32_set, edit)
    assert_one_line_error(_generate(fp32_set, tmp_path / "o.png"), 1, fragment)
    verify = run(["verify", str(fp32_set), "--no-end-to-end", "-q"])
    assert verify.exit_code == 1, verify.output
    assert "✗ integrity" in verify.output and fragment in verify.output and "FAILED" in verify.output
    assert "unexpected" not in verify.output + verify.stderr


# ---------------------------------------------------------------- 5. secrets


def test_the_token_never_appears_even_with_a_traceback(fp32_set, monkeypatch):
    import sd2tflite.publish.push as push

    token = "hf_SuperSecretToken1234567890"

    def echoing_server(*args, **kwargs):
        raise RuntimeError(f"400 Bad Request: invalid header Authorization: Bearer {token}")

    monkeypatch.setattr(push, "push", echoing_server)
    for verbose in ([], ["-v"]):
        result = run(["push-hub", str(fp32_set), "--repo-id", "someone/x", "--token", token, *verbose])
        assert result.exit_code == 1
        assert token not in result.output and "Bearer ***" in result.output
    assert "Traceback" in result.output  # -v still shows where it failed


# ---------------------------------------------------------------- 6. outputs and messages


def test_two_outputs_naming_one_file_are_refused_before_work(fp32_set, tmp_path):
    out = tmp_path / "x.png"
    result = _generate(fp32_set, out, "--save-latents", str(out))
    assert_one_line_error(result, 2, "-o and --save-latents both name")
    assert not out.exists()


def test_a_prompt_that_is_not_utf8_is_one_line(fp32_set, tmp_path):
    result = run(["generate", str(fp32_set), "caf\udce9", "--steps", "1", "-o", str(tmp_path / "o.png"), "-q"])
    assert_one_line_error(result, 2, "not valid UTF-8")


def test_an_unwritable_output_is_one_line(fp32_set):
    result = _generate(fp32_set, Path("/proc/sd2tflite-test.png"))
    assert_one_line_error(result, 1, "cannot write /proc/sd2tflite-test.png")


def test_quiet_generate_prints_nothing_but_the_path(fp32_set, tmp_path):
    out = tmp_path / "o.png"
    proc = subprocess.run([sys.executable, "-m", "sd2tflite.cli", "generate", str(fp32_set), "a red circle",
                           "--steps", "1", "-o", str(out), "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout.strip() == str(out)


def test_more_unet_parts_than_layers_says_so(tmp_path):
    from .test_cli import TINY

    result = run([*TINY, "-o", str(tmp_path / "o"), "--components", "diffusion", "--unet-parts", "5000"])
    assert_one_line_error(result, 1, "--unet-parts 5000", "at most")
    assert not (tmp_path / "o").exists()
