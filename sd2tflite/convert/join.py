"""Joins the UNet's part files into one .tflite file, the same graph as an unsplit conversion.

The UNet is converted in parts to keep the converter's memory under the budget (plan.py), but a
quantized UNet (~0.9 GB) fits one flatbuffer. Joining works on the converted flatbuffers, not on
the converter: each part's single subgraph is appended to one subgraph, a part's input tensors
that an earlier part produces are replaced by that part's output tensor, the pipeline inputs
(latent, timestep embedding, context) become one input each, and the operator codes and weight
buffers are merged. The joined file computes what the chained parts compute: `check_joined`
runs both on one input before the file is written.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.errors import ConversionError, SD2TFLiteError
from ..core.registry import ModelDims
from .limits import HARD_FLATBUFFER_LIMIT
from .plan import SIGNATURE_KEY, PlannedArtifact

# The converter aligns weight buffers to 16 bytes; keep that (kernels may read them in place).
BUFFER_ALIGNMENT = 16


def join_stage(joined: PlannedArtifact, parts: Sequence[PlannedArtifact], dims: ModelDims, out_dir: str) -> dict:
    """Reads the converted part files, joins them, checks the result against them and writes it
    (atomically). Returns what convert_stage returns, plus the check's largest difference."""
    from ..core.fsutil import write_bytes_atomic
    from .tflite import written_file_stats

    start = time.monotonic()
    data = [(Path(out_dir) / p.file_name).read_bytes() for p in parts]
    output_name = joined.outputs[0].name
    try:
        model = join_parts(data, parts, [s.name for s in joined.inputs], output_name)
        diff = check_joined(model, data, parts, output_name, dims)
    except SD2TFLiteError:
        raise
    except Exception as exc:  # the schema object API, flatbuffers or LiteRT: one line, not a traceback
        raise ConversionError(f"joining the UNet parts failed ({' '.join(str(exc).split())[:200]}): "
                              "keep the parts with --no-join-unet") from exc
    write_bytes_atomic(Path(out_dir) / joined.file_name, model)
    return {**written_file_stats(model, start), "max_abs_diff_vs_parts": diff}


def join_parts(parts: Sequence[bytes], artifacts: Sequence[PlannedArtifact],
               pipeline_inputs: Sequence[str], output_name: str) -> bytes:
    """One flatbuffer from the part flatbuffers (in part order) and their planned wiring."""
    from tensorflow.lite.python import schema_py_generated as schema

    joined = schema.ModelT()
    joined.version = 3
    joined.description = b"sd2tflite: joined UNet parts"
    joined.buffers = [schema.BufferT()]  # buffer 0: the empty sentinel every model starts with
    joined.operatorCodes, joined.metadata, joined.signatureDefs = [], [], []
    graph = schema.SubGraphT()
    graph.tensors, graph.operators, graph.inputs, graph.outputs = [], [], [], []
    graph.name = b"main"
    code_index: dict[tuple, int] = {}
    pipeline_tensor: dict[str, int] = {}  # pipeline input name -> joined tensor
    produced: dict[str, int] = {}  # crossing tensor name -> joined tensor of its producer's output
    runtime_versions = []

    for artifact, data in zip(artifacts, parts):
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
        if len(model.subgraphs) != 1 or len(model.signatureDefs) != 1:
            raise ConversionError(f"{artifact.file_name} has {len(model.subgraphs)} subgraphs: only "
                                  "single-graph parts can be joined; convert with --no-join-unet")
        part = model.subgraphs[0]
        signature = model.signatureDefs[0]
        input_tensor = {_text(m.name): m.tensorIndex for m in signature.inputs}
        output_tensor = {_text(m.name): m.tensorIndex for m in signature.outputs}

        buffer_map = {0: 0}
        for i, buffer in enumerate(model.buffers[1:], start=1):
            buffer_map[i] = len(joined.buffers)
            joined.buffers.append(buffer)

        # Part tensors that are the same tensor as one already in the joined graph.
        same_as: dict[int, int] = {}
        for name, index in input_tensor.items():
            source = artifact.wiring.get(name)
            if source is None:
                if name in pipeline_tensor:
                    same_as[index] = pipeline_tensor[name]
            elif name in produced:
                same_as[index] = produced[name]
            else:
                raise ConversionError(f"{artifact.file_name}: input {name} comes from part {source}, which "
                                      "does not output it: re-run with --force")
            if index in same_as:
                _check_same_type(part.tensors[index], graph.tensors[same_as[index]], artifact.file_name, name)

        tensor_map: dict[int, int] = {-1: -1}  # -1: an optional input left out
        for i, tensor in enumerate(part.tensors):
            if i in same_as:
                tensor_map[i] = same_as[i]
                continue
            tensor.buffer = buffer_map[tensor.buffer]
            tensor_map[i] = len(graph.tensors)
            graph.tensors.append(tensor)
        for name, index in input_tensor.items():
            if artifact.wiring.get(name) is None and name not in pipeline_tensor:
                pipeline_tensor[name] = tensor_map[index]
        for name, index in output_tensor.items():
            produced[name] = tensor_map[index]

        for op in part.operators:
            code = model.operatorCodes[op.opcodeIndex]
            key = (code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version)
            if key not in code_index:
                code_index[key] = len(joined.operatorCodes)
                joined.operatorCodes.append(code)
            op.opcodeIndex = code_index[key]
            op.inputs = [tensor_map[int(t)] for t in _as_list(op.inputs)]
            op.outputs = [tensor_map[int(t)] for t in _as_list(op.outputs)]
            if op.intermediates is not None:
                op.intermediates = [tensor_map[int(t)] for t in _as_list(op.intermediates)]
            graph.operators.append(op)

        for entry in model.metadata or []:
            if _text(entry.name) == "min_runtime_version":
                runtime_versions.append(bytes(model.buffers[entry.buffer].data).rstrip(b"\0"))

    missing = [n for n in pipeline_inputs if n not in pipeline_tensor]
    if missing or output_name not in produced:
        raise ConversionError(f"the UNet parts do not cover the whole UNet (missing {missing or [output_name]}): "
                              "re-run with --force")
    graph.inputs = [pipeline_tensor[n] for n in pipeline_inputs]
    graph.outputs = [produced[output_name]]
    joined.subgraphs = [graph]
    joined.signatureDefs = [_signature(schema, pipeline_inputs, graph.inputs, output_name, graph.outputs[0])]
    if runtime_versions:  # the newest any part needs
        newest = max(runtime_versions, key=lambda v: tuple(int(x) for x in v.split(b".") if x.isdigit()))
        joined.metadata = [_metadata(schema, joined, "min_runtime_version", newest.ljust(16, b"\0"))]

    for i, buffer in enumerate(joined.buffers):
        joined.buffers[i] = _aligned(schema, buffer)
    return _serialize(joined, sum(len(p) for p in parts))


