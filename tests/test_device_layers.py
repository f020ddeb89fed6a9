"""Device-ready graphs (convert/device_layers.py): the device formulations compute what keras-cv's
layers compute, and the converted tiny files hold nothing the accelerators refuse (no tensor of rank
5, none of the operators that cut the graph), with every op on the Qualcomm NPU in one partition
where the compiler is installed."""

from __future__ import annotations

import numpy as np
import pytest

from sd2tflite.core.manifest import load_manifest

# What the accelerators refused in Keras' formulations (GroupNorm's and LayerNorm's moments and 5-D
# reshapes, UpSampling2D's TILE, the NPU's int16 gaps): none of these may come back. (A 4-D
# STRIDED_SLICE, the image encoder's mean-latent channels, the GPU takes; the UNet's 3-D ones it
# refused, below.)
REFUSED_OPS = {"NEG", "SQUARED_DIFFERENCE", "SQUARE", "TILE", "PAD", "REDUCE_MIN", "REDUCE_MAX",
               "RESIZE_NEAREST_NEIGHBOR", "DEPTHWISE_CONV_2D"}


def _layer_and_input(layer, shape, seed, offset=3.0):
    import keras

    rng = np.random.default_rng(seed)
    x = keras.ops.convert_to_tensor((rng.normal(size=shape) * 2.0 + offset).astype(np.float32))
    layer(x)  # builds the layer and its sublayers
    for weight in layer.weights:
        weight.assign(rng.normal(size=weight.shape).astype(np.float32))
    return layer, x


