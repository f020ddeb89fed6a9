"""int8 that holds up: calibration recorded from pipeline runs, the cache, selective quantization,
the integer-only and 16x8 modes. Quality is measured on held-out pipeline inputs (other prompts,
other seeds) against the float Keras model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sd2tflite.core.manifest import load_manifest

from .conftest import assert_one_line_error, run, tiny_request

RECORDING = dict(calibration="recorded", calibration_prompt_count=4, calibration_steps=6, calibration_samples=16)
# The smallest recording that still has two prompts and several steps: what the cache test needs.
SMALL_RECORDING = dict(calibration="recorded", calibration_prompt_count=2, calibration_steps=3, calibration_samples=4)


@pytest.fixture(scope="module")
def held_out(keras_models, tiny_dims):
    from sd2tflite.verify.quality import held_out_inputs
    from sd2tflite.runtime.tokenizer import load_tokenizer

    return held_out_inputs(keras_models, tiny_dims, load_tokenizer("tiny"))


def quality(set_dir, keras_models, held_out):
    from sd2tflite.verify.quality import quality_report
    from sd2tflite.runtime.litert import LiteRTComponents

    manifest = load_manifest(set_dir)
    return quality_report(manifest, keras_models, LiteRTComponents(set_dir, manifest), held_out)


@pytest.fixture(scope="module")
def recorded_set(tmp_path_factory):
    from sd2tflite.convert.orchestrate import convert

    out = tmp_path_factory.mktemp("recorded") / "set"
    convert(tiny_request(out, quant="int8", unet_parts=2, **RECORDING))
    return out


@pytest.mark.slow  # a recording and a whole int8 conversion: minutes on 2 cores
def test_recorded_calibration_beats_synthetic_on_held_out_inputs(recorded_set, tiny_sets, keras_models, held_out):
    recorded = quality(recorded_set, keras_models, held_out)
    synthetic = quality(tiny_sets["int8"], keras_models, held_out)
    for component in ("diffusion", "decoder", "image_encoder"):
        print(f"\n{component}: recorded {recorded[component]['snr_db']:.1f} dB, "
              f"synthetic {synthetic[component]['snr_db']:.1f} dB")
        assert recorded[component]["snr_db"] > synthetic[component]["snr_db"] + 3, component
    assert recorded["diffusion"]["quantized_op_share"] > 0.8


def test_int8_text_encoder_survives_clips_causal_mask(tiny_sets, keras_models, held_out):
    """keras-cv masks CLIP's attention scores with -inf; in one int8 range per tensor that left the
    text encoder at 1-3 dB SNR (and the int8 set drawing at chance). The exported graph masks with
    finite scores (convert/attention.py)."""
    text_encoder = quality(tiny_sets["int8"], keras_models, held_out)["text_encoder"]
    assert text_encoder["snr_db"] > 20, text_encoder
    assert text_encoder["quantized_op_share"] > 0.8, text_encoder


def test_manifest_records_the_calibration_and_the_cache_is_reused(tmp_path, monkeypatch):
    from sd2tflite.convert.calibration import recorded as recording
    from sd2tflite.convert.orchestrate import convert

    first = convert(tiny_request(tmp_path / "first", quant="int8", components="decoder", **SMALL_RECORDING))
    calibration = first.manifest.artifacts[0].calibration
    assert calibration["source"] == "recorded" and calibration["prompts"] == 2 and calibration["steps"] == 3
    cached = recording.cache_dir() / f"{calibration['key']}.npz"
    provenance = json.loads(cached.with_suffix(".json").read_text())
    assert provenance["family"] == "tiny" and provenance["settings"]["prompts"][0] == recording.DEFAULT_PROMPTS[0]
    assert provenance["weights"]["diffusion"]["kind"] == "trained"

    def must_not_record(*args, **kwargs):
        raise AssertionError("the cached recording should have been used")

    monkeypatch.setattr(recording, "record", must_not_record)
    result = convert(tiny_request(tmp_path / "again", quant="int8", components="decoder", **SMALL_RECORDING))
    assert result.manifest.artifacts[0].calibration["key"] == calibration["key"]
    # Other settings are another recording.
    with pytest.raises(AssertionError, match="cached recording"):
        convert(tiny_request(tmp_path / "other", quant="int8", components="decoder",
                             **{**SMALL_RECORDING, "calibration_steps": 2}))


@pytest.mark.slow  # the search converts the text encoder a dozen times
def test_automatic_selective_quantization_reaches_a_target_plain_int8_misses(recorded_set, tmp_path, keras_models,
                                                                             held_out):
    """Plain int8 text encoder: about 27 dB on its held-out calibration samples (the finite causal
    mask); a 35 dB target makes the search keep operator types in float until the part reaches it."""
    from sd2tflite.convert.orchestrate import convert

    convert(tiny_request(tmp_path / "auto", quant="int8", components="text_encoder",
                         keep_float="auto:35", **RECORDING))
    plain = quality(recorded_set, keras_models, held_out)["text_encoder"]
    selective = quality(tmp_path / "auto", keras_models, held_out)["text_encoder"]
    print(f"\ntext encoder held-out SNR: plain int8 {plain['snr_db']:.1f} dB, auto:35 {selective['snr_db']:.1f} dB")
    kept = load_manifest(tmp_path / "auto").artifacts[0].op_stats["kept_float"]
    assert kept["kept_ops"] and kept["held_out_snr_db"] >= 35 and len(kept["tried"]) > 2
    assert selective["snr_db"] > plain["snr_db"] + 3
    # Measured: plain 22.9 dB, auto:35 38.0 dB keeping 8 op types (FULLY_CONNECTED among them), 23 % of
    # the operators still integer: some types stay int8, not the whole encoder float.
    assert 0.1 < selective["quantized_op_share"] < plain["quantized_op_share"]


def test_int8_runs_attention_in_float_by_default(tiny_sets):
    """LiteRT has only a scalar reference kernel for an int8 BATCH_MATMUL of two activations and
    XNNPACK refuses it: at 512x512 it took 79-81 % of the full-size UNet's 64x64-level parts. The
    int8 recipe keeps every attention matmul and softmax float (XNNPACK runs those), and GroupNorm's
    variance and normalisation (from its int8 centred values); every convolution and dense layer is int8."""
    from tensorflow.lite.python import schema_py_generated as schema

    from sd2tflite.convert.calibration.selective import operator_names

    manifest = load_manifest(tiny_sets["int8"])
    for artifact in manifest.artifacts:
        data = (tiny_sets["int8"] / artifact.path).read_bytes()
        model = schema.Model.GetRootAsModel(data, 0)
        names, graph = operator_names(model), model.Subgraphs(0)
        present = {op: sum(names[graph.Operators(i).OpcodeIndex()] == op for i in range(graph.OperatorsLength()))
                   for op in ("BATCH_MATMUL", "SOFTMAX")}
        stats = artifact.op_stats
        for op, count in present.items():  # every one of them float
            assert stats["float_ops"].get(op, 0) == count, (artifact.path, op, count, stats["float_ops"])
        assert stats["kept_float"]["kept_ops"] == [op for op in ("BATCH_MATMUL", "SOFTMAX") if present[op]]
        # The weights' work stays int8: every convolution and dense layer is integer (GroupNorm's
        # float part is elementwise ops and reductions).
        heavy_float = {op: n for op, n in stats["float_ops"].items()
                       if op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")}
        assert not heavy_float, (artifact.path, heavy_float)
        assert stats["quantized_ops"] / stats["ops"] > 0.4, (artifact.path, stats)
        # GroupNorm's RSQRT is float (the whole variance is); LayerNorm's (the text encoder's) stays int8.
        group_norm = artifact.component in ("diffusion", "decoder", "image_encoder")
        assert (stats["float_ops"].get("RSQRT", 0) > 0) == group_norm, (artifact.path, stats["float_ops"])
        assert (stats["kept_float"]["kept_nodes"] > 0) == group_norm, (artifact.path, stats["kept_float"])
        if artifact.component == "diffusion":
            assert present["BATCH_MATMUL"] > 0 and present["SOFTMAX"] > 0


def test_keep_float_by_op_type(tmp_path):
    from sd2tflite.convert.orchestrate import convert

    result = convert(tiny_request(tmp_path / "keep", quant="int8", components="decoder", keep_float="CONV_2D",
                                  calibration="synthetic"))
    stats = result.manifest.artifacts[0].op_stats
    assert stats["kept_float"]["kept_ops"] == ["BATCH_MATMUL", "SOFTMAX", "CONV_2D"]  # int8's own, then ours
    assert stats["quantized_ops"] <= stats["ops"] - 20  # the decoder's 20 convolutions run in float


@pytest.mark.parametrize("args, code, fragment", [
    (["--quant", "fp16", "--keep-float", "SOFTMAX"], 2, "--quant int8"),
    (["--quant", "int8", "--keep-float", "auto:lots"], 2, "auto:SNR_DB"),
    (["--quant", "int8", "--keep-float", "NO_SUCH_THING", "--components", "decoder", "--calibration", "synthetic"],
     2, "neither a TFLite operator"),
    (["--quant", "int8", "--calibration-prompts", "/nonexistent/prompts.txt"], 2, "one prompt per line"),
])
def test_int8_option_errors(tmp_path, args, code, fragment):
    from .test_cli import TINY

    result = run([*TINY, "-o", str(tmp_path / "o"), *args])
    assert_one_line_error(result, code, fragment)
    assert not (tmp_path / "o").exists()


def test_integer_only_mode_converts_the_device_graph_and_names_float_operators(tmp_path, monkeypatch):
    from sd2tflite.convert import attention, export
    from sd2tflite.convert.orchestrate import convert
    from sd2tflite.core.errors import ConversionError

    # The device graph (4-D GroupNorm without NEG / SQUARE) has an int8 kernel for every operator.
    result = convert(tiny_request(tmp_path / "s", quant="int8-strict", components="decoder"))
    stats = result.manifest.artifacts[0].op_stats
    assert stats["quantized_ops"] == stats["ops"] and not stats["float_ops"], stats
    # Keras' own GroupNormalization lowers to NEG and SQUARE, which stay float even with only the int8
    # op set: named, nothing written. (No export cache: this graph must not be stored under the
    # device graph's key.)
    monkeypatch.setattr(export, "device_graph", attention.export_attention)
    with pytest.raises(ConversionError, match="(?i)decoder.tflite.*integer-only kernel.*neg.*--quant int8"):
        convert(tiny_request(tmp_path / "o", quant="int8-strict", components="decoder"))
    assert not list((tmp_path / "o").glob("*.tflite"))


def test_a_file_litert_cannot_run_is_refused_not_written(tmp_path, monkeypatch):
    from sd2tflite.convert import attention, export
    from sd2tflite.convert.orchestrate import convert
    from sd2tflite.core.errors import ConversionError

    # The UNet in Keras' own formulations (no device graph): at int16 TensorFlow emits a
    # SQUARED_DIFFERENCE LiteRT has no kernel for. The conversion succeeds, the file would not run.
    # (No export cache: this graph must not be stored under the device graph's key.)
    monkeypatch.setattr(export, "device_graph", attention.export_attention)
    with pytest.raises(ConversionError, match="diffusion.tflite converts in int16x8, but LiteRT cannot run it.*"
                                              "SquaredDifference.*--quant int8"):
        convert(tiny_request(tmp_path / "o", quant="int16x8", components="diffusion"))
    assert not list((tmp_path / "o").glob("*.tflite"))


def test_16x8_mode_converts_and_matches(tmp_path, keras_models, tiny_dims):
    from sd2tflite.convert.orchestrate import convert
    from sd2tflite.core.precisions import RECIPES
    from sd2tflite.runtime.litert import load_component
    from sd2tflite.core.metrics import parity

    from sd2tflite.convert.keras_models import call_keras

    from .conftest import seeded_inputs

    result = convert(tiny_request(tmp_path / "s", quant="int16x8", components="decoder", calibration="synthetic"))
    stats = result.manifest.artifacts[0].op_stats
    assert stats["quantized_ops"] > stats["ops"] // 2
    decoder = load_component(Path(tmp_path / "s"), "decoder")
    sample = seeded_inputs("decoder", tiny_dims)[0]
    figures = parity(call_keras(keras_models["decoder"], sample)[0], decoder(**sample)["image"])
    print(f"\nint16x8 decoder: {figures}")
    assert figures.passes(*RECIPES["int16x8"].tolerance("decoder"))
