"""Every component x every precision converts, loads in LiteRT and matches Keras."""

from __future__ import annotations

import numpy as np
import pytest

from sd2tflite.core.registry import COMPONENTS, CORE_COMPONENTS
from sd2tflite.core.manifest import load_manifest
from sd2tflite.core.precisions import RECIPES
from sd2tflite.core.metrics import parity

from sd2tflite.convert.keras_models import call_keras

from .conftest import SET_PRECISIONS, seeded_inputs, tiny_request


def _bytes(set_dir, component):
    return sum(a.bytes for a in load_manifest(set_dir).parts_of(component))


@pytest.mark.parametrize("quant", SET_PRECISIONS)
@pytest.mark.parametrize("component", list(CORE_COMPONENTS))
def test_component_matches_keras(component, quant, tiny_sets, keras_models, tiny_dims):
    from sd2tflite.runtime.litert import load_component

    runner = load_component(tiny_sets[quant], component)
    recipe = RECIPES[quant]
    worst_fp32_error = 0.0
    for sample in seeded_inputs(component, tiny_dims):
        expected = call_keras(keras_models[component], sample)[0]
        actual = runner(**sample)[COMPONENTS[component].output_name]
        assert actual.shape == expected.shape
        figures = parity(expected, actual)
        print(f"\n{component:14s} {quant:8s} {figures}")
        assert figures.passes(*recipe.tolerance(component)), f"{component} {quant}: {figures}"
        worst_fp32_error = max(worst_fp32_error, figures.max_abs / max(1.0, float(np.abs(expected).max())))
    if quant == "fp32":
        assert worst_fp32_error < 1e-3


@pytest.mark.parametrize("component", list(CORE_COMPONENTS))
def test_signature_is_named_and_static(component, tiny_sets):
    from ai_edge_litert.interpreter import Interpreter

    for artifact in load_manifest(tiny_sets["fp32"]).parts_of(component):
        runner = Interpreter(model_path=str(tiny_sets["fp32"] / artifact.path)).get_signature_runner("serving_default")
        details = runner.get_input_details()
        assert set(details) == {s.name for s in artifact.inputs}
        for spec in artifact.inputs:
            assert tuple(details[spec.name]["shape"]) == spec.shape
            assert np.dtype(details[spec.name]["dtype"]).name == spec.dtype
        outputs = runner.get_output_details()
        assert set(outputs) == {s.name for s in artifact.outputs}
    assert artifact.outputs[0].name == COMPONENTS[component].output_name  # the last part's


@pytest.mark.parametrize("quant", SET_PRECISIONS)
def test_the_manifest_convert_writes(quant, tiny_sets):
    from sd2tflite.core.fsutil import sha256_file

    manifest = load_manifest(tiny_sets[quant])
    assert manifest.quant == quant and manifest.converter == RECIPES[quant].converter_settings()
    assert [a.path for a in manifest.artifacts] == [
        "text_encoder.tflite", "diffusion_part0.tflite", "diffusion_part1.tflite", "decoder.tflite",
        "image_encoder.tflite"]
    first, second = manifest.parts_of("diffusion")  # --unet-parts 2
    assert (first.num_parts, second.num_parts) == (2, 2)
    assert set(first.wiring.values()) == {None}  # fed by the pipeline
    wired = {name for name, producer in second.wiring.items() if producer == 0}
    assert wired and wired <= {o.name for o in first.outputs}
    assert manifest.split["parts"][0]["params"] + manifest.split["parts"][1]["params"] == \
        first.params + second.params == manifest.split["total_params"]
    for a in manifest.artifacts:
        assert sha256_file(tiny_sets[quant] / a.path) == a.sha256
        assert (tiny_sets[quant] / a.path).stat().st_size == a.bytes
    assert not [p.name for p in tiny_sets[quant].iterdir() if p.name.startswith(".")]  # no work or temp files


@pytest.mark.parametrize("quant", ["fp16", "dynamic", "int8"])
def test_quantized_files_are_smaller_than_fp32(quant, tiny_sets):
    for component in CORE_COMPONENTS:
        assert _bytes(tiny_sets[quant], component) < _bytes(tiny_sets["fp32"], component), component
    # The big component shrinks roughly by the recipe's bytes per weight.
    ratio = _bytes(tiny_sets[quant], "diffusion") / _bytes(tiny_sets["fp32"], "diffusion")
    assert ratio < RECIPES[quant].bytes_per_weight / 4 + 0.1


def test_fp32_file_bytes_track_parameters(tiny_sets):
    for artifact in load_manifest(tiny_sets["fp32"]).artifacts:
        assert abs(artifact.bytes / (artifact.params * 4) - 1) < 0.05, artifact.path


def test_only_builtin_ops(tiny_sets):
    # Flex (SELECT_TF_OPS) and other custom ops carry a custom_code; LiteRT ships no Flex kernels.
    from tensorflow.lite.tools import flatbuffer_utils

    for quant, set_dir in tiny_sets.items():
        for artifact in load_manifest(set_dir).artifacts:
            model = flatbuffer_utils.read_model(str(set_dir / artifact.path))
            custom = [op.customCode for op in model.operatorCodes if op.customCode]
            assert not custom, f"{artifact.path} {quant}: {custom}"


def test_attention_in_query_blocks_is_exact_and_runs_one_block_at_a_time(tmp_path, keras_models, tiny_dims,
                                                                        monkeypatch):
    """The exported UNet computes attention in query blocks (convert/attention.py). At 128x128 the
    tiny UNet's largest attention has 256 queries, so blocks of 64 give four per layer there."""
    from ai_edge_litert.interpreter import Interpreter

    from sd2tflite.convert import attention
    from sd2tflite.convert.orchestrate import convert
    from sd2tflite.runtime.litert import load_component

    monkeypatch.setattr(attention, "QUERY_BLOCK", 64)
    convert(tiny_request(tmp_path / "s", components="diffusion", unet_parts=1))
    path = tmp_path / "s" / load_manifest(tmp_path / "s").parts_of("diffusion")[0].path
    ops = [d["op_name"] for d in Interpreter(model_path=str(path))._get_ops_details()]
    ops = [op for op in ops if op in ("BATCH_MATMUL", "SOFTMAX")]
    # The first attention layer (256 queries): score, softmax, values per block, block after block
    # (never every block's scores before the first softmax is consumed).
    assert ops[:12] == ["BATCH_MATMUL", "SOFTMAX", "BATCH_MATMUL"] * 4, ops[:12]
    runner = load_component(tmp_path / "s", "diffusion")
    for sample in seeded_inputs("diffusion", tiny_dims):
        expected = call_keras(keras_models["diffusion"], sample)[0]
        assert parity(expected, runner(**sample)["noise_pred"]).psnr_db > 90
