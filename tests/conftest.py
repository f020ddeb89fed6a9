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

import pytest  # noqa: E402

from sd2tflite.core.registry import CORE_COMPONENTS, FAMILIES  # noqa: E402
from sd2tflite.core.precisions import RECIPES  # noqa: E402

IMG = 128
# The shared sets: every precision except the integer-only mode (tests/test_int8.py covers it on
# the decoder).
SET_PRECISIONS = [q for q in RECIPES if q != "int8-strict"]


def tiny_options(out_dir: Path, quant: str = "fp32", **overrides):
    """`sd2tflite convert --model tiny` at 128x128, in process, synthetic calibration (8 samples)."""
    from sd2tflite.convert.request import ConvertOptions

    options = dict(family="tiny", quant=quant, img_height=IMG, img_width=IMG, out_dir=str(out_dir),
                   isolate=False, calibration="synthetic", calibration_samples=8)
    return ConvertOptions(**{**options, **overrides})


def tiny_request(out_dir: Path, quant: str = "fp32", **overrides):
    from sd2tflite.convert.request import build_request

    return build_request(tiny_options(out_dir, quant, **overrides))


@pytest.fixture(scope="session", autouse=True)
def keras_builds_once():
    """Each distinct Keras component is built once per test process (convert.weights'
    reuse_keras_builds). Building the tiny UNet's functional graph costs ~9 s (keras-cv's layers
    trace through TensorFlow), and the suite's conversions, verify runs and references would
    otherwise build the same models ~60 times. Spawned workers (--isolate) build their own."""
    from sd2tflite.convert.weights import reuse_keras_builds

    with reuse_keras_builds():
        yield


@pytest.fixture(scope="session")
def tiny_dims():
    return FAMILIES["tiny"].dims(IMG, IMG)


@pytest.fixture(scope="session")
def keras_models(tiny_dims):
    """The Keras reference for each component, with the weights convert uses by default (the trained ones)."""
    from sd2tflite.convert.weights import build_with_weights, parse_weights, resolve

    family = FAMILIES["tiny"]
    resolved = resolve(parse_weights(None, family), family, list(CORE_COMPONENTS))
    return {c: build_with_weights("tiny", c, tiny_dims, resolved[c]) for c in CORE_COMPONENTS}


def _run_root(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this run shares (the parent of the workers' own
    base temp folders), or the base temp folder without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory):
    """One export of the tiny model's SavedModels, shared by every conversion of the test run and
    by every xdist worker (convert's --export-cache, content-keyed and written atomically):
    precisions differ only in the converter step."""
    cache = _run_root(tmp_path_factory) / "export-cache"
    cache.mkdir(exist_ok=True)
    return cache


@pytest.fixture(scope="session")
def tiny_sets(export_cache, tmp_path_factory):
    """quant -> directory of a complete set written by the product's own convert(), once per test
    run: the xdist workers share them (read-only; tests that change a set copy it first). Each set
    is built under its own file lock by whichever worker takes it first, so two workers build two
    sets at a time. The UNet is cut into two parts so every set exercises the chained runtime."""
    from filelock import FileLock, Timeout

    from sd2tflite.convert.orchestrate import convert

    root = _run_root(tmp_path_factory)
    sets = {quant: root / f"set-{quant}" / "set" for quant in SET_PRECISIONS}

    def build(quant: str, blocking: bool) -> bool:
        done = root / f"set-{quant}.done"  # beside the set: a set holds only what convert wrote
        lock = FileLock(str(root / f"set-{quant}.lock"))
        try:
            lock.acquire(blocking=blocking)
        except Timeout:  # another worker is building it
            return False
        try:
            if not done.exists():
                convert(tiny_request(sets[quant], quant, unet_parts=2, export_cache=str(export_cache)))
                done.touch()
        finally:
            lock.release()
        return True

    waiting = [quant for quant in SET_PRECISIONS if not build(quant, blocking=False)]
    for quant in waiting:
        build(quant, blocking=True)
    return sets


def seeded_inputs(component: str, dims, seed: int = 1234):
    """Held-out inputs (the calibration data uses seed 0)."""
    from sd2tflite.runtime.samples import synthetic_samples

    return synthetic_samples(component, dims, 2, seed)


@pytest.fixture()
def fp32_set(tiny_sets, tmp_path):
    """A private copy of the shared fp32 set, safe to tamper with."""
    return Path(shutil.copytree(tiny_sets["fp32"], tmp_path / "set"))


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
