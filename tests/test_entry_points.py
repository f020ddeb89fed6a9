"""Every command's library entry point has one shape, `run(Request, progress) -> Result`, reports
through the one progress protocol (core/progress.py) and never prints; the CLI draws the progress."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

from .conftest import assert_one_line_error, run

ENTRY_POINTS = [  # module, function, request, result
    ("sd2tflite.convert.orchestrate", "convert", "ConvertRequest", "ConvertResult"),
    ("sd2tflite.runtime.generate", "generate", "GenerateRequest", "GenerateResult"),
    ("sd2tflite.verify.run", "verify", "VerifyRequest", "VerifyReport"),
    ("sd2tflite.bench.cases", "bench", "BenchRequest", "BenchReport"),
    ("sd2tflite.publish.push", "push", "PushRequest", "PushResult"),
    ("sd2tflite.device.compile", "compile_set", "CompileRequest", "CompileResult"),
]


@pytest.mark.parametrize("module, function, request_type, result_type", ENTRY_POINTS)
def test_every_entry_point_takes_a_frozen_request_and_a_progress(module, function, request_type, result_type):
    from sd2tflite.core.progress import Progress

    mod = importlib.import_module(module)
    fn = getattr(mod, function)
    hints = {name: hint for name, hint in inspect.get_annotations(fn, eval_str=True).items()}
    parameters = inspect.signature(fn).parameters
    assert list(parameters)[:2] == ["request", "progress"] and parameters["progress"].default is None
    assert all(p.default is not p.empty for p in list(parameters.values())[2:])  # only optional extras
    assert hints["progress"] == Progress | None
    assert hints["request"].__name__ == request_type and hints["return"].__name__ == result_type
    assert dataclasses.is_dataclass(hints["request"]) and hints["request"].__dataclass_params__.frozen
    assert dataclasses.is_dataclass(hints["return"])


def test_the_null_progress_is_a_progress():
    from sd2tflite.cli.options import TqdmProgress
    from sd2tflite.core.progress import NO_PROGRESS, Progress

    members = {name for name, value in vars(Progress).items() if callable(value) and not name.startswith("_")}
    assert members == {"stage", "status", "advance", "note"}
    for reporter in (NO_PROGRESS, TqdmProgress(quiet=True)):
        assert all(callable(getattr(reporter, name)) for name in members)


def test_generate_prints_nothing_itself(tiny_sets, tmp_path, capsys):
    from sd2tflite.runtime.generate import GenerateRequest, generate
    from sd2tflite.runtime.pipeline import GenerateSettings

    result = generate(GenerateRequest(tiny_sets["fp32"], tmp_path / "o.png", GenerateSettings("a hill", steps=2)))
    assert result.paths == [tmp_path / "o.png"]
    assert capsys.readouterr() == ("", "")


def test_terminal_progress(capsys):
    from sd2tflite.cli.options import TqdmProgress

    with TqdmProgress(quiet=True) as progress:
        progress.stage("integrity")
        progress.stage("denoising", 3, unit="step")
        progress.advance()
        progress.note("retrying in 1 s")
    assert capsys.readouterr() == ("", "")

    with TqdmProgress(quiet=False) as progress:
        progress.stage("integrity: sizes, sha256, signatures")
        progress.note("uploading 3 files")
        progress.stage("converting", 2, unit="file")
        progress.status("converting decoder.tflite (fp32)")
        progress.advance(2)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("… integrity: sizes, sha256, signatures\nuploading 3 files\n")
    assert "converting decoder.tflite (fp32)" in err and "2/2" in err
    assert progress.bar is None  # closed with the block


@pytest.mark.parametrize("command", [["generate", "hf://noslash", "a hill"], ["verify", "hf://noslash"],
                                     ["bench", "hf://noslash"]])
def test_hf_folders_are_resolved_by_the_library(command, tmp_path):
    """The CLI hands hf:// through in the request; the library downloads (here: refuses) it."""
    result = run([*command, "-q"] + (["-o", str(tmp_path / "o.png")] if command[0] == "generate" else []))
    assert_one_line_error(result, 2, "hf://OWNER/REPO")


def test_a_push_request_never_shows_its_token():
    from sd2tflite.publish.push import PushRequest

    token = "hf_SuperSecretToken1234567890"
    assert token not in repr(PushRequest("set", "someone/sd", token=token))
