"""Planning a conversion as plain data: the files to write (component, part, signature, wiring,
build key), the UNet split and whether its parts are joined into one file. `plan_conversion` makes
the one `ConversionPlan` of a run: --dry-run prints it, and the stages (export, convert, join,
manifest) receive it. Building it needs the Keras graphs (for the split) but loads no weights and
converts nothing.
"""

from __future__ import annotations

import gc
import hashlib
import json
from dataclasses import dataclass

from ..core.errors import UsageError
from ..core.precisions import RECIPES
from ..core.registry import COMPONENTS, TensorSpec
from ..core.versions import CONVERTER_LIBRARIES, library_versions
from . import attention, device_layers
from .limits import estimate_converter_rss, max_part_params
from .request import ConvertRequest
from .split import SplitPlan, estimate_file_bytes

SIGNATURE_KEY = "serving_default"


@dataclass(frozen=True)
class PlannedArtifact:
    """One file to produce, as plain (picklable) data."""

    component: str
    part: int
    num_parts: int
    file_name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    wiring: dict[str, int | None]
    params: int
    estimated_bytes: int
    build_key: str
    export_key: str  # hash of what determines the SavedModel (not the precision): --export-cache
    # Set on the export stage's copy of the artifact (the plan's own carries None):
    saved_model_dir: str | None = None
    calibration_file: str | None = None
    calibration: dict | None = None  # provenance of the calibration data (int8)


def file_name(component: str, part: int, num_parts: int) -> str:
    return f"{component}.tflite" if num_parts == 1 else f"{component}_part{part}.tflite"


# What a precision adds to a file's identity; the SavedModel it is converted from does not depend on it.
_PRECISION_FIELDS = ("quant", "calibration", "keep_float")


def _keys(request: ConvertRequest, component: str, part_fields: dict) -> dict[str, str]:
    """build_key (everything that determines the file) and export_key (its SavedModel)."""
    identity = {
        # Another TensorFlow / Keras / keras-cv can convert differently: rebuild, don't reuse.
        "versions": {k: v for k, v in library_versions(CONVERTER_LIBRARIES).items() if k != "python"},
        "family": request.family,
        "quant": request.quant,
        "dims": request.dims.to_json(),
        "component": component,
        "weights": request.weights[component].identity,
        "calibration": calibration_identity(request),
        "keep_float": request.keep_float.to_json() if request.keep_float else None,
        "attention_query_block": attention.QUERY_BLOCK,  # the exported graph's shape (attention.py)
        "causal_mask_margin": attention.CAUSAL_MASK_MARGIN,
        "device_graph_revision": device_layers.REVISION,  # device_layers.py's formulations
        **part_fields,
    }
    if component == "diffusion":  # only the UNet's graph changed with this revision
        identity["unet_attention_revision"] = attention.UNET_ATTENTION_REVISION
    export = {k: v for k, v in identity.items() if k not in _PRECISION_FIELDS}
    return {"build_key": _digest(identity), "export_key": _digest(export)}


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def calibration_identity(request: ConvertRequest) -> dict | None:
    """What the int8 calibration data of a request is, for build keys and the manifest."""
    if not RECIPES[request.quant].needs_calibration:
        return None
    if request.recording is None:
        return {"source": "synthetic", "samples": request.calibration_samples, "seed": request.calibration_seed}
    from .calibration.recorded import cache_key, pipeline_weights

    key = cache_key(request.family, request.dims, pipeline_weights(request.weights), request.recording)
    return {"source": "recorded", "key": key,
            **request.recording.describe()}


