"""sd2tflite bench on the tiny sets: the numbers exist and are positive, the report validates
against BENCH_SCHEMA, the table and the picture cover every part and component. No timings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from sd2tflite.bench.report import BENCH_SCHEMA, conversion_case, markdown, validate_bench_json
from sd2tflite.core.schema import schema_problems
from sd2tflite.core.errors import SD2TFLiteError
from sd2tflite.core.manifest import load_manifest

from .conftest import assert_one_line_error, run

FAST = ["--repeats", "2", "--steps", "1", "-q"]
TIMED = ("median_seconds", "p90_seconds", "peak_rss_bytes")


@pytest.fixture(scope="module")
def litert_report(tiny_sets, tmp_path_factory):
    """fp32 and dynamic side by side, LiteRT only, with --json and --plot."""
    out = tmp_path_factory.mktemp("bench")
    result = run(["bench", str(tiny_sets["fp32"]), str(tiny_sets["dynamic"]), *FAST, "--threads", "1,2",
                  "--json", str(out / "report.json"), "--plot", str(out / "bench.png")])
    assert result.exit_code == 0, (result.output, result.exception)
    return result, json.loads((out / "report.json").read_text()), out


@pytest.fixture(scope="module")
def keras_report(tiny_sets, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-keras") / "report.json"
    result = run(["bench", str(tiny_sets["fp32"]), *FAST, "--threads", "2", "--compare", "keras",
                  "--json", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    return result, json.loads(out.read_text())


def expected_stages(directory, with_parts=True) -> set[str]:
    manifest = load_manifest(directory)
    parts = {f"diffusion_part{a.part}" for a in manifest.parts_of("diffusion")} if with_parts else set()
    return set(manifest.components) | parts | {"unet_step", "image"}


def assert_positive_figures(case):
    assert case["peak_rss_bytes"] > 0 and case["wall_seconds"] > 0
    for stage in case["stages"]:
        # A LiteRT image loads its components inside, as `generate` does: no load figure of its own.
        loads_inside = case["backend"] == "litert" and stage["kind"] in ("image", "step")
        for key in TIMED + (() if loads_inside else ("load_seconds",)):
            assert stage[key] > 0, (case["backend"], stage["name"], key, stage[key])
        if loads_inside:
            assert stage["load_seconds"] is None
        assert stage["times"] and all(t > 0 for t in stage["times"])
        if stage["kind"] != "step":
            assert stage["first_seconds"] > 0
        assert stage["median_seconds"] <= stage["p90_seconds"] + 1e-12


def test_report_validates_and_every_number_is_positive(litert_report, tiny_sets):
    _, report, _ = litert_report
    validate_bench_json(report)
    assert report["settings"]["threads"] == [1, 2] and report["settings"]["repeats"] == 2
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["ram_bytes"] > 0
    assert "ai_edge_litert" in report["versions"] and "tensorflow" not in report["versions"]
    assert [(c["quant"], c["threads"]) for c in report["cases"]] == [
        ("fp32", 1), ("fp32", 2), ("dynamic", 1), ("dynamic", 2)]
    for case in report["cases"]:
        assert case["backend"] == "litert"
        assert {s["name"] for s in case["stages"]} == expected_stages(tiny_sets["fp32"])
        assert_positive_figures(case)
        stages = {s["name"]: s for s in case["stages"]}
        manifest = load_manifest(case["directory"])
        for a in manifest.artifacts:  # file bytes come from the manifest, parts add up
            name = f"{a.component}_part{a.part}" if a.num_parts > 1 else a.component
            assert stages[name]["bytes"] == a.bytes
        assert stages["diffusion"]["bytes"] == sum(a.bytes for a in manifest.parts_of("diffusion"))
        assert len(stages["image"]["times"]) == 1 and len(stages["unet_step"]["times"]) == 1


def test_litert_cases_run_as_generate_does_with_the_weight_cache(litert_report, tiny_sets):
    """bench's LiteRT figures are generate's: every file's XNNPACK weights in a cache file (mapped,
    so file-backed), and the RSS of every stage split into anonymous and file-backed memory."""
    from sd2tflite.runtime.integrity import file_sha256
    from sd2tflite.runtime.weight_cache import cache_file, default_cache_dir, is_complete, problem

    _, report, _ = litert_report
    assert report["settings"]["weight_cache"] is True
    for quant in ("fp32", "dynamic"):
        for a in load_manifest(tiny_sets[quant]).artifacts:
            target = cache_file(file_sha256(tiny_sets[quant] / a.path, reuse=True), default_cache_dir())
            assert is_complete(target) or problem(target) == "unusable", a.path  # unusable: the cache changed outputs
    for case in report["cases"]:
        for stage in case["stages"]:
            anon, file = stage["peak_anon_bytes"], stage["peak_file_bytes"]
            assert 0 < anon <= stage["peak_rss_bytes"] and 0 < file <= stage["peak_rss_bytes"], stage["name"]
            assert anon + file >= stage["peak_rss_bytes"]  # each is its own maximum


def test_litert_images_are_measured_in_a_process_of_their_own(tiny_sets):
    """The images' peak RSS is a generate run's: their worker runs no part or component stage first
    (in the same process those left about 0.6 GB of the full-size dynamic set's memory behind)."""
    from sd2tflite.bench.cases import run_case_in_subprocess

    case = {"directory": str(tiny_sets["dynamic"]), "backend": "litert", "threads": 1, "quant": "dynamic",
            "family": "tiny", "dims": {}, "reference": None, "repeats": 1, "warmup": 0, "steps": 1,
            "image_repeats": 1, "seed": 0, "vocab": None, "weight_cache": None}
    images = run_case_in_subprocess({**case, "part": "images"})
    assert [s["name"] for s in images["stages"]] == ["unet_step", "image"]
    components = run_case_in_subprocess(case)
    assert "image" not in {s["name"] for s in components["stages"]}
    assert {s["name"] for s in components["stages"]} | {"unet_step", "image"} == expected_stages(tiny_sets["dynamic"])


def test_bench_images_release_each_component_after_its_stage(tiny_sets):
    """The image stage's pipeline sees components through a logging view that still releases them:
    after an image nothing stays loaded, the log has every call, and the pixels are generate's."""
    from sd2tflite.bench.measure import CallLog
    from sd2tflite.bench.worker import LoggedComponents, bench_tokenizer
    from sd2tflite.runtime.litert import LiteRTComponents
    from sd2tflite.runtime.pipeline import GenerateSettings, Pipeline

    manifest = load_manifest(tiny_sets["fp32"])
    settings = GenerateSettings("a red circle", steps=2)
    tokenizer = bench_tokenizer(manifest.family, None)
    components, log = LiteRTComponents(tiny_sets["fp32"], manifest), CallLog()
    logged = Pipeline(LoggedComponents(components, log), manifest.model_dims, tokenizer).generate(settings)
    assert components.loaded == []
    assert [name for name, _ in log.calls] == ["text_encoder"] * 2 + ["diffusion"] * 4 + ["decoder"]
    plain = Pipeline(LiteRTComponents(tiny_sets["fp32"], manifest, release_unused=False), manifest.model_dims,
                     tokenizer).generate(settings)
    assert (logged.images == plain.images).all()


def test_table_lists_every_stage_of_every_set(litert_report, tiny_sets):
    result, report, _ = litert_report
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == sum(len(c["stages"]) + 1 for c in report["cases"])  # + the whole-process row
    for quant in ("fp32", "dynamic"):
        listed = {r[2].strip() for r in rows if r[0].strip().startswith(quant)}
        assert expected_stages(tiny_sets[quant]) | {"(whole process)"} == listed
    assert "keras / this" not in result.stdout


def test_plot_has_a_bar_group_per_stage(litert_report):
    from PIL import Image

    from sd2tflite.bench.plot import PLOT_MARKER

    result, report, out = litert_report
    stages = {s["name"] for c in report["cases"] for s in c["stages"]}
    image = Image.open(out / "bench.png")
    # The figure is 1.2 inches wide per stage (at least 8) and 9 high, at 110 dpi.
    assert image.size == (round(110 * max(8, 1.2 * len(stages))), 990)
    assert image.text["Software"] == PLOT_MARKER.decode()
    assert f"plot: {out / 'bench.png'}" in result.stdout


def test_earlier_outputs_may_be_replaced_other_files_never(litert_report, tiny_sets, tmp_path):
    from sd2tflite.bench.plot import PLOT_MARKER
    from sd2tflite.core.outputs import json_with_keys, png_with_text

    _, _, out = litert_report
    assert json_with_keys("format_version", "cases")(out / "report.json")
    assert png_with_text(PLOT_MARKER)(out / "bench.png")
    photo = tmp_path / "holiday.png"
    photo.write_bytes((out / "bench.png").read_bytes().replace(PLOT_MARKER, b"x" * len(PLOT_MARKER)))
    (tmp_path / "notes.json").write_text("[1, 2]")
    for option, path, kind in (("--plot", photo, "a bench plot"), ("--json", tmp_path / "notes.json", "a bench report")):
        before = path.read_bytes()
        result = run(["bench", str(tiny_sets["fp32"]), "-q", option, str(path)])
        assert_one_line_error(result, 2, f"{path.name} exists and is not {kind}", "--force")
        assert path.read_bytes() == before


@pytest.mark.slow  # a TensorFlow process building every Keras component: most of a minute
def test_keras_eager_case_measures_every_component(tiny_sets):
    """The Keras side of --compare keras (its XLA twin is in the slow tests), in this process."""
    from sd2tflite.bench.cases import run_case_in_subprocess

    case = {"directory": str(tiny_sets["fp32"]), "backend": "keras", "threads": 2, "quant": "fp32",
            "family": "tiny", "dims": {}, "reference": "r", "repeats": 1, "warmup": 0, "steps": 1,
            "image_repeats": 1, "seed": 0, "vocab": None}
    result = run_case_in_subprocess(case)  # its own process: TensorFlow's thread settings are per process
    assert {s["name"] for s in result["stages"]} == expected_stages(tiny_sets["fp32"], with_parts=False)
    assert_positive_figures(result)


@pytest.mark.slow  # Keras XLA compiles every component: minutes on 2 cores
def test_compare_keras_adds_both_jit_modes_and_ratios(keras_report, tiny_sets):
    result, report = keras_report
    validate_bench_json(report)
    assert [c["backend"] for c in report["cases"]] == ["litert", "keras", "keras-xla"]
    assert "tensorflow" in report["versions"] and "keras_cv" in report["versions"]
    for case in report["cases"]:
        assert_positive_figures(case)
    keras = report["cases"][1]
    assert {s["name"] for s in keras["stages"]} == expected_stages(tiny_sets["fp32"], with_parts=False)
    assert all(s["bytes"] is None for s in keras["stages"])
    header = next(line for line in result.stdout.splitlines() if line.startswith("| case"))
    assert "keras / this" in header and "keras-xla / this" in header
    litert, keras_xla = report["cases"][0], report["cases"][2]
    median = lambda case, name: next(s["median_seconds"] for s in case["stages"] if s["name"] == name)  # noqa: E731
    litert_rows = {row[2].strip(): row for row in (line.split("|")[1:-1] for line in result.stdout.splitlines()
                                                   if "| litert |" in line)}
    for stage in ("diffusion", "unet_step", "image", "decoder", "text_encoder"):
        # Each ratio column is that Keras backend's median over LiteRT's, from the same report.
        expected = (median(keras, stage) / median(litert, stage), median(keras_xla, stage) / median(litert, stage))
        printed = [float(cell.strip().rstrip("×")) for cell in litert_rows[stage][-2:]]
        assert printed == pytest.approx(expected, abs=0.006), (stage, printed, expected)


def test_litert_worker_imports_no_tensorflow(tiny_sets):
    case = {"directory": str(tiny_sets["fp32"]), "backend": "litert", "threads": 1, "quant": "fp32",
            "family": "tiny", "dims": {}, "reference": None, "repeats": 1, "warmup": 0, "steps": 1,
            "image_repeats": 1, "seed": 0, "vocab": None}
    code = ("import json, sys; from sd2tflite.bench.worker import run_case; "
            f"r = run_case(json.loads({json.dumps(json.dumps(case))})); "
            "print(len(r['stages']), 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[1:] == ["False", "False"]


def test_schema_rejects_broken_reports(litert_report):
    _, report, _ = litert_report
    broken = json.loads(json.dumps(report))
    broken["cases"][0]["stages"][0]["median_seconds"] = "fast"
    del broken["settings"]["repeats"]
    problems = schema_problems(broken, BENCH_SCHEMA, "report")
    assert any("median_seconds should be number" in p for p in problems)
    assert any("settings.repeats is missing" in p for p in problems)
    with pytest.raises(SD2TFLiteError, match="not an sd2tflite bench report"):
        validate_bench_json(broken)


def test_conversion_figures_print_in_the_same_table():
    result = {"model": "v1", "quant": "dynamic", "img": 512, "command": "convert ...", "total_seconds": 424.0,
              "peak_tree_rss_bytes": 6_416_138_240,
              "files": [{"file": "diffusion_part0.tflite", "bytes": 284_311_576, "params": 1, "seconds": 63.67,
                         "peak_rss_bytes": 6_092_644_352}]}
    case = conversion_case(result)
    assert not schema_problems(case, BENCH_SCHEMA["properties"]["cases"]["items"], "case")
    table = markdown([case])
    assert "| dynamic 512x512 | convert | diffusion_part0 | 271.1 | – | – | 63.670 |" in table
    assert "6.42" in table  # the whole conversion's peak RSS, GB


@pytest.mark.parametrize("extra, code, fragment", [
    (["--threads", "0"], 2, "--threads 0 must be at least 1"),
    (["--threads", "two"], 2, None),
    (["--repeats", "0"], 2, "--repeats 0 must be at least 1"),
    (["--steps", "0"], 2, "--steps 0 must be at least 1"),
    (["--compare", "torch"], 2, "--compare 'torch' is unknown"),
])
def test_bad_options(tiny_sets, extra, code, fragment):
    result = run(["bench", str(tiny_sets["fp32"]), "-q", *extra])
    if fragment is None:  # Click's own usage error
        assert result.exit_code == 2 and "comma-separated" in result.output
    else:
        assert_one_line_error(result, code, fragment)


def test_no_manifest_and_tampered_set_are_one_line_errors(tiny_sets, tmp_path):
    assert_one_line_error(run(["bench", str(tmp_path), "-q"]), 1, "no manifest.json")
    tampered = tmp_path / "set"
    shutil.copytree(tiny_sets["fp32"], tampered)
    with open(tampered / "decoder.tflite", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    assert_one_line_error(run(["bench", str(tampered), "-q"]), 1, "decoder.tflite", "modified")


def test_plot_without_matplotlib_is_a_one_line_error(tiny_sets, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run(["bench", str(tiny_sets["fp32"]), "-q", "--plot", str(tmp_path / "x.png")])
    assert_one_line_error(result, 2, "pip install 'sd2tflite[plot]'")
    assert not (tmp_path / "x.png").exists()


def _keras_cases_die(monkeypatch):
    """Keras workers die as an out-of-memory one does; LiteRT cases run for real."""
    import sd2tflite.bench.cases as benchmark

    real = benchmark.run_case_in_subprocess

    def run_case(case):
        if case["backend"] != "litert":
            raise SD2TFLiteError(f"the {case['backend']} benchmark of {case['directory']} failed (exit code -9): no output")
        return real(case)

    monkeypatch.setattr(benchmark, "run_case_in_subprocess", run_case)


def test_a_failing_case_is_reported_and_the_others_still_measured(tiny_sets, tmp_path, monkeypatch):
    _keras_cases_die(monkeypatch)
    out = tmp_path / "report.json"
    result = run(["bench", str(tiny_sets["fp32"]), *FAST, "--threads", "1", "--compare", "keras", "--json", str(out)])
    assert result.exit_code == 1, (result.output, result.exception)
    report = json.loads(out.read_text())
    validate_bench_json(report)
    assert [c["backend"] for c in report["cases"]] == ["litert"]
    assert_positive_figures(report["cases"][0])
    assert [(f["backend"], f["threads"]) for f in report["failures"]] == [("keras", 1), ("keras-xla", 1)]
    assert "| litert | image |" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 2 and all(e.startswith("error: the keras") and "exit code -9" in e for e in errors)


def test_every_case_failing_is_one_line_error(tiny_sets, tmp_path, monkeypatch):
    import sd2tflite.bench.cases as benchmark

    def die(case):
        raise SD2TFLiteError(f"the {case['backend']} benchmark of {case['directory']} failed (exit code -9): no output")

    monkeypatch.setattr(benchmark, "run_case_in_subprocess", die)
    out = tmp_path / "report.json"
    result = run(["bench", str(tiny_sets["fp32"]), "-q", "--json", str(out)])
    assert_one_line_error(result, 1, "every bench case failed", "exit code -9")
    assert not out.exists()


@pytest.mark.slow  # needs the Keras XLA case
def test_readme_summary_rows_come_from_the_report(keras_report):
    """benchmarks/summary.py: one row per backend, figures copied from the report."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "summary.py"
    spec = importlib.util.spec_from_file_location("bench_summary", path)
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)

    _, report = keras_report
    rows = summary.rows(report)
    assert [r["what"] for r in rows] == ["LiteRT fp32", "Keras eager", "Keras XLA"]
    step = {c["backend"]: next(s for s in c["stages"] if s["name"] == "unet_step")["median_seconds"]
            for c in report["cases"]}
    assert rows[0]["unet_step"] == step["litert"]
    assert rows[0]["vs"]["keras-xla"] == pytest.approx(step["keras-xla"] / step["litert"])
    assert rows[0]["parts"] == 2 and rows[0]["all_mib"] > rows[0]["unet_mib"] > 0
    table = summary.markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "| 128×128 | LiteRT fp32 | " in table
    image = next(s for s in report["cases"][0]["stages"] if s["name"] == "image")
    assert rows[0]["anon_gb"] == image["peak_anon_bytes"] / 1e9 and f"{rows[0]['anon_gb']:.2f} anon" in table


def test_rss_is_split_into_anonymous_and_file_backed_memory():
    import numpy as np

    from sd2tflite.bench.measure import tree_rss_split

    anon, file = tree_rss_split(os.getpid())
    assert file > 1 << 20  # the interpreter and the shared libraries it maps
    block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB of touched anonymous memory
    grown, _ = tree_rss_split(os.getpid())
    assert grown - anon >= 60 << 20
    del block
