"""verify: every precision passes with its stated figures; damage is caught, all of it, by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sd2tflite.core.manifest import load_manifest
from sd2tflite.core.precisions import RECIPES

from .conftest import SET_PRECISIONS, assert_one_line_error, run, seeded_inputs


@pytest.fixture(scope="module")
def reports(tiny_sets):
    from sd2tflite.verify.run import VerifyRequest, verify

    return {quant: verify(VerifyRequest(tiny_sets[quant])) for quant in SET_PRECISIONS}  # each precision's own steps


@pytest.mark.parametrize("quant", SET_PRECISIONS)
def test_every_precision_passes_verify(reports, quant):
    report = reports[quant]
    print("\n" + report.table())
    assert report.passed, report.table()
    groups = [c.group for c in report.checks]
    assert groups.count("parity") == 4 and groups.count("end-to-end") == 1
    assert groups.count("integrity") == 4 + 5  # manifest, structure, description, no extras + 5 files (2 UNet parts)
    for check in report.checks:
        if check.group == "parity":
            min_psnr, min_cosine = RECIPES[quant].tolerance(check.name)
            assert check.figures["psnr_db"] >= min_psnr and check.figures["cosine"] >= min_cosine
        if check.group == "end-to-end":
            assert check.figures["psnr_db"] >= RECIPES[quant].min_image_psnr_db
            assert check.figures["steps"] == RECIPES[quant].end_to_end_steps == (25 if quant == "int8" else 3)


def test_fp32_is_near_exact(reports):
    figures = {c.name: c.figures for c in reports["fp32"].checks if c.figures}
    assert all(figures[c]["psnr_db"] > 110 for c in ("text_encoder", "diffusion", "decoder", "image_encoder"))
    end_to_end = next(c for c in reports["fp32"].checks if c.group == "end-to-end").figures
    assert end_to_end["max_abs"] <= 2  # uint8 pixels: rounding only


def test_vae_parity_reference_runs_in_float64(tiny_sets, tiny_dims):
    """Keras' float32 GroupNormalization is off by ~1e-3 at full-size VAE group sizes, more than a
    correct fp32 file: the decoder and image encoder are compared with a float64 copy of their Keras
    model, same weights (verify/reference.py)."""
    import numpy as np

    from sd2tflite.convert.keras_models import call_keras
    from sd2tflite.verify.reference import FLOAT64_PARITY, reference_models

    assert FLOAT64_PARITY == {"decoder", "image_encoder"}
    models = reference_models(load_manifest(tiny_sets["fp32"]), components=["decoder", "text_encoder"])
    assert models.for_parity("text_encoder") is models["text_encoder"]
    twin = models.for_parity("decoder")
    assert twin is not models["decoder"]
    assert {w.dtype for w in twin.get_weights()} == {np.dtype("float64")}
    for ours, theirs in zip(twin.get_weights(), models["decoder"].get_weights()):
        assert np.array_equal(ours, theirs.astype(np.float64))
    sample = seeded_inputs("decoder", tiny_dims)[0]
    exact, single = call_keras(twin, sample)[0], call_keras(models["decoder"], sample)[0]
    assert exact.dtype == np.float64 and single.dtype == np.float32
    assert not np.array_equal(exact, single)  # it computed in float64 ...
    np.testing.assert_allclose(exact, single, atol=1e-4)  # ... the same function


def test_verify_compares_each_component_with_its_parity_model(tiny_sets, monkeypatch):
    from sd2tflite.verify.reference import ReferenceModels
    from sd2tflite.verify.run import VerifyRequest, verify

    asked, real = [], ReferenceModels.for_parity
    monkeypatch.setattr(ReferenceModels, "for_parity", lambda self, c: asked.append(c) or real(self, c))
    assert verify(VerifyRequest(tiny_sets["fp32"], end_to_end=False)).passed
    assert sorted(asked) == ["decoder", "diffusion", "image_encoder", "text_encoder"]


def test_precisions_order_by_fidelity(reports):
    def unet(quant):
        return next(c.figures["psnr_db"] for c in reports[quant].checks if c.name == "diffusion")

    assert unet("fp32") > unet("fp16") > unet("dynamic") > unet("int8")


def test_cli_report_json_and_exit_code(tiny_sets, tmp_path):
    result = run(["verify", str(tiny_sets["fp16"]), "--steps", "1", "--no-end-to-end", "--json", str(tmp_path / "r.json"), "-q"])
    assert result.exit_code == 0, result.output
    assert "✓ parity     diffusion" in result.output and "PASSED" in result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is True and data["quant"] == "fp16"
    # Re-running onto that report may replace it; onto any other file, not without --force.
    from sd2tflite.core.outputs import json_with_keys

    assert json_with_keys("checks", "manifest_sha256")(tmp_path / "r.json")
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    result = run(["verify", str(tiny_sets["fp16"]), "--json", str(tmp_path / "notes.json"), "-q"])
    assert_one_line_error(result, 2, "notes.json exists and is not a verify report", "--force")
    assert (tmp_path / "notes.json").read_text() == '{"mine": 1}'
    result = run(["verify", str(tiny_sets["fp16"]), "--json", str(tmp_path / "no" / "r.json"), "-q"])
    assert_one_line_error(result, 2, "does not exist: create it first")
    assert {c["group"] for c in data["checks"]} == {"integrity", "parity"}


def test_damage_is_collected_and_named(tiny_sets, tmp_path):
    """Two damaged files, an unlisted file and a wrong hash: every one reported, exit 1."""
    set_dir = Path(shutil.copytree(tiny_sets["dynamic"], tmp_path / "set"))
    manifest = load_manifest(set_dir)
    decoder = set_dir / manifest.parts_of("decoder")[0].path
    decoder.write_bytes(decoder.read_bytes()[:1000])  # truncated
    part = set_dir / manifest.parts_of("diffusion")[0].path
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    part.write_bytes(bytes(data))
    (set_dir / "stray.tflite").write_bytes(b"x")
    raw = json.loads((set_dir / "manifest.json").read_text())
    raw["artifacts"][0]["sha256"] = "0" * 64  # the text encoder's recorded hash is wrong
    (set_dir / "manifest.json").write_text(json.dumps(raw))

    result = run(["verify", str(set_dir), "--steps", "1", "-q", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 1, result.output
    failed = {c["name"]: c["detail"] for c in json.loads((tmp_path / "r.json").read_text())["checks"]
              if not c["passed"]}
    assert "1,000 bytes" in failed["decoder.tflite"]
    assert "sha256" in failed[part.name] and "sha256" in failed["text_encoder.tflite"]
    assert "stray.tflite" in failed["no unlisted .tflite files"]
    # Components with damaged files are not compared; the end-to-end run needs them.
    assert "not run" in failed["decoder"] and "not run" in failed["diffusion"]
    assert "not run" in failed["pipeline"]
    assert "✓ parity     image_encoder" in result.output
    assert "✗ integrity  decoder.tflite" in result.output
    # Accelerator placement is information: damaged files are not read for it, intact ones are.
    measured = json.loads((tmp_path / "r.json").read_text())["accelerators"]["accelerators"]
    assert [m["accelerator"][:4] for m in measured] == ["NPU:", "GPU:"]
    for accelerator in measured:
        files = {f["path"]: f for f in accelerator["files"]}
        assert files["decoder.tflite"]["reason"] == files[part.name]["reason"] == \
            "the file failed its integrity check"
        assert "integrity" not in (files["image_encoder.tflite"]["reason"] or "")


def test_escaping_manifest_path_fails_verify(tiny_sets, tmp_path):
    set_dir = Path(shutil.copytree(tiny_sets["fp32"], tmp_path / "set"))
    raw = json.loads((set_dir / "manifest.json").read_text())
    raw["artifacts"][1]["path"] = "/etc/passwd"
    (set_dir / "manifest.json").write_text(json.dumps(raw))
    result = run(["verify", str(set_dir), "-q"])
    assert result.exit_code == 1
    assert "outside the model directory" in result.output and "✗" in result.output


def test_usage_errors_exit_2(tiny_sets):
    assert_one_line_error(run(["verify", str(tiny_sets["fp32"]), "--steps", "0", "-q"]), 2, "--steps")


def test_a_file_litert_cannot_run_fails_its_check_and_verify_goes_on(fp32_set, monkeypatch):
    """An operator without a kernel (int16x8's SQUARED_DIFFERENCE once was) fails at the first call:
    a failed parity line with LiteRT's reason, the end-to-end check skipped, no traceback."""
    from sd2tflite.runtime import litert
    from sd2tflite.verify.run import VerifyRequest, verify

    original = litert.LiteRTComponent.__call__

    def call(self, **inputs):
        if self.parts[0].component == "diffusion":
            raise RuntimeError("SquaredDifference only supports FLOAT32 and INT32 now, got 7.Node number 160 "
                               "(SQUARED_DIFFERENCE) failed to invoke.")
        return original(self, **inputs)

    monkeypatch.setattr(litert.LiteRTComponent, "__call__", call)
    report = verify(VerifyRequest(fp32_set, steps=1))
    failed = {c.name: c.detail for c in report.checks if not c.passed}
    assert failed == {"diffusion": "LiteRT cannot run it: SquaredDifference only supports FLOAT32 and INT32 now, got 7",
                      "pipeline": "not run: diffusion failed an earlier check"}, failed
