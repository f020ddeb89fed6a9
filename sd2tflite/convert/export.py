"""The export stage: build the components the plan still needs with their weights, cut the UNet
where the plan says, and write one SavedModel per part (plus int8 calibration samples) into the
run's work folder."""

from __future__ import annotations

import gc
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core.errors import ConversionError
from ..core.fsutil import temp_path
from ..core.precisions import RECIPES
from ..core.registry import COMPONENTS
from ..runtime.samples import synthetic_samples
from .device_layers import device_graph
from .plan import SIGNATURE_KEY, ConversionPlan, PlannedArtifact, calibration_identity, split_output_names
from .request import ConvertRequest


def export_stage(request: ConvertRequest, plan: ConversionPlan, todo: frozenset[str],
                 work_dir: str) -> dict[str, PlannedArtifact]:
    """Exports the planned artifacts whose build keys are in `todo`; returns them by build key,
    each with its SavedModel (and int8 calibration file) set. Components with nothing to do are
    not built."""
    from .weights import build_with_weights

    calibrated = RECIPES[request.quant].needs_calibration
    recorded = None
    exported: dict[str, PlannedArtifact] = {}
    for component in request.components:
        artifacts = plan.of(component)
        if not any(a.build_key in todo for a in artifacts):
            continue
        if calibrated and recorded is None and request.recording is not None:
            recorded = _recorded_samples(request)  # before any model of ours is built: it runs the pipeline
        model = build_with_weights(request.family, component, request.dims, request.weights[component])
        models = part_models(model, component, plan) if COMPONENTS[component].splittable else [model]
        calibration = None
        if calibrated:
            samples = recorded[component] if recorded is not None else synthetic_samples(
                component, request.dims, request.calibration_samples, request.calibration_seed)
            calibration = _calibration_per_part(artifacts, models, samples)
        for i, artifact in enumerate(artifacts):
            if artifact.build_key not in todo:
                continue
            saved_model = _export(models[i], artifact, request.export_cache, work_dir)
            calib_file = None
            if calibration is not None:
                calib_file = os.path.join(work_dir, artifact.file_name.replace(".tflite", ".calib.npz"))
                np.savez(calib_file, **calibration[i])
            exported[artifact.build_key] = replace(
                artifact, saved_model_dir=saved_model, calibration_file=calib_file,
                calibration=calibration_identity(request) if calib_file else None)
        del model, models
        gc.collect()
    return exported


def part_models(model, component: str, plan: ConversionPlan) -> list:
    """One Keras model per planned part of `component`, replaying `model`'s layers (its weights,
    no copies) between the plan's cuts."""
    from .split import KerasGraph

    graph = KerasGraph(model)
    nodes = graph.summary.nodes
    if graph.summary.total_params != plan.split.total_params or any(
            sum(n.params for n in nodes[p.start:p.stop]) != p.params for p in plan.split.parts):
        raise ConversionError(f"the {component} built with its weights ({graph.summary.total_params:,} parameters) "
                              "is not the graph that was planned: its split cannot be applied")
    names = split_output_names(graph.summary, component)
    return [graph.build_part(part, names) for part in plan.split.parts]


def _export(model, artifact: PlannedArtifact, cache: Path | None, work_dir: str) -> str:
    """The SavedModel for `artifact`: exported into the work folder, or found in / added to the
    export cache (keyed by everything but the precision)."""
    if cache is None:
        directory = os.path.join(work_dir, artifact.file_name.replace(".tflite", ".savedmodel"))
        export_saved_model(model, artifact, directory)
        return directory
    cached = cache / artifact.export_key
    if (cached / "saved_model.pb").is_file():
        return str(cached)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(cached)
    try:
        export_saved_model(model, artifact, str(tmp))
        os.replace(tmp, cached)  # a complete SavedModel or nothing under the key
    except OSError:
        if not (cached / "saved_model.pb").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(cached)


def export_saved_model(model, artifact: PlannedArtifact, directory: str) -> None:
    """Keras 3 -> SavedModel with one named, static signature.

    The variables are tracked explicitly so the SavedModel carries the weights (converting
    concrete functions alone drops them). Unlike keras.export.ExportArchive, this traces the
    model once and saves no per-layer functions (tiny UNet: 17.7 s instead of 20.4 s).
    """
    import tensorflow as tf

    output_names = [s.name for s in artifact.outputs]
    specs = [tf.TensorSpec(s.shape, s.dtype, name=s.name) for s in artifact.inputs]

    @tf.function(input_signature=specs, autograph=False)
    def serve(*args):
        result = model(list(args) if len(args) > 1 else args[0], training=False)
        flat = result if isinstance(result, (list, tuple)) else [result]
        return dict(zip(output_names, flat))

    module = tf.Module()
    module.model_variables = [v.value for v in model.variables]
    module.serve = serve
    # Device formulations (4-D GroupNorm, resize, 1-D gathers; device_layers.py) and the export attention
    # (UNet attention in query blocks, CLIP's causal mask finite; attention.py) while tracing.
    with device_graph():
        tf.saved_model.save(
            module, directory, signatures={SIGNATURE_KEY: serve.get_concrete_function()}
        )


def _calibration_per_part(artifacts, models, samples: list[dict[str, np.ndarray]]):
    """Samples for every part: part k sees what the float parts before it compute."""
    from .keras_models import call_keras

    per_part: list[dict[str, np.ndarray]] = []
    values = [dict(s) for s in samples]
    for artifact, model in zip(artifacts, models):
        names = [s.name for s in artifact.inputs]
        per_part.append({n: np.stack([v[n] for v in values]) for n in names})
        if artifact is artifacts[-1]:
            break
        for v in values:
            outs = call_keras(model, {n: v[n] for n in names})
            v.update({s.name: o for s, o in zip(artifact.outputs, outs)})
    return per_part


def _recorded_samples(request: ConvertRequest) -> dict[str, list[dict[str, np.ndarray]]]:
    """Calibration inputs recorded from Keras pipeline runs: from the cache, or recorded now."""
    from .calibration.recorded import load_or_record

    return load_or_record(request.family, request.dims, request.weights, request.recording)
