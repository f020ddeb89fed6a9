"""`sd2tflite compile` (sd2tflite/device/) and verify's accelerator report, on the trained tiny sets:
LiteRT's AOT compiler plugin for a Qualcomm SM8650 with the QNN libraries of onnxruntime-qnn 2.6.0
(the npu extra; CI installs it). Compiles run at O2, the fastest level (O3 spends minutes on the
pixel-space files). Compiled files do not run on this host: their signatures are checked, not their
numbers. Recorded tool logs: tests/data/npu/ (see tests/data/README.md)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from sd2tflite.core.manifest import load_manifest
from sd2tflite.device import plugin
from sd2tflite.device.compile import CompileRequest, compile_set, compiled_path, signature_names, signature_problems
from sd2tflite.device.plugin import DeviceSdkError, check_sdk, failure_reason, parse_partition
from sd2tflite.device.targets import Target, parse_targets

from .conftest import assert_one_line_error, run

DATA = Path(__file__).parent / "data" / "npu"
SM8650 = Target("qualcomm", "SM8650")


@pytest.fixture(scope="module")
def qnn():
    """The QNN compiler libraries. CI installs them (scripts/test.sh sets SD2TFLITE_REQUIRE_NPU): there a
    missing install fails the tests instead of skipping them."""
    try:
        return check_sdk(SM8650)
    except DeviceSdkError as exc:
        if os.environ.get("SD2TFLITE_REQUIRE_NPU"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def op_count(path: Path) -> int:
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(path.read_bytes(), 0)
    return sum(model.Subgraphs(i).OperatorsLength() for i in range(model.SubgraphsLength()))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- targets and the tool's log, no compiler needed ----------------------------------------------------

def test_targets_parse_with_any_case_and_reject_unknown_names():
    assert parse_targets("qualcomm:sm8650,SM8750") == [SM8650, Target("qualcomm", "SM8750")]
    assert parse_targets("google-tensor:tensor_g4;mediatek:MT6989") == [Target("google_tensor", "Tensor_G4"),
                                                                         Target("mediatek", "MT6989")]
    assert SM8650.folder == "npu/qualcomm-sm8650" and SM8650.spec == "qualcomm:SM8650"


def test_recorded_partition_log_gives_counts_and_a_reason_per_rejected_op():
    """The tool's log for the dynamic-range tiny decoder: its Conv2d ops take float activations with
    int8 weights, which the HTP has no kernel for, and GroupNorm's NEG runs on rank-5 tensors."""
    log = gzip.decompress((DATA / "partition-dynamic-decoder.log.gz").read_bytes()).decode()
    found = parse_partition(log)
    assert (found.npu_ops, found.total_ops, found.partitions) == (209, 240, 31)
    assert len(found.rejected) == 240 - 209
    assert found.rejected[0].index == 1 and found.rejected[0].op == "Conv2d"
    assert "Unsupported input/output datatypes" in found.rejected[0].reason
    assert "float_32[1,16,16,4], sfixed_point_8[3,3,4,64]" in found.rejected[0].reason
    groups = {op: (n, reason) for op, n, reason in found.grouped()}
    assert groups["Conv2d"][0] == 19 and groups["Neg"][0] == 12
    assert "incorrect Rank 5" in groups["Neg"][1] and "[1,1,1,32,1]" in groups["Neg"][1]
    assert not found.whole


def test_failure_reason_is_the_tools_own_words():
    log = ("[LITERT_TOOLS:APPLY] Loading model from: x.tflite\nERROR: Model provided has model identifier '\x0c \x87\n"
           "', should be 'TFL3'\n\n[LITERT_TOOLS:APPLY] Failed to load model from file.[LITERT_TOOLS:APPLY] \tFailed\n")
    assert failure_reason(log, 1) == "Model provided has model identifier ' ', should be 'TFL3'"
    assert failure_reason("nothing useful\n", 3) == "nothing useful"


# -- bad inputs ----------------------------------------------------------------------------------------

