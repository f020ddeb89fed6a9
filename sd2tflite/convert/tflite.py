"""The convert stage: one SavedModel -> one .tflite file, with the precision's converter settings
(applied from the recipe table's data), an atomic write, and the file's operator statistics."""

from __future__ import annotations

import contextlib
import hashlib
import resource
import time
from pathlib import Path

import numpy as np

from ..core.errors import ConversionError, SD2TFLiteError
from ..core.fsutil import write_bytes_atomic
from ..core.precisions import RECIPES, QuantRecipe
from ..core.registry import TensorSpec
from .limits import HARD_FLATBUFFER_LIMIT
from .plan import SIGNATURE_KEY, PlannedArtifact
from ..core.quiet import native_stderr_muted


def apply_recipe(converter, recipe: QuantRecipe, representative_dataset=None):
    """Sets a tf.lite.TFLiteConverter up as the recipe's data says."""
    import tensorflow as tf

    if recipe.needs_calibration:
        if representative_dataset is None:
            raise ValueError(f"{recipe.name} needs a representative dataset")
        converter.representative_dataset = representative_dataset
    converter.optimizations = [getattr(tf.lite.Optimize, name) for name in recipe.optimizations]
    converter.target_spec.supported_types = [getattr(tf, name) for name in recipe.supported_types]
    converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, name) for name in recipe.supported_ops]
    return converter


def convert_stage(artifact: PlannedArtifact, quant: str, out_dir: str, keep_float=None) -> dict:
    """SavedModel -> .tflite (atomic write). Returns sha256, bytes, seconds, peak RSS, op stats."""
    import tensorflow as tf

    start = time.monotonic()
    recipe = RECIPES[quant]
    converter = saved_model_converter(artifact.saved_model_dir)
    # Conversion metadata costs a full in-memory copy of the model; it records nothing we need.
    converter.exclude_conversion_metadata = True
    samples = _load_samples(artifact.calibration_file, artifact.inputs) if artifact.calibration_file else None
    selective = None
    try:
        with _without_buffer_deduplication(), native_stderr_muted():
            if keep_float is None:
                apply_recipe(converter, recipe, (lambda: iter(samples)) if samples else None)
                data = converter.convert()
            else:
                from .calibration.selective import quantize_keeping_float

                result = quantize_keeping_float(converter, keep_float, samples,
                                                lambda conv, dataset: apply_recipe(conv, recipe, dataset))
                data, selective = result.model, result.summary()
    except SD2TFLiteError:
        raise
    except Exception as exc:
        raise ConversionError(f"converting {artifact.file_name} failed: {_conversion_hint(exc, quant)}") from exc
    if "float16" in recipe.supported_types:
        data = float32_gather_tables(data)
    if len(data) >= HARD_FLATBUFFER_LIMIT or b"buffer_location" in data:
        raise ConversionError(
            f"{artifact.file_name} came out at {len(data):,} bytes, too large for a plain "
            "flatbuffer: lower --max-part-bytes or raise --unet-parts"
        )
    op_stats = quantized_op_stats(data)
    if recipe.integer_only and op_stats["float_ops"]:
        # The converter lets some float kernels through even with only the int8 op set.
        named = ", ".join(f"{op} ×{n}" for op, n in op_stats["float_ops"].items())
        raise ConversionError(
            f"{artifact.file_name}: no integer-only kernel for {named}: use --quant int8 (float fallback)")
    if samples:
        _check_it_runs(artifact.file_name, data, samples[0], quant)
    write_bytes_atomic(Path(out_dir) / artifact.file_name, data)
    stats = written_file_stats(data, start, op_stats)
    if selective is not None:
        stats["op_stats"]["kept_float"] = selective
    return stats


