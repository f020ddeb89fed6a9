"""Shared fixtures: the tiny model at 128x128, exported once and converted once per precision."""

from __future__ import annotations

import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Calibration recordings and vocabularies go to a cache of the test run's own, not the user's;
# removed when the run ends (a cache given in the environment is left alone).
_OWN_CACHE = None if "SD2TFLITE_CACHE" in os.environ else tempfile.mkdtemp(prefix="sd2tflite-test-cache-")
if _OWN_CACHE:
    os.environ["SD2TFLITE_CACHE"] = _OWN_CACHE


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sd2tflite.components import COMPONENTS, FAMILIES  # noqa: E402
from sd2tflite.quant import RECIPES  # noqa: E402

IMG = 128
# The shared sets: every precision except the integer-only and 16x8 modes, which cannot convert
# every component (tests/test_int8.py covers them on the decoder).
SET_PRECISIONS = [q for q in RECIPES if q not in ("int8-strict", "int16x8")]


def tiny_request(out_dir: Path, quant: str = "fp32", components: str = "all", **overrides):
    from sd2tflite.convert import DEFAULT_MAX_PART_BYTES, make_request

    options = dict(
        family="tiny", quant=quant, components=components, weights=None, img_height=IMG,
        img_width=IMG, batch_size=1, out_dir=str(out_dir), max_part_bytes=DEFAULT_MAX_PART_BYTES,
        unet_parts=None, force=False, isolate=False, calibration_samples=8, calibration_seed=0,
    )
    options.update(overrides)
    return make_request(**options)


@pytest.fixture(scope="session")
def tiny_dims():
    return FAMILIES["tiny"].dims(IMG, IMG)


@pytest.fixture(scope="session")
def keras_models(tiny_dims):
    """The Keras reference for each component, with the same seeded random weights as convert."""
    from sd2tflite.weights import build_with_weights, parse_weights, resolve

    family = FAMILIES["tiny"]
    resolved = resolve(parse_weights(None, family), family, list(COMPONENTS))
    return {c: build_with_weights("tiny", c, tiny_dims, resolved[c]) for c in COMPONENTS}


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """One export stage (int8 request: SavedModels plus calibration samples) for all tests.

    The UNet is cut into two parts so every set exercises the chained runtime.
    """
    from sd2tflite.convert import export_stage

    root = tmp_path_factory.mktemp("export")
    request = tiny_request(root / "unused", quant="int8", unet_parts=2)
    planned, split = export_stage(request, frozenset(), str(root))
    return request, planned, split


@pytest.fixture(scope="session")
def tiny_sets(tiny_export, tmp_path_factory):
    """quant -> directory of a complete converted set (files + manifest.json), all precisions
    converted from the same SavedModels."""
    from sd2tflite.convert import built_artifact, convert_stage, tool_versions
    from sd2tflite.manifest import Manifest, save_manifest

    request, planned, split = tiny_export
    sets = {}
    for quant in SET_PRECISIONS:
        out = tmp_path_factory.mktemp(f"set-{quant}")
        artifacts = tuple(built_artifact(a, convert_stage(a, quant, str(out))) for a in planned)
        save_manifest(Manifest(
            family="tiny", quant=quant, dims=request.dims.to_json(),
            weights={c: w.identity for c, w in request.weights.items()}, artifacts=artifacts,
            versions=tool_versions(), command="tests/conftest.py", split=split,
        ), out)
        sets[quant] = out
    return sets


def seeded_inputs(component: str, dims, seed: int = 1234):
    """Held-out inputs (the calibration data uses seed 0)."""
    from sd2tflite.calibration import synthetic_samples

    return synthetic_samples(component, dims, 2, seed)


def keras_output(model, sample) -> np.ndarray:
    """Runs an unsplit Keras component on a sample dict, in the model's own input order."""
    from sd2tflite.verify import run_keras

    return run_keras(model, sample)


def run(args, env=None):
    """The sd2tflite command line, in process."""
    from click.testing import CliRunner

    from sd2tflite.cli import main

    return CliRunner().invoke(main, args, env=env)


def assert_one_line_error(result, code, *fragments):
    """The CLI's contract for bad input: exit code, one `error:` line naming the problem, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