def test_unknown_vendor_and_soc_list_the_known_ones(tmp_path):
    line = assert_one_line_error(run(["compile", str(tmp_path), "--target", "nvidia:X"]), 2, "nvidia")
    assert "qualcomm, mediatek, google_tensor" in line
    line = assert_one_line_error(run(["compile", str(tmp_path), "--target", "qualcomm:SM9999"]), 2, "SM9999")
    assert "SM8650" in line and "SM8850" in line
    assert_one_line_error(run(["compile", str(tmp_path), "--target", "qualcomm"]), 2, "names no SoC")


def test_set_without_manifest(tmp_path):
    assert_one_line_error(run(["compile", str(tmp_path), "--target", "qualcomm:SM8650"]), 1, "no manifest.json")


@pytest.mark.parametrize(("target", "package"), [("mediatek:MT6989", "ai-edge-litert-sdk-mediatek"),
                                                 ("google_tensor:Tensor_G4", "ai-edge-litert-sdk-google-tensor")])
def test_missing_vendor_sdk_names_the_install_and_writes_nothing(fp32_set, target, package, monkeypatch):
    monkeypatch.delenv("GOOGLE_TENSOR_COMPILER_LIB", raising=False)
    before = (fp32_set / "manifest.json").read_bytes()
    assert_one_line_error(run(["compile", str(fp32_set), "--target", target]), 1, f"pip install {package}")
    assert not (fp32_set / "npu").exists() and (fp32_set / "manifest.json").read_bytes() == before


def test_missing_qnn_libraries_name_the_npu_extra(fp32_set, monkeypatch):
    monkeypatch.delenv(plugin.QNN_LIBS_ENV, raising=False)
    monkeypatch.setattr(plugin, "_package_dir", lambda name: None)  # as without onnxruntime-qnn
    before = (fp32_set / "manifest.json").read_bytes()
    assert_one_line_error(run(["compile", str(fp32_set), "--target", "qualcomm:SM8650"]), 1,
                          'pip install "sd2tflite[npu]"')
    monkeypatch.setenv(plugin.QNN_LIBS_ENV, str(fp32_set))  # a folder without the libraries
    assert_one_line_error(run(["compile", str(fp32_set), "--target", "qualcomm:SM8650"]), 1,
                          plugin.QNN_LIBS_ENV, "libQnnHtp.so")
    assert not (fp32_set / "npu").exists() and (fp32_set / "manifest.json").read_bytes() == before


# -- compiling -----------------------------------------------------------------------------------------

def test_compile_int8_set_for_two_socs(qnn, tiny_sets, tmp_path):
    set_dir = Path(shutil.copytree(tiny_sets["int8"], tmp_path / "set"))
    sources = {p.name: sha256(p) for p in set_dir.glob("*.tflite")}
    report = tmp_path / "compile.json"
    result = run(["compile", str(set_dir), "--target", "qualcomm:SM8650,SM8750", "--opt-level", "O2", "-q",
                  "--json", str(report)])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(set_dir)
    assert {p.name: sha256(p) for p in set_dir.glob("*.tflite")} == sources  # the set itself is untouched
    assert len(manifest.compiled) == 2 * len(manifest.artifacts)
    for record in manifest.compiled:
        artifact = next(a for a in manifest.artifacts if a.path == record["source"])
        path = set_dir / record["path"]
        assert record["path"] == compiled_path(Target("qualcomm", record["target"].split(":")[1]), artifact)
        assert sha256(path) == record["sha256"] and path.stat().st_size == record["bytes"]
        assert record["source_sha256"] == artifact.sha256 and record["optimization_level"] == "O2"
        part = record["partition"]
        # The partition counts every op of the source file; the NPU takes almost all of them.
        assert part["total_ops"] == op_count(set_dir / artifact.path)
        assert 0.9 * part["total_ops"] <= part["npu_ops"] <= part["total_ops"] and part["partitions"] >= 1
        assert (part["npu_ops"] < part["total_ops"]) == bool(part["rejected"])
        assert signature_problems(path, artifact) == []
        assert op_count(path) < op_count(set_dir / artifact.path)  # partitions became NPU dispatch ops
    assert all(f["status"] == "compiled" for f in json.loads(report.read_text())["files"])
    # The manifest still checks out, compiled files included; nothing unlisted.
    from sd2tflite.runtime.integrity import check_integrity

    _, checks = check_integrity(set_dir)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert sum("npu/qualcomm-sm8" in c.name for c in checks) == len(manifest.compiled)

    # A second run reuses every file; --force compiles again to the same bytes (deterministic).
    again = run(["compile", str(set_dir), "--target", "qualcomm:SM8650", "--opt-level", "O2", "-q"])
    assert again.exit_code == 0 and again.output.count("(reused") == len(manifest.artifacts), again.output
    first = manifest.compiled[0]
    forced = compile_set(CompileRequest(set_dir, (SM8650,), "O2", components=("text_encoder",), force=True))
    assert [f.status for f in forced.files] == ["compiled"]
    assert sha256(set_dir / first["path"]) == first["sha256"]