def written_file_stats(data: bytes, start: float, op_stats: dict | None = None) -> dict:
    """What the manifest records of a file this worker wrote: sha256 (of the bytes in memory: no
    second read), bytes, operator statistics, seconds since `start`, the worker's peak RSS."""
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "op_stats": quantized_op_stats(data) if op_stats is None else op_stats,
        "seconds": round(time.monotonic() - start, 2),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def float32_gather_tables(data: bytes) -> bytes:
    """An fp16 file with its lookup tables (CLIP's token and position embeddings) in float32.

    The converter stores every float weight as float16 behind a DEQUANTIZE. LiteRT's GPU accelerator
    folds such a DEQUANTIZE into the operator that reads it and then refuses a GATHER whose table
    is float16 and whose rows are float32 ("Input / output dtype mismatch"): the text encoder's
    graph was cut in two and two thirds of it ran on the GPU. A GATHER copies rows and does no
    arithmetic, so its table goes back to float32 (the float16 values, widened exactly) and the
    DEQUANTIZE goes. Costs the tables' extra bytes (full-size v1: 49,408 x 768 x 2 bytes = 76 MB).
    Files without such a GATHER come back unchanged.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    if not _has_gather(data):
        return data
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    code_of = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    changed = False
    for graph in model.subgraphs:
        producer = {out: op for op in graph.operators for out in op.outputs}
        readers: dict[int, int] = {}
        for op in graph.operators:
            for i in op.inputs:
                readers[i] = readers.get(i, 0) + 1
        dropped = []
        for op in graph.operators:
            if code_of[op.opcodeIndex] != schema.BuiltinOperator.GATHER:
                continue
            dequantize = producer.get(op.inputs[0])
            if dequantize is None or code_of[dequantize.opcodeIndex] != schema.BuiltinOperator.DEQUANTIZE:
                continue
            source = graph.tensors[dequantize.inputs[0]]
            table = model.buffers[source.buffer].data
            if source.type != schema.TensorType.FLOAT16 or table is None or readers.get(op.inputs[0]) != 1:
                continue
            widened = np.frombuffer(np.asarray(table, np.uint8).tobytes(), np.float16).astype(np.float32)
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(widened.tobytes(), np.uint8)
            model.buffers.append(buffer)
            graph.tensors[op.inputs[0]].buffer = len(model.buffers) - 1
            if readers.get(dequantize.inputs[0]) == 1:
                model.buffers[source.buffer].data = None  # nothing else reads the float16 copy
            dropped.append(dequantize)
            changed = True
        graph.operators = [op for op in graph.operators if not any(op is d for d in dropped)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if changed else data


def _has_gather(data: bytes) -> bool:
    """Whether the file has any GATHER operator (read in place, no copy of the weights)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(data, 0)
    return any(max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
               == schema.BuiltinOperator.GATHER for i in range(model.OperatorCodesLength()))


def saved_model_converter(saved_model_dir: str):
    """A TFLiteConverter for the SavedModel's one signature, without a loaded copy of its weights.

    `TFLiteConverter.from_saved_model` loads the SavedModel into Python to list its signatures and
    keeps that object (every variable) alive until the converter is gone, although the conversion
    reads the SavedModel from disk again. Built directly, the converter holds nothing: the worker
    converting the 1.25 GB fp32 v1 UNet part peaked at 7.11 GB instead of 8.40 GB, same bytes out
    (benchmarks/records/convert-v1-512-fp32-public-converter.json, convert-v1-512-fp32.json).
    """
    import tensorflow as tf

    try:
        from tensorflow.lite.python.lite import TFLiteSavedModelConverterV2
    except ImportError:  # a TensorFlow that moved the class: the public route, at its memory cost
        return tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[SIGNATURE_KEY])
    return TFLiteSavedModelConverterV2(saved_model_dir, {tf.saved_model.SERVING}, [SIGNATURE_KEY])


