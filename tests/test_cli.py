"""The convert command end to end through Click: outputs, re-runs, and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sd2tflite.core.manifest import load_manifest

from .conftest import IMG, assert_one_line_error, run, seeded_inputs

TINY = ["convert", "--model", "tiny", "--img-height", str(IMG), "--img-width", str(IMG), "-q"]


def test_help_does_not_import_tensorflow():
    code = (
        "import sys; from click.testing import CliRunner; from sd2tflite.cli import main; "
        "r = CliRunner().invoke(main, ['--help']); r2 = CliRunner().invoke(main, ['convert', '--help']); "
        "assert r.exit_code == 0 and r2.exit_code == 0 and '--max-part-bytes' in r2.output; "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


@pytest.mark.parametrize(
    "extra, code, fragment",
    [
        (["--model", "v9"], 2, "unknown model 'v9'"),
        (["--quant", "int4"], 2, "unknown precision 'int4'"),
        (["--img-height", "100"], 2, "multiple of 128"),
        (["--batch-size", "0"], 2, "--batch-size 0"),
        (["--components", "unet"], 2, "unknown component 'unet'"),
        (["--unet-parts", "0"], 2, "--unet-parts 0"),
        (["--max-part-bytes", "3GiB"], 2, "outside 1 MiB .. 2 GiB"),
        (["--max-part-bytes", "0"], 2, "outside 1 MiB .. 2 GiB"),
        (["--weights", "random:abc"], 2, "bad seed"),
        (["--memory-budget", "100MB"], 2, "--memory-budget 100,000,000 is too small"),
        (["--weights", "/no/such/dir"], 2, "is not 'hub'"),
        (["--weights", "decoder=/no/such.h5", "--components", "decoder"], 1, "not found: /no/such.h5"),
        (["--weights", "hub"], 2, "no released weights"),
        (["--weights", "decoder=/x.h5", "--components", "text_encoder"], 2, "no weights for text_encoder"),
    ],
)
def test_bad_options(tmp_path, extra, code, fragment):
    out = tmp_path / "out"
    result = run([*TINY, "-o", str(out), *extra])
    assert_one_line_error(result, code, fragment)
    assert not out.exists(), "nothing is written for a bad option"


def test_bad_size_option_is_a_usage_error(tmp_path):
    result = run([*TINY, "-o", str(tmp_path), "--max-part-bytes", "lots"])
    assert result.exit_code == 2 and "not a size" in result.output


def test_output_dir_with_foreign_files_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_one_line_error(run([*TINY, "-o", str(out)]), 1, "notes.txt", "--force")
    assert (out / "notes.txt").read_text() == "mine" and sorted(os.listdir(out)) == ["notes.txt"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run([*TINY, "-o", str(blocker)]), 1, "is a file")


def test_hub_offline_without_cache_says_how_to_pass_files(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = run(["convert", "--model", "v1", "--components", "decoder", "-o", str(tmp_path / "o")], env=env)
    assert_one_line_error(result, 1, "kcv_decoder.h5", "HF_HUB_OFFLINE", "--weights")


def test_not_a_weights_file(tmp_path):
    bogus = tmp_path / "decoder.h5"
    bogus.write_text("hello")
    result = run([*TINY, "-o", str(tmp_path / "o"), "--components", "decoder", "--weights", f"decoder={bogus}"])
    assert_one_line_error(result, 1, str(bogus), "not a Keras weights file")


# The options tiny_sets were converted with (conftest.tiny_options), as command-line flags.
SHARED_SET = ["--unet-parts", "2", "--calibration", "synthetic", "--calibration-samples", "8"]


@pytest.fixture(scope="module")
def cli_set(tiny_sets, export_cache, tmp_path_factory):
    """The CLI converting into a copy of the shared fp32 set: it must find every file up to date."""
    import shutil

    out = tmp_path_factory.mktemp("cli") / "sd-tiny"
    shutil.copytree(tiny_sets["fp32"], out)
    result = run([*TINY, "-o", str(out), *SHARED_SET, "--export-cache", str(export_cache)])
    assert result.exit_code == 0, (result.output, result.exception)
    return out, result


def test_convert_writes_files_and_manifest(cli_set):
    out, result = cli_set
    manifest = load_manifest(out)
    assert manifest.family == "tiny" and manifest.quant == "fp32"
    assert manifest.components == ["text_encoder", "diffusion", "decoder", "image_encoder"]
    assert {"tensorflow", "keras", "keras_cv", "sd2tflite"} <= set(manifest.versions)
    assert manifest.weights["diffusion"]["kind"] == "trained"  # --model tiny's default: the shipped weights
    listed = {a.path for a in manifest.artifacts}
    assert set(os.listdir(out)) == listed | {"manifest.json"}, "no temp or work files left"
    for a in manifest.artifacts:
        from sd2tflite.core.fsutil import sha256_file

        assert (out / a.path).stat().st_size == a.bytes
        assert sha256_file(out / a.path) == a.sha256
        assert a.conversion_seconds > 0 and a.peak_rss_bytes > 100 << 20 and a.params > 0
    assert "manifest:" in result.output and "diffusion_part1.tflite" in result.output
    assert result.output.count("reused") == 5  # the library's convert() wrote them; the CLI agrees


def test_rerun_reuses_matching_files_and_rebuilds_tampered_ones(cli_set, export_cache):
    out, _ = cli_set
    before = load_manifest(out)
    mtimes = {a.path: (out / a.path).stat().st_mtime_ns for a in before.artifacts}
    decoder = out / "decoder.tflite"
    decoder.write_bytes(decoder.read_bytes()[:-10] + b"0123456789")  # tampered, same size
    result = run([*TINY, "-o", str(out), *SHARED_SET, "--export-cache", str(export_cache)])
    assert result.exit_code == 0, result.output
    after = load_manifest(out)
    assert result.output.count("reused") == 4
    assert "decoder.tflite" in result.output and "decoder.tflite" not in [l.split()[0] for l in result.output.splitlines() if "reused" in l]
    for a in after.artifacts:
        if a.path != "decoder.tflite":
            assert (out / a.path).stat().st_mtime_ns == mtimes[a.path]
    # Rebuilt: the manifest records the new file's hash, not the tampered one's. (Bytes may differ
    # from the first build: Keras numbers layer names per process and they land in tensor names.)
    from sd2tflite.core.fsutil import sha256_file

    rebuilt = {a.path: a for a in after.artifacts}["decoder.tflite"]
    assert sha256_file(decoder) == rebuilt.sha256 and decoder.stat().st_size == rebuilt.bytes


def test_converting_one_component_keeps_the_others(cli_set):
    out, _ = cli_set
    before = {a.path: a.sha256 for a in load_manifest(out).artifacts}
    result = run([*TINY, "-o", str(out), *SHARED_SET, "--components", "decoder", "--force"])
    assert result.exit_code == 0, result.output
    after = load_manifest(out)
    assert {a.path for a in after.artifacts} == set(before)
    assert all((out / p).is_file() for p in before)
    assert set(after.components) == {"text_encoder", "diffusion", "decoder", "image_encoder"}


def test_verbose_keeps_the_exit_code(tmp_path):
    result = run([*TINY, "-o", str(tmp_path / "o"), "--model", "v9", "-v"])
    assert result.exit_code == 2 and "unknown model" in result.stderr


def test_interrupted_run_leaves_no_partial_files_and_resumes(tmp_path, export_cache):
    from sd2tflite.convert.orchestrate import convert
    from sd2tflite.core.progress import NullProgress

    from .conftest import tiny_request

    class InterruptAfterFirstFile(NullProgress):
        done = 0

        def advance(self):
            self.done += 1
            if self.done == 2:  # export stage, then the first file
                raise KeyboardInterrupt

    out = tmp_path / "out"
    request = tiny_request(out, components="decoder,image_encoder", export_cache=str(export_cache))
    with pytest.raises(KeyboardInterrupt):
        convert(request, progress=InterruptAfterFirstFile())
    left = sorted(os.listdir(out))
    assert left == [".sd2tflite-progress.json", "decoder.tflite"], left
    result = convert(request)
    assert result.reused == ["decoder.tflite"] and result.built == ["image_encoder.tflite"]
    assert sorted(os.listdir(out)) == ["decoder.tflite", "image_encoder.tflite", "manifest.json"]


def test_local_weight_files_convert_to_the_same_outputs(tmp_path, tiny_dims):
    """Legacy .h5 (keras-cv's released layout) and Keras 3 .weights.h5 both load."""
    import keras

    from sd2tflite.convert.keras_models import build_component
    from sd2tflite.runtime.litert import load_component
    from sd2tflite.core.metrics import parity
    from sd2tflite.convert.weights import save_legacy_h5

    keras.utils.set_random_seed(77)
    decoder = build_component("tiny", "decoder", tiny_dims)
    encoder = build_component("tiny", "image_encoder", tiny_dims)
    save_legacy_h5(decoder, tmp_path / "decoder.h5")
    encoder.save_weights(tmp_path / "encoder.weights.h5")
    out = tmp_path / "out"
    weights = f"decoder={tmp_path / 'decoder.h5'},image_encoder={tmp_path / 'encoder.weights.h5'}"
    result = run([*TINY, "-o", str(out), "--components", "decoder,image_encoder", "--weights", weights])
    assert result.exit_code == 0, (result.output, result.exception)
    manifest = load_manifest(out)
    assert manifest.weights["decoder"]["kind"] == "file"
    assert len(manifest.weights["decoder"]["sha256"]) == 64
    for model, component in ((decoder, "decoder"), (encoder, "image_encoder")):
        runner = load_component(out, component)
        sample = seeded_inputs(component, tiny_dims)[0]
        expected = np.asarray(model(next(iter(sample.values()))))
        actual = next(iter(runner(**sample).values()))
        assert parity(expected, actual).psnr_db > 60


def test_weights_of_the_wrong_shape_name_the_file_and_write_nothing(tmp_path, tiny_dims):
    from sd2tflite.convert.keras_models import build_component
    from sd2tflite.convert.weights import save_legacy_h5

    wrong = tmp_path / "encoder_as_decoder.h5"
    save_legacy_h5(build_component("tiny", "image_encoder", tiny_dims), wrong)
    out = tmp_path / "out"
    result = run([*TINY, "-o", str(out), "--components", "decoder", "--weights", f"decoder={wrong}"])
    assert_one_line_error(result, 1, str(wrong), "does not fit the decoder")
    assert not out.exists(), "checked before anything is created"


def test_dry_run_prints_the_plan_without_writing(tmp_path):
    out = tmp_path / "out"
    result = run([*TINY, "-o", str(out), "--components", "diffusion", "--max-part-bytes", "6MiB", "--dry-run",
                  "--memory-budget", "3GB"])
    assert result.exit_code == 0, result.output
    assert "diffusion_part2.tflite" in result.output and "in:" in result.output and "out:" in result.output
    assert "memory budget 3.0 GB" in result.output
    assert result.output.count("~  0.7 GB RAM to convert") == 4  # 0.7 GB + 6.8 x under 1M params x 4 bytes
    assert not out.exists()


def test_dry_run_prints_the_join_decision(tmp_path):
    dry_run = [*TINY, "-o", str(tmp_path / "out"), "--components", "diffusion", "--unet-parts", "2", "--dry-run"]
    joined = run([*dry_run, "--join-unet"])
    assert joined.exit_code == 0, joined.output
    assert "The UNet parts are then joined into one file, diffusion.tflite" in joined.output
    parts = run(dry_run)  # parts asked for (--unet-parts): they stay parts
    assert parts.exit_code == 0, parts.output
    assert "The UNet stays in 2 part files" in parts.output and "joined into" not in parts.output
    assert not (tmp_path / "out").exists()


def test_manifest_json_is_plain_json(cli_set):
    out, _ = cli_set
    data = json.loads((out / "manifest.json").read_text())
    assert data["format_version"] == 1 and data["artifacts"][0]["signature_key"] == "serving_default"


def test_isolated_workers_give_the_same_files(tmp_path, tiny_dims, keras_models):
    """The spawn-per-stage path used for full-size models, exercised on the tiny decoder."""
    from sd2tflite.runtime.litert import load_component
    from sd2tflite.core.metrics import parity

    from sd2tflite.convert.keras_models import call_keras

    # In a subprocess: the workers' TensorFlow start-up lines go to file descriptor 2 directly.
    proc = subprocess.run([sys.executable, "-m", "sd2tflite.cli", *TINY, "--components", "decoder",
                           "--isolate", "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # -q: nothing from the workers either (absl, oneDNN, warnings)
    assert sorted(os.listdir(tmp_path / "out")) == ["decoder.tflite", "manifest.json"]
    sample = seeded_inputs("decoder", tiny_dims)[0]
    actual = load_component(tmp_path / "out", "decoder")(**sample)["image"]
    assert parity(call_keras(keras_models["decoder"], sample)[0], actual).psnr_db > 90


def test_a_second_conversion_into_a_busy_folder_is_refused(tmp_path):
    from sd2tflite.convert.outdir import output_lock

    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out):  # as a running conversion holds it
        result = run([*TINY, "-o", str(out), "--components", "decoder"])
    assert_one_line_error(result, 1, "being written by another sd2tflite convert", f"process {os.getpid()}")
    assert os.listdir(out) == []  # nothing of the refused run; the lock left with its holder


def test_the_lock_of_a_killed_run_does_not_block(tmp_path):
    from sd2tflite.convert.outdir import LOCK_NAME, output_lock

    out = tmp_path / "out"
    out.mkdir()
    hold = ("import sys, time; from pathlib import Path; from sd2tflite.convert.outdir import output_lock\n"
            "with output_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match=f"process {proc.pid}"):
            with output_lock(out):
                pass
    finally:
        proc.kill()  # kill -9: no clean-up runs
        proc.wait()
    assert (out / LOCK_NAME).exists()
    with output_lock(out):  # the kernel released the dead holder's lock
        assert (out / LOCK_NAME).read_text() == str(os.getpid())
    assert not (out / LOCK_NAME).exists()