def test_compiled_file_binds_inputs_by_name(qnn, tiny_sets, tmp_path):
    """The compiler reorders the text encoder's inputs: a check by position would fail, by name passes;
    a real shape difference is named."""
    import dataclasses

    from ai_edge_litert import schema_py_generated as fb

    set_dir = Path(shutil.copytree(tiny_sets["fp32"], tmp_path / "set"))
    result = compile_set(CompileRequest(set_dir, (SM8650,), "O2", components=("text_encoder",)))
    assert result.passed, result.lines()
    manifest = load_manifest(set_dir)
    artifact, record = manifest.parts_of("text_encoder")[0], manifest.compiled[0]
    source_order = signature_names(set_dir / artifact.path)["inputs"]
    assert record["signature"]["inputs"] != source_order  # reordered ...
    assert sorted(record["signature"]["inputs"]) == sorted(source_order) == sorted(s.name for s in artifact.inputs)
    assert signature_problems(set_dir / record["path"], artifact) == []
    changed = dataclasses.replace(artifact, inputs=(dataclasses.replace(artifact.inputs[0], shape=(1, 64)),
                                                    *artifact.inputs[1:]))
    problems = signature_problems(set_dir / record["path"], changed)
    assert problems == [f"input {artifact.inputs[0].name} is int32[1, 77], the source's int32[1, 64]"]
    assert fb.Model.GetRootAs((set_dir / record["path"]).read_bytes(), 0).SignatureDefsLength() == 1


def test_one_file_failing_keeps_the_others(qnn, fp32_set):
    """The decoder's bytes are not a flatbuffer (and the manifest agrees, so only the compiler can
    tell): it fails with the tool's reason, the other files are compiled and recorded, exit 1."""
    manifest_path = fp32_set / "manifest.json"
    raw = json.loads(manifest_path.read_text())
    bad = b"NOTAFLATBUFFER" * 100
    (fp32_set / "decoder.tflite").write_bytes(bad)
    for a in raw["artifacts"]:
        if a["path"] == "decoder.tflite":
            a["sha256"], a["bytes"] = hashlib.sha256(bad).hexdigest(), len(bad)
    manifest_path.write_text(json.dumps(raw))
    result = run(["compile", str(fp32_set), "--target", "qualcomm:SM8650", "--opt-level", "O2", "-q"])
    line = assert_one_line_error(result, 1, "qualcomm:SM8650 decoder.tflite did not compile",
                                 "should be 'TFL3'", "other compiled files are kept")
    manifest = load_manifest(fp32_set)
    assert sorted(r["source"] for r in manifest.compiled) == sorted(a.path for a in manifest.artifacts
                                                                    if a.path != "decoder.tflite")
    assert not (fp32_set / "npu" / "qualcomm-sm8650" / "decoder.tflite").exists()
    assert not [p for p in (fp32_set / "npu" / "qualcomm-sm8650").iterdir() if p.name.startswith(".")]
    assert "decoder.tflite: FAILED" in result.stdout and line


