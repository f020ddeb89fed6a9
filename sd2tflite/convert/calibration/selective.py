"""Selective int8: keep chosen operators in float, by name, by type, or automatically.

The converter calibrates once (`_experimental_calibrate_only`: the float model annotated with the
ranges it saw), then `mlir_quantize` quantizes that model with a denylist; re-quantizing with
another denylist costs no new calibration. The automatic mode searches operator types against the
float model on held-out samples (calibration never sees them): each type quantized alone, then
the best ones together while the part stays at the target SNR. (The quantization debugger's
per-layer RMSE / scale ranking was tried first: keeping its 59 worst layers of the tiny CLIP
encoder in float left the encoder at 1.2 dB SNR. The damage there comes from attention logits that
share one int8 range with the causal mask; quantizing ADD, BATCH_MATMUL, RESHAPE or SOFTMAX alone
is enough to cause it, so only a search over what is quantized finds it.)
Imports TensorFlow: runs in the convert stage only.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ...core.errors import UsageError

AUTO = "auto"
DEFAULT_TARGET_SNR_DB = 20.0


@dataclass(frozen=True)
class KeepFloat:
    """Parsed --keep-float: op types (SOFTMAX) and tensor-name globs, or auto[:SNR_DB]."""

    patterns: tuple[str, ...] = ()
    auto_target_db: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> "KeepFloat | None":
        if not text:
            return None
        items = [t.strip() for t in text.split(",") if t.strip()]
        target = None
        patterns = []
        for item in items:
            if item == AUTO or item.startswith(AUTO + ":"):
                value = item.partition(":")[2] or str(DEFAULT_TARGET_SNR_DB)
                try:
                    target = float(value)
                except ValueError:
                    raise UsageError(f"--keep-float {item!r}: use auto or auto:SNR_DB (e.g. auto:25)") from None
            else:
                patterns.append(item)
        return cls(tuple(patterns), target)

    def to_json(self) -> dict:
        return {"patterns": list(self.patterns), "auto_target_db": self.auto_target_db}

    def check(self) -> None:
        """Each pattern is an operator type or a glob; checked before converting anything."""
        from tensorflow.lite.python import schema_py_generated as schema

        known = {k for k in vars(schema.BuiltinOperator) if not k.startswith("_")}
        for pattern in self.patterns:
            if pattern.upper() not in known and not any(c in pattern for c in "*?["):
                raise UsageError(
                    f"--keep-float {pattern!r} is neither a TFLite operator type (SOFTMAX, ADD, ...) nor a "
                    "tensor-name glob (with * or ?): check the pattern"
                )


@dataclass
class SelectiveResult:
    model: bytes
    kept_ops: list[str] = field(default_factory=list)
    kept_nodes: list[str] = field(default_factory=list)
    held_out_snr_db: float | None = None
    tried: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {"kept_ops": self.kept_ops, "kept_nodes": len(self.kept_nodes),
                "kept_node_names": self.kept_nodes[:50], "held_out_snr_db": self.held_out_snr_db,
                "tried": self.tried}


def operator_names(root) -> list[str]:
    """The builtin operator name of each operator code of a flatbuffer Model ('' if unknown)."""
    from tensorflow.lite.python import schema_py_generated as schema

    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [builtin.get(max(root.OperatorCodes(i).BuiltinCode(), root.OperatorCodes(i).DeprecatedBuiltinCode()), "")
            for i in range(root.OperatorCodesLength())]


def _tensor_and_op_names(model: bytes) -> tuple[set[str], set[str]]:
    """Output tensor names of every operator, and the builtin operator types present."""
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.Model.GetRootAsModel(model, 0)
    codes = operator_names(root)
    graph = root.Subgraphs(0)
    tensors, ops = set(), set()
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        ops.add(codes[op.OpcodeIndex()])
        for j in range(op.OutputsLength()):
            tensors.add(graph.Tensors(op.Outputs(j)).Name().decode())
    return tensors, ops


def _quantize(calibrated: bytes, ops: list[str], nodes: list[str], numeric_verify: bool = False) -> bytes:
    from tensorflow.lite.python import convert

    return convert.mlir_quantize(calibrated, denylisted_ops=ops or None, denylisted_nodes=nodes or None,
                                 enable_numeric_verify=numeric_verify)


def run_samples(model: bytes, samples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """A converted model (bytes) on LiteRT, one call per sample: its outputs by name."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=model).get_signature_runner()
    return [{k: np.array(v) for k, v in runner(**s).items()} for s in samples]


def _snr_db(reference: list[dict], actual: list[dict]) -> float:
    from ...core.metrics import parity

    def flat(outputs: list[dict]) -> np.ndarray:
        return np.concatenate([np.ravel(o[k]) for o in outputs for k in sorted(o)])

    return parity(flat(reference), flat(actual)).snr_db


def split_held_out(samples: list) -> tuple[list, list]:
    """(calibration, held-out): the last quarter is never calibrated on."""
    if len(samples) < 2:
        raise UsageError("--keep-float auto needs at least 2 calibration samples: raise --calibration-samples")
    cut = len(samples) - max(1, len(samples) // 4)
    return samples[:cut], samples[cut:]


def quantize_keeping_float(converter, keep: KeepFloat, samples: list[dict[str, np.ndarray]],
                           configure: Callable) -> SelectiveResult:
    """Converts with `converter` keeping the chosen parts in float. `configure(converter,
    representative_dataset)` is the recipe's int8 set-up; with auto, the last quarter of the
    samples is held out of calibration."""
    calibration, held_out = split_held_out(samples) if keep.auto_target_db is not None else (samples, [])
    configure(converter, lambda: iter(calibration))
    converter._experimental_calibrate_only = True  # the documented route of the quantization debugger
    converter.experimental_new_quantizer = True
    calibrated = converter.convert()
    tensors, op_types = _tensor_and_op_names(calibrated)
    ops, nodes = [], []
    for pattern in keep.patterns:
        if pattern.upper() in op_types:
            ops.append(pattern.upper())
            continue
        nodes.extend(sorted(fnmatch.filter(tensors, pattern)))  # a part may have none: fine
    result = SelectiveResult(_quantize(calibrated, ops, nodes), ops, nodes)
    if keep.auto_target_db is None:
        return result

    reference = run_samples(calibrated, held_out)  # the calibrated model still computes in float

    def snr_with(float_ops: set[str]) -> float:
        model = _quantize(calibrated, sorted(float_ops), nodes)
        value = _snr_db(reference, run_samples(model, held_out))
        result.tried.append({"float_ops": sorted(float_ops), "snr_db": round(value, 2)})
        return value

    snr = snr_with(set(ops))
    if snr >= keep.auto_target_db:
        result.held_out_snr_db = snr
        return result
    # Quantize what is safe: each op type alone (the rest float), best first, then accumulate
    # while the part stays at the target.
    candidates = sorted(op_types - set(ops) - {""})
    alone = {op: snr_with(op_types - {op}) for op in candidates}
    quantized: set[str] = set()
    for op in sorted(candidates, key=lambda o: -alone[o]):
        if alone[op] < keep.auto_target_db:
            break
        value = snr_with(op_types - quantized - {op})
        if value >= keep.auto_target_db:
            quantized.add(op)
            snr = value
    kept = sorted(op_types - quantized - {""})
    result.model = _quantize(calibrated, kept, nodes)
    result.kept_ops, result.held_out_snr_db = kept, snr if quantized else float("inf")
    return result