def plan_component(request: ConvertRequest, component: str, model) -> tuple[list[PlannedArtifact], SplitPlan | None]:
    """The planned artifacts of one component, and its split plan (None for an unsplittable one)."""
    from .split import KerasGraph, plan_split

    spec = COMPONENTS[component]
    recipe = RECIPES[request.quant]
    dims = request.dims
    pipeline_inputs = {s.name: s for s in spec.input_specs(dims)}
    output_spec = spec.output_spec(dims)

    if not spec.splittable:
        params = int(model.count_params())
        keys = _keys(request, component, {"part": 0, "num_parts": 1})
        artifact = PlannedArtifact(
            component, 0, 1, file_name(component, 0, 1),
            inputs=tuple(pipeline_inputs.values()), outputs=(output_spec,),
            wiring={name: None for name in pipeline_inputs}, params=params,
            estimated_bytes=estimate_file_bytes(params, recipe.bytes_per_weight), **keys,
        )
        return [artifact], None

    graph = KerasGraph(model)
    output_names = split_output_names(graph.summary, component)
    plan: SplitPlan = plan_split(
        graph.summary,
        bytes_per_weight=recipe.bytes_per_weight,
        max_part_bytes=request.max_part_bytes,
        min_parts=request.unet_parts or 1,
        max_part_params=max_part_params(request.quant, request.memory_budget),
        output_names=output_names,
    )
    renamed_back = {v: k for k, v in output_names.items()}

    def tensor_spec(name: str) -> TensorSpec:
        if name in pipeline_inputs:
            return pipeline_inputs[name]
        if name == spec.output_name:
            return output_spec
        shape = graph.summary.tensor_shapes[renamed_back.get(name, name)]
        dtype = graph.summary.tensor_dtypes[renamed_back.get(name, name)]
        return TensorSpec(name, (dims.batch_size, *shape[1:]), dtype)

    artifacts = []
    n = len(plan.parts)
    for part in plan.parts:
        keys = _keys(request, component, {
            "part": part.index, "num_parts": n, "nodes": [part.start, part.stop],
            "inputs": list(part.inputs), "outputs": list(part.outputs),
        })
        artifacts.append(PlannedArtifact(
            component, part.index, n, file_name(component, part.index, n),
            inputs=tuple(tensor_spec(t) for t in part.inputs),
            outputs=tuple(tensor_spec(t) for t in part.outputs),
            wiring={t: plan.producer_of(t) for t in part.inputs},
            params=part.params, estimated_bytes=part.estimated_bytes, **keys,
        ))
    return artifacts, plan


def split_output_names(summary, component: str) -> dict[str, str]:
    """The graph's output tensor renamed to the component's output name (e.g. 'noise_pred')."""
    return {summary.model_outputs[0]: COMPONENTS[component].output_name}


# Bumped when join.py changes what it writes: a joined file of an older revision is rebuilt.
JOIN_REVISION = 1


def joins_unet(request: ConvertRequest, parts: list[PlannedArtifact]) -> bool:
    """Whether the UNet's parts are delivered as one file (join.py). By default they are when the
    split exists only to keep the converter under --memory-budget: the joined file fits
    --max-part-bytes and the user did not ask for parts (--unet-parts)."""
    if len(parts) < 2 or request.join_unet is False:
        return False
    total = _joined_bytes(request, parts)
    fits = total <= request.max_part_bytes
    if request.join_unet and not fits:
        raise UsageError(f"--join-unet: the {request.quant} UNet would be ~{total / 2**20:,.0f} MiB in one file, "
                         f"over --max-part-bytes ({request.max_part_bytes / 2**20:,.0f} MiB): leave --join-unet out")
    return fits and (request.join_unet or request.unet_parts is None)


def _joined_bytes(request: ConvertRequest, parts: list[PlannedArtifact]) -> int:
    """One file's estimate (one file's overhead, not one per part)."""
    return estimate_file_bytes(sum(p.params for p in parts), RECIPES[request.quant].bytes_per_weight)


def joined_unet(request: ConvertRequest, parts: list[PlannedArtifact]) -> PlannedArtifact:
    """The one-file UNet joined from `parts`: the signature of an unsplit conversion, and a build
    key made of its parts' keys (the same parts join into the same file)."""
    spec = COMPONENTS["diffusion"]
    inputs = tuple(spec.input_specs(request.dims))
    key = _digest({"join_revision": JOIN_REVISION, "parts": [p.build_key for p in parts]})
    return PlannedArtifact(
        "diffusion", 0, 1, file_name("diffusion", 0, 1), inputs=inputs,
        outputs=(spec.output_spec(request.dims),), wiring={s.name: None for s in inputs},
        params=sum(p.params for p in parts), estimated_bytes=_joined_bytes(request, parts),
        build_key=key, export_key="", calibration=calibration_identity(request),
    )