def test_verify_accelerator_report_npu_matches_the_compiler(qnn, tiny_sets):
    """verify's NPU column is the compiler's partition, file by file; the GPU column says why it was
    not measured when LiteRT.js is not there, never "compatible"."""
    from sd2tflite.verify.accelerators import measure

    set_dir = tiny_sets["int8"]
    manifest = load_manifest(set_dir)
    report = measure(set_dir, manifest, ("npu",))
    (title, placements), = report.results.items()
    assert title.startswith("NPU: qualcomm:SM8650")
    assert [p.path for p in placements] == [a.path for a in manifest.artifacts]
    for placement, artifact in zip(placements, manifest.artifacts):
        assert placement.measured and placement.total == op_count(set_dir / artifact.path)
        assert placement.placed + sum(n for _, n, _ in placement.rejected) == placement.total
    text = "\n".join(report.lines())
    assert "information, not a check" in text and "compatible" not in text


def test_gpu_column_not_measured_without_litertjs(tiny_sets, monkeypatch, tmp_path):
    from sd2tflite.verify.accelerators import measure

    monkeypatch.setenv("SD2TFLITE_LITERTJS", str(tmp_path / "none"))
    set_dir = tiny_sets["fp32"]
    report = measure(set_dir, load_manifest(set_dir), ("gpu",))
    (title, placements), = report.results.items()
    assert title.startswith("GPU:") and all(not p.measured and p.reason for p in placements)
    assert report.lines()[0].endswith(f"not measured: {placements[0].reason}")


def test_compile_waits_for_no_conversion(qnn, fp32_set):
    """A set a conversion is writing is refused in one line, and its lock file is left to its holder."""
    from sd2tflite.convert.outdir import LOCK_NAME, output_lock

    before = (fp32_set / "manifest.json").read_bytes()
    with output_lock(fp32_set):
        assert_one_line_error(run(["compile", str(fp32_set), "--target", "qualcomm:SM8650"]), 1,
                              "being written by another sd2tflite process", str(os.getpid()))
        assert (fp32_set / LOCK_NAME).exists()
    assert not (fp32_set / "npu").exists() and (fp32_set / "manifest.json").read_bytes() == before


def test_model_card_shows_measured_placement_and_compiled_files(qnn, tiny_sets, tmp_path):
    from sd2tflite.publish.card import model_card
    from sd2tflite.verify.accelerators import measure

    set_dir = Path(shutil.copytree(tiny_sets["int8"], tmp_path / "set"))
    assert compile_set(CompileRequest(set_dir, (SM8650,), "O2", components=("text_encoder",))).passed
    manifest = load_manifest(set_dir)
    report = {"checks": [], "passed": True, "accelerators": measure(set_dir, manifest, ("npu",)).to_json()}
    card = model_card(set_dir, manifest, report, "someone/tiny-int8")
    section = card.split("## Accelerators", 1)[1].split("\n## ", 1)[0]
    npu = measure(set_dir, manifest, ("npu",)).results
    (placements,) = npu.values()
    for placement in placements:  # one row per file, the measured counts
        row = next(line for line in section.splitlines() if line.startswith(f"| `{placement.path}` |"))
        assert f"{placement.placed:,}/{placement.total:,}, {placement.partitions} partition" in row
    record = manifest.compiled[0]
    assert f"| `{record['path']}` | qualcomm:SM8650 (O2) | `text_encoder.tflite` | {record['bytes']:,} |" in section
    assert "compatible" not in section
    unmeasured = model_card(set_dir, manifest, None, "someone/tiny-int8").split("## Accelerators", 1)[1]
    assert "not measured: verify did not measure it" in unmeasured.split("\n## ", 1)[0]


# -- converting again into a compiled set (no compiler needed: the records are made by hand) -----------

