"""GPU delegate support (sd2tflite/verify/gpu.py): the analyzer's text parsed into per-file verdicts,
an analyzer that no longer checks recognised by its probe, and verify's report carrying the result
without failing on it. Recorded texts: tests/data/gpu/ (TensorFlow 2.17.1's analyzer, the last that
checks, on the trained tiny model's fp32 files at 128x128; ai-edge-litert 2.3's on the probe)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from sd2tflite.core.manifest import load_manifest
from sd2tflite.verify import gpu
from sd2tflite.verify.gpu import NOT_SUPPORTED, SUPPORTED, UNKNOWN, Blocker, GpuSupport, parse_analyzer_text

DATA = Path(__file__).parent / "data" / "gpu"
SELECT_REASON = ("Cond must be float or bool type, if, else tensors must be float and either be same the shape "
                 "as output or constant, scalar.")
MUL_REASON = "MUL requires one tensor that not less than second in all dimensions."


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def test_text_encoder_sample_names_every_refused_op():
    result = parse_analyzer_text("text_encoder.tflite", recorded("tf2.17.1-tiny-fp32-text_encoder.txt"))
    assert result.status == NOT_SUPPORTED and result.ops == 71 and result.runtime == "2.17.1"
    assert result.blockers == (
        Blocker("MUL", MUL_REASON, 3),
        Blocker("GATHER", "Only support 1D indices", 2),
        Blocker("SELECT", SELECT_REASON, 2),
        Blocker("ADD", "Doesn't support broadcasting - input0: [1,77,64], input1: [77,64]", 1),
    )
    # The analyzer's own summary names the same 8 nodes.
    assert result.unsupported_ops == 8
    assert "nodes 2, 3, 6, 7, 15, 41, 48, 65 " in recorded("tf2.17.1-tiny-fp32-text_encoder.txt")
    assert result.describe().startswith("8 of 71 ops not supported: MUL ×3 (MUL requires")
    # BATCH_MATMUL and SOFTMAX (attention) are not among them.
    assert not {"BATCH_MATMUL", "SOFTMAX", "FULLY_CONNECTED"} & {b.op for b in result.blockers}


def test_decoder_sample_is_supported_whole():
    result = parse_analyzer_text("decoder.tflite", recorded("tf2.17.1-tiny-fp32-decoder.txt"))
    assert (result.status, result.ops, result.blockers, result.runtime) == (SUPPORTED, 240, (), "2.17.1")
    assert result.describe() == "all 240 ops supported"


def test_probe_tells_a_checking_analyzer_from_one_that_does_not():
    checking = parse_analyzer_text("probe", recorded("tf2.17.1-probe.txt"))
    assert checking.blockers == (Blocker(gpu.PROBE_OP, f"Not supported custom op {gpu.PROBE_OP}", 1),)
    stub = parse_analyzer_text("probe", recorded("litert2.3-probe.txt"))
    assert (stub.status, stub.ops, stub.runtime) == (SUPPORTED, 1, "2.22.0-dev0+selfbuilt")


def test_unreadable_text_is_unknown_in_one_line():
    result = parse_analyzer_text("x.tflite", "The model is not a valid Flatbuffer bufferFailed to mmap model x.tflite")
    assert result.status == UNKNOWN and "cannot read it as a TFLite flatbuffer" in result.reason
    assert "\n" not in result.describe()
    assert parse_analyzer_text("y.tflite", "  Op#0 ADD(T#0, T#1) -> [T#2]\n").status == UNKNOWN  # no verdict


@pytest.fixture(autouse=True)
def installed_analyzers_afterwards():
    """Each test starts and ends with this Python's own analyzers and no remembered choice."""
    gpu.use_analyzers(None)
    yield
    gpu.use_analyzers(None)


