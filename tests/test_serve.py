"""The browser side: GPU placement through LiteRT.js WebGPU, and `sd2tflite serve` in real Chromium.

The browser tests need Chromium and LiteRT.js (tests/browser: `npm ci` there; CI does it and sets
SD2TFLITE_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sd2tflite.serve.browser import find_litertjs
from sd2tflite.serve.placement import count_ops, measure_gpu_placement, parse_gpu_log

BROWSER_DIR = Path(__file__).parent / "browser"

# A WebGPU compile's log as LiteRT.js 2.5.3 writes it (abridged from the tiny fp32 decoder's).
GPU_LOG = [
    "INFO: [compiled_model.cc:812] Flatbuffer model initialized directly from incoming litert model.",
    "E1205 00:24:06.928000  755312 model_builder.cc:2496] {\n  type: FLOAT32\n  data: {...}\n  dims: [1,1,1,32,2]\n"
    "} isn't ::ml_drift::BHWC-convertible.",
    "ERROR: Following operations are not supported by GPU delegate:\n"
    "ADD: Can't parse inputs with const tensors.\n"
    "ADD: Tensor dimensions must be less than 5. tiny_decoder_1/group_normalization_111_1/moments/variance\n"
    "ADD: Tensor dimensions must be less than 5. tiny_decoder_1/group_normalization_111_1/mul_2\n"
    "MEAN: Unknown layout.\n"
    "SUB: Max version supported: 2. Requested version 3.\n"
    "14 operations will run on the GPU, and the remaining 226 operations will run on the CPU.",
    "%c[LiteRT]%c Model not fully compiled for webgpu. Partially delegating to WASM execution. background: #FFA000",
]


def test_gpu_log_is_counted_and_grouped_by_reason():
    parsed = parse_gpu_log(GPU_LOG)
    assert (parsed["gpu_ops"], parsed["cpu_ops"]) == (14, 226)
    assert parsed["rejected"] == {"ADD: Tensor dimensions must be less than 5.": 2,
                                  "ADD: Can't parse inputs with const tensors.": 1, "MEAN: Unknown layout.": 1,
                                  "SUB: Max version supported: 2. Requested version 3.": 1}
    assert parsed["notes"] == {"constant tensor [1,1,1,32,2] isn't BHWC-convertible": 1}
    assert parsed["partial"]
    clean = parse_gpu_log(["INFO: Created TensorFlow Lite XNNPACK delegate for CPU."])
    assert clean["gpu_ops"] is None and not clean["rejected"] and not clean["partial"]


def test_op_count_reads_the_flatbuffer_as_litert_does(tiny_sets):
    from ai_edge_litert.interpreter import Interpreter

    for path in sorted(tiny_sets["fp32"].glob("*.tflite")):
        interpreter = Interpreter(model_path=str(path))
        assert count_ops(path) == len(interpreter._get_ops_details()), path.name


def browser_or_skip():
    """LiteRT.js and Chromium, or a skip (a failure where CI promises them)."""
    from sd2tflite.core.errors import SD2TFLiteError
    from sd2tflite.serve.browser import find_chromium

    try:
        where = os.environ.get("SD2TFLITE_LITERTJS") or BROWSER_DIR
        find_litertjs(where)
        find_chromium()
    except SD2TFLiteError as exc:
        if os.environ.get("SD2TFLITE_REQUIRE_BROWSER"):
            pytest.fail(f"the browser tests were required: {exc}")
        pytest.skip(str(exc))
    return where


def test_gpu_placement_measured_in_chromium(tiny_sets):
    litertjs = browser_or_skip()
    files = [tiny_sets["fp32"] / "decoder.tflite", tiny_sets["int8"] / "text_encoder.tflite"]
    decoder, text = measure_gpu_placement(files, litertjs=litertjs, timeout=600)
    assert decoder.measured and text.measured, (decoder.reason, text.reason)
    assert "swiftshader" in decoder.adapter.lower()
    for result, path in ((decoder, files[0]), (text, files[1])):
        assert result.total_ops == count_ops(path)
        assert 0 < result.gpu_ops <= result.total_ops
        # every op the accelerator left on the CPU comes with its reason
        assert (result.gpu_ops < result.total_ops) == bool(result.rejected), result.rejected


def test_gpu_placement_not_measured_without_a_browser(tiny_sets, tmp_path):
    decoder = tiny_sets["fp32"] / "decoder.tflite"
    [result] = measure_gpu_placement([decoder], chromium=tmp_path / "no-chromium")
    assert not result.measured and "not an executable" in result.reason
    assert result.summary.startswith("not measured: ")
    [result] = measure_gpu_placement([decoder], litertjs=tmp_path)
    assert not result.measured and "npm install" in result.reason
    with pytest.raises(Exception, match="is not a file"):
        measure_gpu_placement([tmp_path / "missing.tflite"])