@pytest.mark.parametrize("channels, groups, size", [(64, 32, 8), (96, 32, 5), (32, 32, 4), (640, 32, 3)])
def test_group_norm_4d_matches_keras(channels, groups, size):
    import keras

    from sd2tflite.convert.device_layers import group_norm_4d

    layer, x = _layer_and_input(keras.layers.GroupNormalization(groups=groups, epsilon=1e-5),
                                (1, size, size, channels), seed=channels)
    expected, actual = np.asarray(layer(x)), np.asarray(group_norm_4d(layer, x))
    # float64 from the definition: both are float32 roundings of it
    x64 = np.asarray(x, np.float64).reshape(1, size, size, groups, channels // groups)
    mean, var = x64.mean(axis=(1, 2, 4), keepdims=True), x64.var(axis=(1, 2, 4), keepdims=True)
    exact = ((x64 - mean) / np.sqrt(var + 1e-5)).reshape(expected.shape) * np.asarray(layer.gamma) \
        + np.asarray(layer.beta)
    assert np.abs(actual - exact).max() <= np.abs(expected - exact).max() + 2e-6
    assert np.abs(actual - expected).max() < 1e-4


def test_group_mean_averages_each_group():
    from sd2tflite.convert.device_layers import group_mean

    values = np.arange(8, dtype=np.float32).reshape(1, 1, 1, 8)
    np.testing.assert_allclose(np.asarray(group_mean(values, 2)).ravel(), [1.5] * 4 + [5.5] * 4)
    np.testing.assert_array_equal(np.asarray(group_mean(values, 8)), values)


def test_layer_norm_matches_keras():
    import keras

    from sd2tflite.convert.device_layers import _takes_layer_norm, layer_norm_last

    layer, x = _layer_and_input(keras.layers.LayerNormalization(epsilon=1e-5), (1, 77, 64), seed=7)
    assert _takes_layer_norm(layer, x)
    np.testing.assert_allclose(np.asarray(layer_norm_last(layer, x)), np.asarray(layer(x)), atol=2e-5)


def test_upsampling_and_embeddings_are_exact():
    import keras
    from keras_cv.src.models.stable_diffusion.text_encoder import CLIPEmbedding

    from sd2tflite.convert.device_layers import embedding_1d, upsample_nearest

    for size in (2, (3, 2)):
        up, x = _layer_and_input(keras.layers.UpSampling2D(size), (1, 5, 6, 8), seed=1)
        np.testing.assert_array_equal(np.asarray(upsample_nearest(up, x)), np.asarray(up(x)))

    embed = CLIPEmbedding(100, 16, 7)
    tokens = np.random.default_rng(2).integers(0, 100, (1, 7)).astype(np.int32)
    positions = np.arange(7, dtype=np.int32)[None]
    expected = np.asarray(embed([tokens, positions]))
    np.testing.assert_array_equal(np.asarray(embedding_1d(embed, [tokens, positions])), expected)


def test_strided_padded_conv_matches_keras():
    from keras_cv.src.models.stable_diffusion.padded_conv2d import PaddedConv2D

    from sd2tflite.convert.device_layers import _takes_strided_padding, strided_padded_conv

    for shape in ((1, 8, 6, 16), (1, 2, 2, 4)):
        conv, x = _layer_and_input(PaddedConv2D(8, 3, strides=2, padding=1), shape, seed=shape[1])
        assert _takes_strided_padding(conv, x)
        np.testing.assert_allclose(np.asarray(strided_padded_conv(conv, x)), np.asarray(conv(x)), atol=1e-5)
    odd, x = _layer_and_input(PaddedConv2D(8, 3, strides=2, padding=1), (1, 7, 6, 4), seed=9)
    assert not _takes_strided_padding(odd, x)  # an odd size reads the bottom padding: keras-cv's call


def test_geglu_and_res_block_match_keras():
    import keras
    from keras_cv.src.models.stable_diffusion.diffusion_model import GEGLU, ResBlock

    from sd2tflite.convert.device_layers import geglu, res_block

    layer, x = _layer_and_input(GEGLU(32), (1, 16, 64), seed=3, offset=0.0)
    np.testing.assert_allclose(np.asarray(geglu(layer, x)), np.asarray(layer(x)), atol=1e-5)

    block = ResBlock(64)
    rng = np.random.default_rng(4)
    inputs = [keras.ops.convert_to_tensor(rng.normal(size=(1, 4, 4, 32)).astype(np.float32)),
              keras.ops.convert_to_tensor(rng.normal(size=(1, 256)).astype(np.float32))]
    expected = np.asarray(block(inputs))
    np.testing.assert_allclose(np.asarray(res_block(block, inputs)), expected, atol=1e-5)


def test_the_swap_lasts_only_while_tracing():
    import keras
    from keras_cv.src.models.stable_diffusion.diffusion_model import GEGLU, CrossAttention, ResBlock
    from keras_cv.src.models.stable_diffusion.padded_conv2d import PaddedConv2D
    from keras_cv.src.models.stable_diffusion.text_encoder import CLIPAttention, CLIPEmbedding

    from sd2tflite.convert.device_layers import device_graph

    classes = (keras.layers.GroupNormalization, keras.layers.LayerNormalization, keras.layers.UpSampling2D,
               CLIPEmbedding, GEGLU, ResBlock, PaddedConv2D, CrossAttention, CLIPAttention)
    before = [c.call for c in classes]
    with device_graph():
        assert all(c.call is not b for c, b in zip(classes, before))
    assert [c.call for c in classes] == before


def _ops_and_ranks(path):
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    ops, ranks = set(), set()
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for i in range(graph.OperatorsLength()):
            code = codes[graph.Operators(i).OpcodeIndex()]
            ops.add(names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())])
        ranks |= {graph.Tensors(t).ShapeLength() for t in range(graph.TensorsLength())}
    return ops, ranks


@pytest.mark.parametrize("quant", ["fp32", "int8"])
def test_converted_files_hold_nothing_the_accelerators_refuse(quant, tiny_sets):
    set_dir = tiny_sets[quant]
    for artifact in load_manifest(set_dir).artifacts:
        ops, ranks = _ops_and_ranks(set_dir / artifact.path)
        assert max(ranks) <= 4, f"{artifact.path}: a tensor of rank {max(ranks)}"
        assert not ops & REFUSED_OPS, f"{artifact.path}: {sorted(ops & REFUSED_OPS)}"
        if artifact.component in ("diffusion", "text_encoder"):
            assert "STRIDED_SLICE" not in ops, artifact.path


@pytest.mark.parametrize("quant", ["fp32", "int8"])
def test_every_op_on_the_npu_in_one_partition(quant, tiny_sets, tmp_path):
    from sd2tflite.device.plugin import DeviceSdkError, check_sdk, run_plugin
    from sd2tflite.device.targets import parse_targets

    target = parse_targets("qualcomm:SM8650")[0]
    try:
        check_sdk(target)
    except DeviceSdkError as exc:
        pytest.skip(f"no Qualcomm compiler here: {exc}")
    set_dir = tiny_sets[quant]
    for artifact in load_manifest(set_dir).artifacts:
        run = run_plugin("partition", set_dir / artifact.path, tmp_path / "p.tflite", target)
        assert run.partition is not None, run.failure
        assert run.partition.whole, f"{artifact.path}: {run.partition.describe()}"


