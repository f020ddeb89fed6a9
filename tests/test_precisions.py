"""Every component x every precision converts, loads in LiteRT and matches Keras."""

from __future__ import annotations

import numpy as np
import pytest

from sd2tflite.components import COMPONENTS
from sd2tflite.quant import RECIPES
from sd2tflite.verify import parity

from .conftest import keras_output, seeded_inputs


@pytest.mark.parametrize("quant", list(RECIPES))
@pytest.mark.parametrize("component", list(COMPONENTS))
def test_component_matches_keras(component, quant, converted, keras_models, tiny_dims):
    from ai_edge_litert.interpreter import Interpreter

    artifact, path, stats = converted[quant][component]
    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    recipe = RECIPES[quant]
    for sample in seeded_inputs(component, tiny_dims):
        expected = keras_output(keras_models[component], sample)
        actual = runner(**sample)[COMPONENTS[component].output_name]
        assert actual.shape == expected.shape
        figures = parity(expected, actual)
        print(f"\n{component:14s} {quant:8s} {figures}")
        assert figures.passes(*recipe.tolerance(component)), f"{component} {quant}: {figures}"
    if quant == "fp32":
        assert figures.max_abs < 1e-3 * max(1.0, float(np.abs(expected).max()))


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_signature_is_named_and_static(component, converted, tiny_dims):
    from ai_edge_litert.interpreter import Interpreter

    artifact, path, _ = converted["fp32"][component]
    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    details = runner.get_input_details()
    assert set(details) == {s.name for s in artifact.inputs}
    for spec in artifact.inputs:
        assert tuple(details[spec.name]["shape"]) == spec.shape
        assert np.dtype(details[spec.name]["dtype"]).name == spec.dtype
    outputs = runner.get_output_details()
    assert list(outputs) == [COMPONENTS[component].output_name]
    assert tuple(outputs[COMPONENTS[component].output_name]["shape"]) == artifact.outputs[0].shape


@pytest.mark.parametrize("quant", ["fp16", "dynamic", "int8"])
def test_quantized_files_are_smaller_than_fp32(quant, converted):
    for component in COMPONENTS:
        fp32_bytes = converted["fp32"][component][2]["bytes"]
        assert converted[quant][component][2]["bytes"] < fp32_bytes, component
    # The big component shrinks roughly by the recipe's bytes per weight.
    ratio = converted[quant]["diffusion"][2]["bytes"] / converted["fp32"]["diffusion"][2]["bytes"]
    assert ratio < RECIPES[quant].bytes_per_weight / 4 + 0.1


def test_fp32_file_bytes_track_parameters(converted):
    for component in COMPONENTS:
        artifact, _, stats = converted["fp32"][component]
        assert abs(stats["bytes"] / (artifact.params * 4) - 1) < 0.05, component


def test_only_builtin_ops(converted):
    # Flex (SELECT_TF_OPS) and other custom ops carry a custom_code; LiteRT ships no Flex kernels.
    from tensorflow.lite.tools import flatbuffer_utils

    for quant in RECIPES:
        for component in COMPONENTS:
            model = flatbuffer_utils.read_model(str(converted[quant][component][1]))
            custom = [op.customCode for op in model.operatorCodes if op.customCode]
            assert not custom, f"{component} {quant}: {custom}"