def _check_it_runs(file_name: str, data: bytes, sample: dict[str, np.ndarray], quant: str) -> None:
    """One LiteRT call on a calibration sample before the file is written. The converter emits
    some integer operators LiteRT has no kernel for (int16x8's SQUARED_DIFFERENCE, from
    GroupNormalization's variance): such a file would convert, then fail in generate and verify."""
    from ..runtime.litert import invoke_failure
    from .calibration.selective import run_samples

    try:
        with native_stderr_muted():  # LiteRT's "Created ... XNNPACK delegate" line, unless -v
            run_samples(data, [sample])
    except (RuntimeError, ValueError) as exc:
        raise ConversionError(f"{file_name} converts in {quant}, but LiteRT cannot run it ({invoke_failure(exc)}): use "
                              f"--quant int8 for this component (--components picks which to convert)") from exc


@contextlib.contextmanager
def _without_buffer_deduplication():
    """Skips the converter's final read-only buffer deduplication while converting.

    It holds extra copies of the whole model: the worker converting the 1.25 GB fp32 v1 UNet part
    peaked at 9.45 GB with it and 7.12 GB without. Stable Diffusion's weights have (next to) no
    identical buffers for it to merge.
    """
    from tensorflow.lite.python import lite

    original = getattr(lite, "_deduplicate_readonly_buffers", None)
    if original is None:  # a TensorFlow without the step: nothing to skip
        yield
        return
    lite._deduplicate_readonly_buffers = lambda model: model
    try:
        yield
    finally:
        lite._deduplicate_readonly_buffers = original


def quantized_op_stats(data: bytes) -> dict:
    """How many operators run with integer (int8 / int16) activations. Reads the flatbuffer in
    place: the object API would copy every weight buffer."""
    from tensorflow.lite.python import schema_py_generated as schema

    from .calibration.selective import operator_names

    integer_types = {schema.TensorType.INT8, schema.TensorType.INT16, schema.TensorType.UINT8}
    model = schema.Model.GetRootAsModel(data, 0)
    codes = operator_names(model)
    total = quantized = 0
    float_ops: dict[str, int] = {}
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = codes[op.OpcodeIndex()]
            if code in ("QUANTIZE", "DEQUANTIZE"):
                continue
            total += 1
            first = op.Inputs(0) if op.InputsLength() else (op.Outputs(0) if op.OutputsLength() else -1)
            if first >= 0 and graph.Tensors(first).Type() in integer_types:
                quantized += 1
            else:
                float_ops[code] = float_ops.get(code, 0) + 1
    return {"ops": total, "quantized_ops": quantized, "float_ops": dict(sorted(float_ops.items()))}


def _load_samples(path: str, inputs: tuple[TensorSpec, ...]) -> list[dict[str, np.ndarray]]:
    with np.load(path) as data:
        count = len(data[inputs[0].name])
        return [{s.name: data[s.name][i].astype(s.dtype) for s in inputs} for i in range(count)]


def _conversion_hint(exc: Exception, quant: str) -> str:
    """The converter's wall of text, cut to what the user can act on."""
    import re

    text = " ".join(str(exc).split())
    if "Select TF" in text or "Flex" in text:
        return "the graph needs TensorFlow (Flex) ops that LiteRT does not ship"
    if quant == "int16x8" and "Empty min/max" in text:
        return ("int16x8 cannot calibrate this component's integer inputs (a TensorFlow quantizer "
                "limit; the text encoder's token positions hit it): use --quant int8 for it")
    if quant == "int8-strict":
        ops = sorted(set(re.findall(r"op[: ]+'?(?:tfl\.)?([A-Za-z_0-9]+)'? (?:is not|not)", text))
                     | set(re.findall(r"'tfl\.([a-z_0-9]+)'", text)))
        named = f" (ops: {', '.join(ops[:8])})" if ops else ""
        return (f"some operators have no integer-only kernel{named}: use --quant int8 (float fallback) "
                f"or keep them in float with --keep-float; converter said: {text[:200]}")
    return text[:300]