def check_joined(joined: bytes, parts: Sequence[bytes], artifacts: Sequence[PlannedArtifact],
                 output_name: str, dims: ModelDims, seed: int = 0) -> float:
    """Runs the joined file and the chained parts on one pipeline-like UNet input; returns the
    largest absolute difference of the outputs, raising when the two disagree beyond rounding."""
    from ..core.quiet import native_stderr_muted
    from .calibration.selective import run_samples
    from ..runtime.samples import synthetic_samples

    [values] = synthetic_samples("diffusion", dims, 1, seed)
    feeds = dict(values)
    with native_stderr_muted():  # LiteRT's "Created ... XNNPACK delegate" line, unless -v
        for artifact, data in zip(artifacts, parts):
            feeds.update(run_samples(data, [{s.name: feeds[s.name] for s in artifact.inputs}])[0])
        got = run_samples(joined, [values])[0][output_name]
    expected = feeds[output_name]
    diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
    scale = float(np.max(np.abs(expected))) or 1.0
    if not np.isfinite(diff) or diff > 1e-3 * scale:
        raise ConversionError(f"the joined UNet differs from its parts (max |diff| {diff:.3g}, output scale "
                              f"{scale:.3g}): keep the parts with --no-join-unet")
    return diff


def _check_same_type(tensor, joined_tensor, file_name: str, name: str) -> None:
    if tensor.type != joined_tensor.type or list(_as_list(tensor.shape)) != list(_as_list(joined_tensor.shape)):
        raise ConversionError(f"{file_name}: input {name} does not match the tensor that feeds it "
                              "(type or shape): keep the parts with --no-join-unet")


def _signature(schema, names, inputs, output_name, output):
    signature = schema.SignatureDefT()
    signature.signatureKey = SIGNATURE_KEY
    signature.subgraphIndex = 0
    signature.inputs = [_tensor_map(schema, n, i) for n, i in zip(names, inputs)]
    signature.outputs = [_tensor_map(schema, output_name, output)]
    return signature


def _tensor_map(schema, name: str, index: int):
    entry = schema.TensorMapT()
    entry.name, entry.tensorIndex = name, index
    return entry


def _metadata(schema, model, name: str, data: bytes):
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    return entry


def _aligned(schema, buffer):
    """The buffer, to be packed with its data aligned as the converter aligns it."""
    aligned = _aligned_buffer_type(schema)()
    aligned.data, aligned.offset, aligned.size = buffer.data, 0, 0
    return aligned


@functools.cache
def _aligned_buffer_type(schema):
    class AlignedBuffer(schema.BufferT):
        def Pack(self, builder):
            if self.data is None or len(self.data) == 0:
                return super().Pack(builder)
            data = np.ascontiguousarray(self.data, dtype=np.uint8)
            builder.StartVector(1, data.size, BUFFER_ALIGNMENT)
            builder.head = builder.head - data.size
            builder.Bytes[builder.Head():builder.Head() + data.size] = memoryview(data)
            builder.vectorNumElems = data.size
            offset = builder.EndVector()
            schema.BufferStart(builder)
            schema.BufferAddData(builder, offset)
            return schema.BufferEnd(builder)

    return AlignedBuffer


def _serialize(model, size_hint: int) -> bytes:
    import flatbuffers

    too_large = ConversionError("the joined UNet would pass the 2 GiB flatbuffer limit: keep the parts "
                                "with --no-join-unet")
    try:
        # Sized up front: growing doubles the builder and copies it (a 0.9 GB UNet would pass 2 GB).
        builder = flatbuffers.Builder(min(size_hint + (16 << 20), flatbuffers.Builder.MAX_BUFFER_SIZE))
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    except flatbuffers.builder.BuilderSizeError as exc:
        raise too_large from exc
    if len(builder.Bytes) - builder.Head() >= HARD_FLATBUFFER_LIMIT:
        raise too_large
    return bytes(memoryview(builder.Bytes)[builder.Head():])


def _as_list(values):
    return [] if values is None else list(values)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