def test_installed_analyzers_do_not_check():
    """On this stack (ai-edge-litert 2.3, TensorFlow 2.21) every analyzer passes the probe's custom op:
    verify must say "unknown", not "supported". An upgrade that restores the checks fails this test,
    and then docs/verifying.md's GPU section should say so."""
    analyzer, why_not = gpu.chosen_analyzer()
    assert analyzer is None
    assert "looks compatible" in why_not and "#77042" in why_not and "TFLite 2.22.0-dev0" in why_not
    assert "\n" not in why_not


def fake_analyzers(calls: list):
    """A stub analyzer listed first and a checking one second, answering with the recorded texts."""
    def stub(model, is_path, check_gpu):
        return recorded("litert2.3-probe.txt")

    def checking(model, is_path, check_gpu):
        assert check_gpu
        if not is_path:
            return recorded("tf2.17.1-probe.txt")
        calls.append(Path(model).name)
        name = "text_encoder" if "text_encoder" in model else "decoder"
        return recorded(f"tf2.17.1-tiny-fp32-{name}.txt")

    gpu.use_analyzers([("stub", stub), ("checking", checking)])


def test_the_first_analyzer_that_checks_is_used(tmp_path):
    calls: list = []
    fake_analyzers(calls)
    model = tmp_path / "text_encoder.tflite"
    model.write_bytes(b"not read by the fake")
    result = gpu.analyze_file(model)
    assert result.status == NOT_SUPPORTED and result.unsupported_ops == 8 and calls == ["text_encoder.tflite"]


def test_broken_analyzer_is_unknown_not_a_traceback(tmp_path):
    def broken(model, is_path, check_gpu):
        raise RuntimeError("boom\nsecond line")

    gpu.use_analyzers([("broken", broken)])
    result = gpu.analyze_file(tmp_path / "a.tflite")
    assert result.status == UNKNOWN and result.reason == "broken failed on a probe model (boom second line)"
    gpu.use_analyzers([])
    assert "no TFLite model analyzer is installed" in gpu.analyze_file(tmp_path / "a.tflite").reason


def test_gpu_analyzer_runs_another_python(tmp_path):
    """--gpu-analyzer: the analyzer of another Python, in its own process; its failure is a reason."""
    import sys

    failing = tmp_path / "python"
    failing.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named tensorflow' >&2\nexit 1\n")
    failing.chmod(0o755)
    result = gpu.analyze_file(tmp_path / "a.tflite", python=str(failing))
    assert result.reason == (f"{failing}'s TensorFlow analyzer failed on a probe model "
                             "(ModuleNotFoundError: No module named tensorflow)")
    # This venv's Python has TensorFlow 2.21: it runs, and is recognised as not checking.
    analyzer, why_not = gpu.chosen_analyzer(sys.executable)
    assert analyzer is None and f"{sys.executable}'s TensorFlow analyzer (TFLite 2." in why_not
    assert "answer \"looks compatible\" for any model" in why_not


def graph_of(path: Path) -> tuple[list[tuple[str, list[int]]], dict[int, tuple[list[int], str]]]:
    """(operators as (name, input tensor ids), tensor id -> (shape, type)) from the installed
    analyzer's dump, which is real even though its GPU verdict is not."""
    _, analyzer = gpu.installed_analyzers()[0]  # ai-edge-litert's
    text = analyzer(str(path), True, False)
    ops = [(name, [int(t) for t in re.findall(r"T#(-?\d+)", inputs)])
           for name, inputs in re.findall(r"^  Op#\d+ (\S+?)\((.*)\) -> ", text, re.M)]
    tensors = {int(i): ([int(d) for d in shape.split(", ") if d], kind)
               for i, shape, kind in re.findall(r"^  T#(\d+)\(.*\) shape:\[(.*?)\], type:(\w+)", text, re.M)}
    return ops, tensors


