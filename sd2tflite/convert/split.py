"""Cutting a functional Keras graph into parts that each stay under a byte cap.

`plan_split` is pure: it works on a `GraphSummary` (plain data: nodes in execution order with their
parameter counts and the tensors they read and write) and returns a `SplitPlan` that can be
printed, tested and stored in the manifest. `KerasGraph` derives the summary from a Keras model
and builds one Keras model per planned part by replaying the original layers (shared weights, no
copies), so the cut is generic and not written per architecture.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

# Planning estimate of file bytes over raw weight bytes (flatbuffer tables, op metadata).
_FILE_OVERHEAD_RATIO = 1.01
_FILE_OVERHEAD_BYTES = 1 << 20
# How far (as a share of all parameters) a cut may move from its balanced position to find a
# place where fewer tensors cross.
_CUT_SLACK = 0.03


@dataclass(frozen=True)
class GraphNode:
    index: int
    layer: str  # the Keras layer's class name, for printing
    params: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class GraphSummary:
    """A functional graph as plain data; nodes are in a valid execution order."""

    nodes: tuple[GraphNode, ...]
    model_inputs: tuple[str, ...]
    model_outputs: tuple[str, ...]
    tensor_shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    tensor_dtypes: dict[str, str] = field(default_factory=dict)

    @property
    def total_params(self) -> int:
        return sum(n.params for n in self.nodes)


@dataclass(frozen=True)
class PartPlan:
    index: int
    start: int  # first node index (inclusive)
    stop: int  # last node index (exclusive)
    params: int
    estimated_bytes: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class SplitPlan:
    parts: tuple[PartPlan, ...]
    total_params: int
    bytes_per_weight: float
    max_part_bytes: int

    def producer_of(self, tensor: str) -> int | None:
        """Index of the part whose outputs include `tensor`; None for a model input."""
        for part in self.parts:
            if tensor in part.outputs:
                return part.index
        return None


def estimate_file_bytes(params: int, bytes_per_weight: float) -> int:
    return int(params * bytes_per_weight * _FILE_OVERHEAD_RATIO) + _FILE_OVERHEAD_BYTES


def plan_split(
    graph: GraphSummary,
    *,
    bytes_per_weight: float,
    max_part_bytes: int,
    min_parts: int = 1,
    max_part_params: int | None = None,
    output_names: dict[str, str] | None = None,
) -> SplitPlan:
    """Fewest parts (at least `min_parts`) whose estimated file sizes are all under the cap and,
    if given, whose parameter counts are all under `max_part_params` (a converter-memory bound).

    Cuts sit near equal shares of the parameters; within a small slack the cut with the fewest
    crossing tensors wins. `output_names` renames the model outputs (e.g. to 'noise_pred').
    """
    from ..core.errors import PlanError

    total = graph.total_params
    n_nodes = len(graph.nodes)
    if min_parts < 1:
        raise PlanError("the number of parts must be at least 1: pass --unet-parts 1 or more")
    params_cap = max_part_params or total or 1
    biggest_node = max((n.params for n in graph.nodes), default=0)
    if estimate_file_bytes(biggest_node, bytes_per_weight) > max_part_bytes or biggest_node > params_cap:
        raise PlanError(
            f"one layer alone has {biggest_node:,} parameters, more than one part may hold: "
            "raise --max-part-bytes / --memory-budget"
        )
    n_parts = max(
        min_parts,
        math.ceil(estimate_file_bytes(total, bytes_per_weight) / max_part_bytes),
        math.ceil(total / params_cap),
    )
    if min_parts > n_nodes:
        raise PlanError(f"--unet-parts {min_parts}: the graph has only {n_nodes} layers to cut between: "
                        f"ask for at most {n_nodes} parts")
    while n_parts <= n_nodes:
        cuts = _choose_cuts(graph, n_parts)
        plan = _make_plan(graph, cuts, bytes_per_weight, max_part_bytes, output_names or {})
        if all(p.estimated_bytes <= max_part_bytes and p.params <= params_cap for p in plan.parts):
            return plan
        n_parts += 1
    raise PlanError(
        f"cannot cut the graph into parts under {max_part_bytes:,} bytes: raise --max-part-bytes"
    )


def _crossing_counts(graph: GraphSummary) -> list[int]:
    """crossings[c] = number of tensors live across a cut placed before node c."""
    produced_at: dict[str, int] = {t: -1 for t in graph.model_inputs}
    last_use: dict[str, int] = {}
    for node in graph.nodes:
        for t in node.outputs:
            produced_at[t] = node.index
        for t in node.inputs:
            last_use[t] = node.index
    crossings = [0] * (len(graph.nodes) + 1)
    for t, first in produced_at.items():
        last = last_use.get(t, first)
        for c in range(first + 1, last + 1):
            crossings[c] += 1
    return crossings


def _choose_cuts(graph: GraphSummary, n_parts: int) -> list[int]:
    total = graph.total_params
    cumulative = [0]
    for node in graph.nodes:
        cumulative.append(cumulative[-1] + node.params)
    crossings = _crossing_counts(graph)
    cuts: list[int] = []
    for k in range(1, n_parts):
        target = total * k / n_parts
        lower = cuts[-1] + 1 if cuts else 1
        upper = len(graph.nodes) - (n_parts - k)
        candidates = range(lower, upper + 1)
        near = [c for c in candidates if abs(cumulative[c] - target) <= _CUT_SLACK * total]
        if near:
            best = min(near, key=lambda c: (crossings[c], abs(cumulative[c] - target)))
        else:
            best = min(candidates, key=lambda c: abs(cumulative[c] - target))
        cuts.append(best)
    return cuts


def _make_plan(
    graph: GraphSummary,
    cuts: list[int],
    bytes_per_weight: float,
    max_part_bytes: int,
    output_names: dict[str, str],
) -> SplitPlan:
    bounds = [0, *cuts, len(graph.nodes)]
    consumers: dict[str, list[int]] = {}
    for node in graph.nodes:
        for t in node.inputs:
            consumers.setdefault(t, []).append(node.index)
    parts = []
    for i in range(len(bounds) - 1):
        start, stop = bounds[i], bounds[i + 1]
        nodes = graph.nodes[start:stop]
        produced = [t for n in nodes for t in n.outputs]
        produced_set = set(produced)
        inputs: list[str] = []
        for n in nodes:
            for t in n.inputs:
                if t not in produced_set and t not in inputs:
                    inputs.append(t)
        outputs = [
            t
            for t in produced
            if t in graph.model_outputs or any(c >= stop for c in consumers.get(t, []))
        ]
        params = sum(n.params for n in nodes)
        parts.append(
            PartPlan(
                index=i,
                start=start,
                stop=stop,
                params=params,
                estimated_bytes=estimate_file_bytes(params, bytes_per_weight),
                inputs=tuple(output_names.get(t, t) for t in inputs),
                outputs=tuple(output_names.get(t, t) for t in outputs),
            )
        )
    return SplitPlan(tuple(parts), graph.total_params, bytes_per_weight, max_part_bytes)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).lower()


class KerasGraph:
    """A functional Keras model seen as a `GraphSummary`, able to build models for its parts."""

    def __init__(self, model):
        self.model = model
        self._tensor_names: dict[int, str] = {}
        self._tensors: dict[str, object] = {}
        for tensor in model.inputs:
            self._name(tensor, tensor.name)
        depths = sorted(model._nodes_by_depth, reverse=True)
        self._nodes = [
            node
            for depth in depths
            for node in model._nodes_by_depth[depth]
            if node.operation is not None and not node.is_input
        ]
        seen_layers: set[int] = set()
        summary_nodes = []
        for index, node in enumerate(self._nodes):
            layer = node.operation
            layer_name = _snake(type(layer).__name__)
            outputs = tuple(
                self._name(t, f"t{index:03d}_{layer_name}" + (f"_{k}" if k else ""))
                for k, t in enumerate(node.outputs)
            )
            # A layer called twice shares its weights: count them once.
            params = 0 if id(layer) in seen_layers else int(layer.count_params())
            seen_layers.add(id(layer))
            summary_nodes.append(
                GraphNode(
                    index=index,
                    layer=type(layer).__name__,
                    params=params,
                    inputs=tuple(self._tensor_names[id(t)] for t in node.input_tensors),
                    outputs=outputs,
                )
            )
        self.summary = GraphSummary(
            nodes=tuple(summary_nodes),
            model_inputs=tuple(self._tensor_names[id(t)] for t in model.inputs),
            model_outputs=tuple(self._tensor_names[id(t)] for t in model.outputs),
            tensor_shapes={n: tuple(t.shape) for n, t in self._tensors.items()},
            tensor_dtypes={n: str(t.dtype) for n, t in self._tensors.items()},
        )

    def _name(self, tensor, name: str) -> str:
        self._tensor_names[id(tensor)] = name
        self._tensors[name] = tensor
        return name

    def build_part(self, part: PartPlan, output_names: dict[str, str] | None = None):
        """A Keras model computing `part` from its crossing inputs, reusing the original layers.

        Inputs and outputs are ordered as in the plan; renamed outputs (e.g. 'noise_pred') are
        mapped back to the graph's own tensor names here.
        """
        import keras

        renamed_back = {v: k for k, v in (output_names or {}).items()}
        values: dict[int, object] = {}
        new_inputs = []
        for name in part.inputs:
            original = self._tensors[renamed_back.get(name, name)]
            new = keras.Input(
                shape=tuple(original.shape[1:]), dtype=original.dtype, name=name
            )
            values[id(original)] = new
            new_inputs.append(new)
        for node in self._nodes[part.start : part.stop]:
            args, kwargs = node.arguments.fill_in(values)
            result = node.operation(*args, **kwargs)
            flat = result if isinstance(result, (list, tuple)) else [result]
            for original, new in zip(node.outputs, flat):
                values[id(original)] = new
        outputs = [values[id(self._tensors[renamed_back.get(n, n)])] for n in part.outputs]
        return keras.Model(new_inputs, outputs, name=f"part_{part.index}")