@dataclass(frozen=True)
class ConversionPlan:
    """What one conversion writes, decided before any weight is loaded: plain, picklable data."""

    quant: str
    memory_budget: int | None  # the RAM bound the split was made for (None: no bound)
    artifacts: tuple[PlannedArtifact, ...]  # every file to convert, in manifest order (UNet parts included)
    split: SplitPlan | None = None  # the UNet's cut; None when the UNet is not converted
    joined: PlannedArtifact | None = None  # the UNet's parts delivered as this one file; None keeps them

    def of(self, component: str) -> tuple[PlannedArtifact, ...]:
        return tuple(a for a in self.artifacts if a.component == component)

    @property
    def unet_parts(self) -> tuple[PlannedArtifact, ...]:
        return self.of("diffusion")

    def split_record(self) -> dict:
        """The UNet plan as the manifest records it, with the budget it was made for: a measured
        peak (manifest artifacts, benchmarks/convert.py) can be held against both. The join's own
        record (file, figures) is added by the run that joins."""
        if self.split is None:
            return {}
        return {
            "max_part_bytes": self.split.max_part_bytes,
            "memory_budget": self.memory_budget,
            "total_params": self.split.total_params,
            "parts": [
                {"part": p.index, "nodes": [p.start, p.stop], "params": p.params,
                 "estimated_bytes": p.estimated_bytes,
                 "estimated_converter_rss": estimate_converter_rss(p.params, self.quant),
                 "inputs": list(p.inputs), "outputs": list(p.outputs)}
                for p in self.split.parts
            ],
        }


def plan_conversion(request: ConvertRequest) -> ConversionPlan:
    """The plan of a conversion: builds each component's Keras graph (no weights), cuts the UNet,
    decides the join. A --join-unet that cannot fit one file is refused here, before any work."""
    from .weights import build_for_plan

    planned, split = [], None
    for component in request.components:
        model = build_for_plan(request.family, component, request.dims, request.weights[component])
        artifacts, component_split = plan_component(request, component, model)
        planned.extend(artifacts)
        split = split or component_split
        del model
        gc.collect()
    unet_parts = [a for a in planned if a.component == "diffusion"]
    joined = joined_unet(request, unet_parts) if joins_unet(request, unet_parts) else None
    return ConversionPlan(request.quant, request.memory_budget, tuple(planned), split, joined)


def describe_plan(plan: ConversionPlan) -> str:
    """The plan as --dry-run prints it: every file, the UNet's cap and budget, the join decision."""
    lines = []
    for a in plan.artifacts:
        lines.append(
            f"{a.file_name:28s} {a.params:>13,} params  ~{a.estimated_bytes / 2**20:9,.1f} MiB  "
            f"~{estimate_converter_rss(a.params, plan.quant) / 1e9:5.1f} GB RAM to convert"
        )
        if a.num_parts > 1:
            lines.append(f"    in:  {', '.join(f'{s.name}{list(s.shape)}' for s in a.inputs)}")
            lines.append(f"    out: {', '.join(f'{s.name}{list(s.shape)}' for s in a.outputs)}")
    if plan.split is not None:
        budget = plan.memory_budget
        lines.append(f"UNet cap per part: {plan.split.max_part_bytes:,} bytes"
                     + (f"; memory budget {budget / 1e9:.1f} GB" if budget else ""))
        if plan.joined is not None:
            lines.append(f"The UNet parts are then joined into one file, {plan.joined.file_name} "
                         "(--no-join-unet keeps the parts)")
        elif len(plan.unet_parts) > 1:
            lines.append(f"The UNet stays in {len(plan.unet_parts)} part files (--join-unet joins them when one "
                         "file fits --max-part-bytes)")
    lines.append("(RAM: estimated peak of the conversion's processes; --memory-budget splits the UNet further)")
    return "\n".join(lines)
