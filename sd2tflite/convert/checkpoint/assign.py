"""Assigning canonical tensors to a built Keras model through its table, tensor by tensor."""

from __future__ import annotations

import numpy as np

from sd2tflite.core.errors import WeightsError

from .builders import Row, source_shape, to_keras
from .layouts import Group, _short
from .lora import Lora, apply, deltas_for


def assign(model, rows: list[Row], group: Group, prefixes: tuple[str, ...], loras: list[Lora],
           component: str) -> None:
    """Checks names and shapes first (nothing read), then reads, merges LoRAs, transforms and
    assigns one tensor at a time: at most one extra tensor in memory beyond the model."""
    where = group.files[0].path if group.files else group.name
    expected = {n for n in group.tensors if n.startswith(prefixes)}
    used = {r.source for r in rows}
    missing = sorted(used - set(group.tensors))
    if missing:
        raise WeightsError(f"{where}: {len(missing)} {component} tensors missing: {_short(missing)}; "
                           "the checkpoint is incomplete or not SD 1.x/2.x")
    left = sorted(expected - used)
    if left:
        raise WeightsError(f"{where}: {len(left)} {component} tensors unused by keras-cv's structure: "
                           f"{_short(left)}; the checkpoint has an architecture sd2tflite does not build")
    assigned = {id(r.target) for r in rows}
    unassigned = [v.path for v in model.weights if id(v) not in assigned]
    if unassigned or len(assigned) != len(rows):
        raise WeightsError(f"internal: {len(unassigned)} Keras weights of {component} have no source: "
                           f"{_short(unassigned)}")
    for r in rows:
        ref = group.tensors[r.source]
        want = source_shape(tuple(r.target.shape), r.transform)
        if tuple(ref.shape) != want:
            raise WeightsError(f"{ref.label}: wrong shape for {r.source}: expected {list(want)}, found "
                               f"{list(ref.shape)}")
    deltas = deltas_for(loras, group.name)
    for r in rows:
        ref = group.tensors[r.source]
        x = ref.read()
        refuse_non_finite(x, f"{ref.label}: tensor {r.source}", "the checkpoint is damaged: re-download it or use "
                          "another one")
        if r.source in deltas:
            x = apply(x, deltas[r.source])
            refuse_non_finite(x, f"{r.source} after merging {', '.join(str(m.path) for m in loras)}",
                              "a LoRA scale or alpha too large for float32: lower the scale")
        r.target.assign(np.ascontiguousarray(to_keras(x, r.transform)))
        del x


def refuse_non_finite(x: np.ndarray, what: str, fix: str) -> None:
    """A weight with NaN or Inf would make every output NaN: refused at convert time, naming it."""
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise WeightsError(f"{what} holds {bad:,} NaN/Inf values of {x.size:,}; {fix}")