def _fake_compiled(set_dir: Path, components: tuple[str, ...]) -> list[dict]:
    """Compiled records as `sd2tflite compile` writes them, for `components`' files: the copy under npu/
    stands for the compiled bytes (only size and sha256 are checked here)."""
    import dataclasses

    from sd2tflite.core.manifest import save_manifest

    manifest = load_manifest(set_dir)
    records = []
    for artifact in (a for a in manifest.artifacts if a.component in components):
        rel = compiled_path(SM8650, artifact)
        (set_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(set_dir / artifact.path, set_dir / rel)
        records.append({"target": SM8650.spec, "source": artifact.path, "source_sha256": artifact.sha256,
                        "path": rel, "sha256": sha256(set_dir / rel), "bytes": (set_dir / rel).stat().st_size,
                        "optimization_level": "O2", "partition": {}, "signature": {}})
    save_manifest(dataclasses.replace(manifest, compiled=records), set_dir)
    return records


def test_converting_again_keeps_compiled_files_of_unchanged_sources_and_drops_the_others(tmp_path, export_cache):
    """A plain re-run (no --force) into a compiled set keeps every compiled record whose source file is
    byte for byte the one compiled; a changed source's compiled file is removed, said in one note line,
    and the set's integrity check passes either way."""
    from sd2tflite.convert.orchestrate import convert
    from sd2tflite.runtime.integrity import check_integrity

    from .conftest import tiny_request

    set_dir = tmp_path / "set"
    request = tiny_request(set_dir, "fp32", components="text_encoder,decoder", export_cache=str(export_cache))
    convert(request)
    records = _fake_compiled(set_dir, ("text_encoder", "decoder"))
    leftover = set_dir / "npu" / "qualcomm-sm8750" / "decoder.tflite"  # unlisted (e.g. an older --force run)
    leftover.parent.mkdir()
    leftover.write_bytes(b"stale")
    result = convert(request)
    assert not result.built and result.manifest.compiled == records
    assert result.notes == [(f"removed 1 stale compiled NPU file (npu/qualcomm-sm8750/decoder.tflite): run "
                             f"sd2tflite compile {set_dir} --target VENDOR:SOC to compile the new files")]
    assert not leftover.parent.exists()
    _, checks = check_integrity(set_dir)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert sum("npu/qualcomm-sm8650/" in c.name for c in checks) == 2

    # The decoder converted from other weights: its compiled file goes, the text encoder's stays.
    changed = run(["convert", "--model", "tiny", "--img-height", "128", "--img-width", "128", "-o", str(set_dir),
                   "--components", "decoder", "--weights", "random:3", "--export-cache", str(export_cache)])
    assert changed.exit_code == 0, (changed.output, changed.exception)
    notes = [line for line in changed.stderr.splitlines() if line.startswith("note: ")]
    assert notes == [(f"note: removed 1 stale compiled NPU file (npu/qualcomm-sm8650/decoder.tflite): run "
                      f"sd2tflite compile {set_dir} --target qualcomm:SM8650 to compile the new files")], changed.stderr
    manifest = load_manifest(set_dir)
    assert manifest.compiled == [r for r in records if r["source"] == "text_encoder.tflite"]
    assert not (set_dir / records[1]["path"]).exists() and (set_dir / records[0]["path"]).is_file()
    _, checks = check_integrity(set_dir)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]


def test_atomic_write_discarded_leaves_the_target_and_no_temp_file(tmp_path):
    """compile's path for a file that failed after the tool wrote it: DiscardWrite drops the temp file."""
    from sd2tflite.core.errors import OutputError
    from sd2tflite.core.fsutil import DiscardWrite, atomic_write, is_temp_name

    target = tmp_path / "x.tflite"
    target.write_bytes(b"old")
    with atomic_write(target, ".tflite") as tmp:
        tmp.write_bytes(b"half")
        raise DiscardWrite
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(OutputError, match="cannot write .*x.tflite"), atomic_write(target):
        raise FileNotFoundError(2, "No such file or directory")
    assert target.read_bytes() == b"new" and not [p for p in tmp_path.iterdir() if is_temp_name(p.name)]