def test_todays_text_encoder_has_what_the_recording_refuses(tiny_sets):
    """The recorded refusals are of the converter's own graph: today's fp32 text encoder still has
    the operators TensorFlow 2.17's rules refuse, in the shapes and types those rules name. A change
    that gives the lookups 1-D indices or the LayerNorm another form fails here: record
    tests/data/gpu again (see its README) and update the GPU table in docs/verifying.md."""
    ops, tensors = graph_of(tiny_sets["fp32"] / "text_encoder.tflite")
    gathers = [inputs for name, inputs in ops if name == "GATHER"]
    assert [tensors[i[1]][0] for i in gathers] == [[1, 77], [1, 77]]  # "Only support 1D indices"
    selects = [inputs for name, inputs in ops if name == "SELECT"]
    assert [(tensors[i[1]][1], tensors[i[2]][1]) for i in selects] == [("INT32", "INT32")] * 2  # "must be float"
    # "MUL requires one tensor that not less than second in all dimensions": [1, 77, 1] x [1, 1, 64]
    muls = [(tensors[inputs[0]][0], tensors[inputs[1]][0]) for name, inputs in ops if name == "MUL"]
    crossed = [(a, b) for a, b in muls if len(a) == len(b)
               and any(x < y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))]
    assert crossed == [([1, 77, 1], [1, 1, 64])] * 3
    recorded_refusals = parse_analyzer_text("t", recorded("tf2.17.1-tiny-fp32-text_encoder.txt")).blockers
    assert {b.op: b.count for b in recorded_refusals if b.op != "ADD"} == \
        {"GATHER": len(gathers), "SELECT": len(selects), "MUL": len(crossed)}