def test_fp16_lookup_tables_are_float32(tiny_sets):
    """fp16 files keep the tables GATHER reads in float32 (the GPU refuses a float16 table behind a
    DEQUANTIZE), and GATHER is the only reader they lost a DEQUANTIZE for."""
    from ai_edge_litert import schema_py_generated as schema

    path = tiny_sets["fp16"] / load_manifest(tiny_sets["fp16"]).parts_of("text_encoder")[0].path
    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]
    gathers = [graph.Operators(i) for i in range(graph.OperatorsLength())
               if codes[graph.Operators(i).OpcodeIndex()] == schema.BuiltinOperator.GATHER]
    assert len(gathers) == 2  # token and position embeddings
    for op in gathers:
        table = graph.Tensors(op.Inputs(0))
        assert table.Type() == schema.TensorType.FLOAT32
        assert model.Buffers(table.Buffer()).DataLength() == 4 * int(np.prod(table.ShapeAsNumpy()))


def test_full_size_token_table_is_read_directly_by_gather(tmp_path):
    """v1's token table (49,408 x 768, 145 MiB: over TensorFlow's 128 MiB limit for folding an op
    on a constant) reaches GATHER with nothing between: int8 in dynamic, float32 in fp16 (the
    GPU's dtype rule), and no per-call copy of the table. (The tiny table, 12 MiB, folds anyway.)"""
    import types

    import keras
    from ai_edge_litert import schema_py_generated as schema
    from keras_cv.src.models.stable_diffusion.text_encoder import CLIPEmbedding

    from sd2tflite.convert.export import export_saved_model
    from sd2tflite.convert.tflite import convert_stage
    from sd2tflite.core.registry import TensorSpec

    vocabulary, width = 49_408, 768
    tokens, positions = keras.Input((77,), batch_size=1, dtype="int32"), keras.Input((77,), batch_size=1, dtype="int32")
    model = keras.Model([tokens, positions], CLIPEmbedding(vocabulary, width, 77)([tokens, positions]))
    inputs = (TensorSpec("tokens", (1, 77), "int32"), TensorSpec("positions", (1, 77), "int32"))
    artifact = types.SimpleNamespace(inputs=inputs, outputs=(TensorSpec("embeddings", (1, 77, width), "float32"),),
                                     file_name="embedding.tflite", saved_model_dir=str(tmp_path / "saved"),
                                     calibration_file=None)
    export_saved_model(model, artifact, artifact.saved_model_dir)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    for quant, table_type, item_bytes in (("dynamic", schema.TensorType.INT8, 1),
                                          ("fp16", schema.TensorType.FLOAT32, 4)):
        out = tmp_path / quant
        out.mkdir()
        stats = convert_stage(artifact, quant, str(out))
        model_fb = schema.Model.GetRootAsModel((out / artifact.file_name).read_bytes(), 0)
        graph = model_fb.Subgraphs(0)
        codes = [model_fb.OperatorCodes(i) for i in range(model_fb.OperatorCodesLength())]
        ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
        op_names = [names[max(codes[op.OpcodeIndex()].BuiltinCode(), codes[op.OpcodeIndex()].DeprecatedBuiltinCode())]
                    for op in ops]
        assert "STRIDED_SLICE" not in op_names, (quant, op_names)
        tables = [graph.Tensors(op.Inputs(0)) for op, name in zip(ops, op_names) if name == "GATHER"]
        token_table = max(tables, key=lambda t: int(np.prod(t.ShapeAsNumpy())))
        assert tuple(token_table.ShapeAsNumpy()) == (1, vocabulary, width), quant
        assert token_table.Type() == table_type, quant
        # a constant of the file, read by the GATHER itself
        assert model_fb.Buffers(token_table.Buffer()).DataLength() == vocabulary * width * item_bytes, quant
        assert stats["bytes"] < vocabulary * width * item_bytes + 2**20, (quant, stats["bytes"])