def test_fp16_weights_are_read_as_the_delegate_reads_them(tiny_sets, tmp_path):
    """An fp16 file's CONV_2D reads its weights through DEQUANTIZE; the delegate remaps such inputs
    to the float16 constants before checking (the analyzer alone would refuse 3 runtime inputs).
    The fold moves exactly the inputs that float16 DEQUANTIZE outputs feed, counted here with
    flatbuffer_utils' object API (another reader), and leaves float32 files alone."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    path = tiny_sets["fp16"] / "decoder.tflite"
    model = flatbuffer_utils.read_model(str(path))
    graph = model.subgraphs[0]
    code = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    fp16_out = {op.outputs[0]: op.inputs[0] for op in graph.operators
                if code[op.opcodeIndex] == fb.BuiltinOperator.DEQUANTIZE
                and graph.tensors[op.inputs[0]].type == fb.TensorType.FLOAT16}
    consumers = [(i, k) for i, op in enumerate(graph.operators) if code[op.opcodeIndex] != fb.BuiltinOperator.DEQUANTIZE
                 for k, t in enumerate(op.inputs) if t in fp16_out]
    assert len(fp16_out) > 20 and len(consumers) >= len(fp16_out)

    copy, moved = gpu.fp16_folded_copy(path, tmp_path)
    assert copy != path and moved == len(consumers)
    folded = flatbuffer_utils.read_model(str(copy)).subgraphs[0]
    for i, k in consumers:
        assert folded.operators[i].inputs[k] == fp16_out[graph.operators[i].inputs[k]]
        assert folded.tensors[folded.operators[i].inputs[k]].type == fb.TensorType.FLOAT16
    convs = [op for op in folded.operators if code[op.opcodeIndex] == fb.BuiltinOperator.CONV_2D]
    assert convs and all(folded.tensors[op.inputs[1]].type == fb.TensorType.FLOAT16 for op in convs)
    fp32 = tiny_sets["fp32"] / "decoder.tflite"
    assert gpu.fp16_folded_copy(fp32, tmp_path / "absent") == (fp32, 0)  # no copy written (nowhere to write)


def test_set_results_respect_integrity_and_the_path_gate(tiny_sets, tmp_path):
    calls: list = []
    fake_analyzers(calls)
    set_dir = Path(shutil.copytree(tiny_sets["fp32"], tmp_path / "set"))
    outside = tmp_path / "elsewhere.tflite"
    shutil.move(set_dir / "decoder.tflite", outside)
    (set_dir / "decoder.tflite").symlink_to(outside)  # a link out of the set is not read
    manifest = load_manifest(set_dir)
    parts = [a.path for a in manifest.parts_of("diffusion")]
    results = {r.path: r for r in gpu.analyze_set(set_dir, manifest, {parts[0]: "not analyzed: damaged"})}
    assert list(results) == [a.path for a in manifest.artifacts]
    assert results["decoder.tflite"].status == UNKNOWN
    assert "resolves outside the set" in results["decoder.tflite"].reason
    assert results[parts[0]].reason == "not analyzed: damaged"
    assert results["text_encoder.tflite"].status == NOT_SUPPORTED
    assert "decoder.tflite" not in calls and parts[0] not in calls and "text_encoder.tflite" in calls


def test_report_shows_gpu_support_without_failing():
    from sd2tflite.runtime.integrity import Check
    from sd2tflite.verify.report import VerifyReport

    report = VerifyReport("set", None, [Check("integrity", "manifest.json", True, "ok")])
    report.gpu = [parse_analyzer_text("text_encoder.tflite", recorded("tf2.17.1-tiny-fp32-text_encoder.txt")),
                  parse_analyzer_text("decoder.tflite", recorded("tf2.17.1-tiny-fp32-decoder.txt")),
                  GpuSupport("image_encoder.tflite", UNKNOWN, reason="not analyzed: integrity failed")]
    assert report.passed  # information, not a check
    table = report.table()
    assert "GPU delegate (TFLite's model analyzer 2.17.1; information, not a check): 1 of 3 files supported whole" \
        in table
    assert "text_encoder.tflite   8 of 71 ops not supported: MUL ×3" in table
    assert "decoder.tflite        all 240 ops supported" in table
    data = json.loads(json.dumps(report.to_json()))["gpu_delegate"]
    assert data["files_supported"] == 1
    assert data["files"][0]["blockers"][1] == {"op": "GATHER", "reason": "Only support 1D indices", "count": 2}
    assert data["files"][2]["status"] == "unknown"


def test_reasons_that_differ_only_in_shapes_are_one_line():
    add = "Doesn't support broadcasting - input0: [{n},64], input1: [1,{n},64]"
    result = GpuSupport("diffusion.tflite", NOT_SUPPORTED, 1760, (
        Blocker("MUL", MUL_REASON, 30), Blocker("ADD", add.format(n=16), 6), Blocker("ADD", add.format(n=256), 6),
        Blocker("ADD", add.format(n=4), 2)))
    assert result.grouped() == [("MUL", 30, MUL_REASON), ("ADD", 14, add.format(n=16) + "; 3 shapes")]
    assert result.describe() == (f"44 of 1,760 ops not supported: MUL ×30 ({MUL_REASON}); "
                                 f"ADD ×14 ({add.format(n=16)}; 3 shapes)")


def test_one_shared_reason_prints_once():
    why = "no TFLite model analyzer is installed"
    lines = gpu.describe_set([GpuSupport(p, UNKNOWN, reason=why) for p in ("a.tflite", "b.tflite")])
    title = "  GPU delegate (TFLite's model analyzer; information, not a check)"
    assert lines == [f"{title}: unknown for every file: {why}"]


def test_verify_reports_gpu_per_file(tiny_sets):
    """verify on a real set: one GPU line per file, in manifest order, and the set still passes."""
    from sd2tflite.verify.run import VerifyRequest, verify

    report = verify(VerifyRequest(tiny_sets["fp32"], steps=1, end_to_end=False))
    assert report.passed, report.table()
    assert [g.path for g in report.gpu] == [a.path for a in report.manifest.artifacts]
    analyzer, why_not = gpu.chosen_analyzer()
    if analyzer is None:  # this stack: every file unknown, with the reason once
        assert {(g.status, g.reason) for g in report.gpu} == {(UNKNOWN, why_not)}
        assert "GPU delegate (TFLite's model analyzer; information, not a check): unknown for every file" \
            in report.table()
    else:
        assert all(g.status != UNKNOWN for g in report.gpu)
