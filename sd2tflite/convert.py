"""Executes a conversion: plan, export, convert, write atomically, record in the manifest.

Two stages keep memory down:
  export  builds each Keras component, loads its weights, plans the UNet split and writes one
          SavedModel per part (plus int8 calibration samples) into a work folder;
  convert turns one SavedModel into one .tflite file.
With `isolate=True` (the default for full-size families) each stage runs in a fresh spawned
process, so no process ever holds the Keras UNet and a converter at the same time, and every
part's converter memory is returned to the OS when its process ends.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import hashlib
import json
import multiprocessing
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from .calibration import synthetic_samples
from .recording import PIPELINE_COMPONENTS, RecordingSettings
from .selective import KeepFloat
from .components import COMPONENTS, ModelDims, TensorSpec
from .errors import ConversionError, OutputDirError, SD2TFLiteError
from .manifest import (
    MANIFEST_NAME,
    VERIFY_REPORT_NAME,
    Artifact,
    Manifest,
    load_manifest,
    safe_relative_path,
    save_manifest,
    write_json_atomic,
)
from .quant import RECIPES
from .quiet import native_stderr_muted, quiet_worker
from .split import SplitPlan, estimate_file_bytes
from .weights import ResolvedWeights, sha256_file

SIGNATURE_KEY = "serving_default"
PROGRESS_NAME = ".sd2tflite-progress.json"
WORK_PREFIX = ".sd2tflite-work-"
TMP_MARK = ".tmp-"
GIB = 1 << 30
# The flatbuffer limit is 2 GiB; above ~1.5 GiB the converter silently switches to the
# buffer-offset format (needs TFLite >= 2.14, breaks plain flatbuffer tools). Stay below that.
DEFAULT_MAX_PART_BYTES = 1400 * (1 << 20)
HARD_FLATBUFFER_LIMIT = 2 * GIB
# Converter peak RSS ~ base + factor x float32 weight bytes of the part, whatever the precision
# (the converter holds the float graph). Fitted to v1 at 512x512 (scripts/results/): fp32 parts
# of 1.13-1.25 GB peaked at 6.5-7.1 GB, the 3.44 GB single-part dynamic UNet at 17.1 GB.
CONVERTER_RSS_BASE = 600 * 10**6
CONVERTER_RSS_PER_FLOAT_BYTE = 5.3


# Calibrating holds the float part plus an instrumented copy (~8 bytes per parameter); past ~1.5 GiB
# the converter writes it in the buffer-offset format. Measured: a 282.8M-parameter int8 part of the
# v1 UNet came out in that format. Keep calibrated parts under ~1.5 GiB / 8 bytes.
CALIBRATED_MAX_PART_PARAMS = 190_000_000


def _max_part_params(request: "ConvertRequest") -> int | None:
    limits = []
    if request.memory_budget:
        limits.append(params_within_memory(request.memory_budget))
    if RECIPES[request.quant].needs_calibration:
        limits.append(CALIBRATED_MAX_PART_PARAMS)
    return min(limits) if limits else None


def estimate_converter_rss(params: int) -> int:
    return int(CONVERTER_RSS_BASE + CONVERTER_RSS_PER_FLOAT_BYTE * 4 * params)


def default_memory_budget() -> int | None:
    """80 % of this machine's physical RAM: a default plan never needs more than the machine has."""
    try:
        return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def params_within_memory(budget: int) -> int:
    """The most parameters one part may have for its conversion to fit `budget` bytes of RAM."""
    return int((budget - CONVERTER_RSS_BASE) / (CONVERTER_RSS_PER_FLOAT_BYTE * 4))


@dataclass(frozen=True)
class ConvertRequest:
    family: str
    quant: str
    components: tuple[str, ...]
    dims: ModelDims
    weights: dict[str, ResolvedWeights]
    out_dir: Path
    max_part_bytes: int = DEFAULT_MAX_PART_BYTES
    unet_parts: int | None = None
    memory_budget: int | None = None  # bytes of RAM one conversion may use; None: no bound
    force: bool = False
    isolate: bool = False
    calibration_samples: int = 8
    calibration_seed: int = 0
    # int8: None calibrates on synthetic samples; settings record them from Keras pipeline runs.
    recording: RecordingSettings | None = None
    keep_float: KeepFloat | None = None  # int8 modes: operators kept in float (selective.py)
    command: str = ""


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
    saved_model_dir: str | None = None  # set by the export stage; None when reused
    calibration_file: str | None = None
    calibration: dict | None = None  # provenance of the calibration data (int8)


@dataclass
class ConvertResult:
    manifest: Manifest
    manifest_path: Path
    reused: list[str] = field(default_factory=list)
    built: list[str] = field(default_factory=list)


class NullProgress:
    """What the library reports to; the CLI passes a tqdm-backed implementation."""

    def begin(self, total: int) -> None: ...
    def step(self, description: str) -> None: ...
    def advance(self) -> None: ...
    def end(self) -> None: ...


# ----------------------------------------------------------------------------- planning


def file_name(component: str, part: int, num_parts: int) -> str:
    return f"{component}.tflite" if num_parts == 1 else f"{component}_part{part}.tflite"


def _build_key(request: ConvertRequest, component: str, part_fields: dict) -> str:
    identity = {
        # Another TensorFlow / Keras / keras-cv can convert differently: rebuild, don't reuse.
        "versions": {k: v for k, v in tool_versions().items() if k != "python"},
        "family": request.family,
        "quant": request.quant,
        "dims": request.dims.to_json(),
        "component": component,
        "weights": request.weights[component].identity,
        "calibration": calibration_identity(request),
        "keep_float": request.keep_float.to_json() if request.keep_float else None,
        **part_fields,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def calibration_identity(request: ConvertRequest) -> dict | None:
    """What the int8 calibration data of a request is, for build keys and the manifest."""
    if not RECIPES[request.quant].needs_calibration:
        return None
    if request.recording is None:
        return {"source": "synthetic", "samples": request.calibration_samples, "seed": request.calibration_seed}
    from .recording import cache_key, pipeline_weights

    key = cache_key(request.family, request.dims, pipeline_weights(request.weights), request.recording)
    return {"source": "recorded", "key": key,
            **request.recording.describe()}


def _plan_component(request: ConvertRequest, component: str, model):
    """(planned artifacts, the Keras model of each, split plan or None) for one component."""
    from .split import KerasGraph, plan_split

    spec = COMPONENTS[component]
    recipe = RECIPES[request.quant]
    dims = request.dims
    pipeline_inputs = {s.name: s for s in spec.input_specs(dims)}
    output_spec = spec.output_spec(dims)

    if not spec.splittable:
        params = int(model.count_params())
        key = _build_key(request, component, {"part": 0, "num_parts": 1})
        artifact = PlannedArtifact(
            component, 0, 1, file_name(component, 0, 1),
            inputs=tuple(pipeline_inputs.values()), outputs=(output_spec,),
            wiring={name: None for name in pipeline_inputs}, params=params,
            estimated_bytes=estimate_file_bytes(params, recipe.bytes_per_weight), build_key=key,
        )
        return [artifact], [model], None

    graph = KerasGraph(model)
    output_names = {graph.summary.model_outputs[0]: spec.output_name}
    plan: SplitPlan = plan_split(
        graph.summary,
        bytes_per_weight=recipe.bytes_per_weight,
        max_part_bytes=request.max_part_bytes,
        min_parts=request.unet_parts or 1,
        max_part_params=_max_part_params(request),
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

    artifacts, part_models = [], []
    n = len(plan.parts)
    for part in plan.parts:
        key = _build_key(request, component, {
            "part": part.index, "num_parts": n, "nodes": [part.start, part.stop],
            "inputs": list(part.inputs), "outputs": list(part.outputs),
        })
        artifacts.append(PlannedArtifact(
            component, part.index, n, file_name(component, part.index, n),
            inputs=tuple(tensor_spec(t) for t in part.inputs),
            outputs=tuple(tensor_spec(t) for t in part.outputs),
            wiring={t: plan.producer_of(t) for t in part.inputs},
            params=part.params, estimated_bytes=part.estimated_bytes, build_key=key,
        ))
        part_models.append(graph.build_part(part, output_names))
    return artifacts, part_models, plan


def _split_summary(plan: SplitPlan | None) -> dict:
    if plan is None:
        return {}
    return {
        "max_part_bytes": plan.max_part_bytes,
        "total_params": plan.total_params,
        "parts": [
            {"part": p.index, "nodes": [p.start, p.stop], "params": p.params,
             "estimated_bytes": p.estimated_bytes, "inputs": list(p.inputs),
             "outputs": list(p.outputs)}
            for p in plan.parts
        ],
    }


def plan_conversion(request: ConvertRequest) -> tuple[list[PlannedArtifact], dict]:
    """The files a conversion would write, without converting (builds models, loads no weights)."""
    from .models import build_component

    planned, split = [], {}
    for component in request.components:
        model = build_component(request.family, component, request.dims)
        artifacts, _, plan = _plan_component(request, component, model)
        planned.extend(artifacts)
        split = split or _split_summary(plan)
        del model
        gc.collect()
    return planned, split


def describe_plan(planned: list[PlannedArtifact], split: dict) -> str:
    lines = []
    for a in planned:
        lines.append(
            f"{a.file_name:28s} {a.params:>13,} params  ~{a.estimated_bytes / 2**20:9,.1f} MiB  "
            f"~{estimate_converter_rss(a.params) / 1e9:5.1f} GB RAM to convert"
        )
        if a.num_parts > 1:
            lines.append(f"    in:  {', '.join(f'{s.name}{list(s.shape)}' for s in a.inputs)}")
            lines.append(f"    out: {', '.join(f'{s.name}{list(s.shape)}' for s in a.outputs)}")
    if split:
        lines.append(f"UNet cap per part: {split['max_part_bytes']:,} bytes")
    lines.append("(RAM: estimate for one conversion worker; --memory-budget splits the UNet further)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- export stage


def export_stage(request: ConvertRequest, reuse_keys: frozenset[str], work_dir: str):
    """Builds, plans and exports every component; returns (planned artifacts, split summary)."""
    from .weights import build_with_weights

    planned_all, split = [], {}
    recorded = None
    if RECIPES[request.quant].needs_calibration and request.recording is not None:
        recorded = _recorded_samples(request)
    for component in request.components:
        model = build_with_weights(request.family, component, request.dims, request.weights[component])
        artifacts, models, plan = _plan_component(request, component, model)
        split = split or _split_summary(plan)
        todo = [i for i, a in enumerate(artifacts) if a.build_key not in reuse_keys]
        calibration = None
        if todo and RECIPES[request.quant].needs_calibration:
            samples = recorded[component] if recorded is not None else synthetic_samples(
                component, request.dims, request.calibration_samples, request.calibration_seed)
            calibration = _calibration_per_part(artifacts, models, samples)
        for i, artifact in enumerate(artifacts):
            if i not in todo:
                planned_all.append(artifact)
                continue
            saved_model = os.path.join(work_dir, artifact.file_name.replace(".tflite", ".savedmodel"))
            export_saved_model(models[i], artifact, saved_model)
            calib_file = None
            if calibration is not None:
                calib_file = os.path.join(work_dir, artifact.file_name.replace(".tflite", ".calib.npz"))
                np.savez(calib_file, **calibration[i])
            planned_all.append(replace(artifact, saved_model_dir=saved_model, calibration_file=calib_file,
                                       calibration=calibration_identity(request) if calib_file else None))
        del model, models
        gc.collect()
    return planned_all, split


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
    tf.saved_model.save(
        module, directory, signatures={SIGNATURE_KEY: serve.get_concrete_function()}
    )


def _calibration_per_part(artifacts, models, samples: list[dict[str, np.ndarray]]):
    """Samples for every part: part k sees what the float parts before it compute."""
    per_part: list[dict[str, np.ndarray]] = []
    values = [dict(s) for s in samples]
    for artifact, model in zip(artifacts, models):
        names = [s.name for s in artifact.inputs]
        per_part.append({n: np.stack([v[n] for v in values]) for n in names})
        if artifact is artifacts[-1]:
            break
        for v in values:
            outs = model([v[n] for n in names] if len(names) > 1 else v[names[0]])
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            v.update({s.name: np.asarray(o) for s, o in zip(artifact.outputs, outs)})
    return per_part


def _recorded_samples(request: ConvertRequest) -> dict[str, list[dict[str, np.ndarray]]]:
    """Calibration inputs recorded from Keras pipeline runs: from the cache, or recorded now."""
    from .recording import load_or_record

    return load_or_record(request.family, request.dims, request.weights, request.recording)


# ----------------------------------------------------------------------------- convert stage


def convert_stage(artifact: PlannedArtifact, quant: str, out_dir: str, keep_float=None) -> dict:
    """SavedModel -> .tflite (atomic write). Returns sha256, bytes, seconds, peak RSS, op stats."""
    import tensorflow as tf

    start = time.monotonic()
    converter = tf.lite.TFLiteConverter.from_saved_model(
        artifact.saved_model_dir, signature_keys=[SIGNATURE_KEY]
    )
    # Conversion metadata costs a full in-memory copy of the model; it records nothing we need.
    converter.exclude_conversion_metadata = True
    samples = _load_samples(artifact.calibration_file, artifact.inputs) if artifact.calibration_file else None
    selective = None
    try:
        with _without_buffer_deduplication(), native_stderr_muted():
            if keep_float is None:
                RECIPES[quant].configure(converter, (lambda: iter(samples)) if samples else None)
                data = converter.convert()
            else:
                from .selective import quantize_keeping_float

                result = quantize_keeping_float(converter, keep_float, samples, RECIPES[quant].configure)
                data, selective = result.model, result.summary()
    except SD2TFLiteError:
        raise
    except Exception as exc:
        raise ConversionError(f"converting {artifact.file_name} failed: {_conversion_hint(exc, quant)}") from exc
    if len(data) >= HARD_FLATBUFFER_LIMIT or b"buffer_location" in data:
        raise ConversionError(
            f"{artifact.file_name} came out at {len(data):,} bytes, too large for a plain "
            "flatbuffer: lower --max-part-bytes or raise --unet-parts"
        )
    op_stats = quantized_op_stats(data)
    if quant == "int8-strict" and op_stats["float_ops"]:
        # The converter lets some float kernels through even with only the int8 op set.
        named = ", ".join(f"{op} ×{n}" for op, n in op_stats["float_ops"].items())
        raise ConversionError(
            f"{artifact.file_name}: no integer-only kernel for {named}: use --quant int8 (float fallback)")
    target = Path(out_dir) / artifact.file_name
    write_bytes_atomic(target, data)
    digest = hashlib.sha256(data).hexdigest()
    size = len(data)
    if selective is not None:
        op_stats["kept_float"] = selective
    del data, converter
    return {
        "sha256": digest,
        "bytes": size,
        "op_stats": op_stats,
        "seconds": round(time.monotonic() - start, 2),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


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

    from .selective import operator_names

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


def write_bytes_atomic(target: Path, data: bytes) -> None:
    """Temp file beside the target, fsync, rename: a reader never sees a partial file."""
    tmp = target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- orchestration


def built_artifact(artifact: PlannedArtifact, stats: dict) -> Artifact:
    """The manifest entry for a file convert_stage wrote."""
    return Artifact(
        component=artifact.component, part=artifact.part, num_parts=artifact.num_parts,
        path=artifact.file_name, sha256=stats["sha256"], bytes=stats["bytes"],
        params=artifact.params, signature_key=SIGNATURE_KEY, inputs=artifact.inputs,
        outputs=artifact.outputs, wiring=artifact.wiring,
        conversion_seconds=stats["seconds"], peak_rss_bytes=stats["peak_rss_bytes"],
        build_key=artifact.build_key, calibration=artifact.calibration,
        op_stats=stats.get("op_stats"),
    )


def _run(isolate: bool, fn, *args):
    """Runs fn in a fresh spawned process (memory goes back to the OS after) or inline."""
    if not isolate:
        return fn(*args)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context,
                                                initializer=quiet_worker) as pool:
        try:
            return pool.submit(fn, *args).result()
        except concurrent.futures.process.BrokenProcessPool as exc:
            raise ConversionError(
                f"the worker process running {fn.__name__} died (out of memory?): "
                "pass a lower --memory-budget (e.g. 8GB) to split the UNet further, or free memory"
            ) from exc


def _previous_artifacts(out_dir: Path) -> list[Artifact]:
    """Artifacts recorded by an earlier run (finished manifest or an interrupted run's progress)."""
    found: list[Artifact] = []
    try:
        found.extend(load_manifest(out_dir).artifacts)
    except SD2TFLiteError:
        pass
    progress = out_dir / PROGRESS_NAME
    if progress.is_file():
        try:
            for item in json.loads(progress.read_text()):
                safe_relative_path(item["path"])
                found.append(Artifact.from_json(item))
        except (ValueError, KeyError, TypeError, SD2TFLiteError):
            pass
    return found


def check_output_dir(out_dir: Path, force: bool) -> None:
    """Refuse a directory that holds anything but an earlier sd2tflite conversion."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"{out_dir} is a file, not a directory: choose another --output")
    if not out_dir.exists() or force:
        return
    ours = {MANIFEST_NAME, PROGRESS_NAME, VERIFY_REPORT_NAME} | {a.path for a in _previous_artifacts(out_dir)}
    foreign = sorted(
        name for name in os.listdir(out_dir)
        if name not in ours and not name.startswith(WORK_PREFIX) and not _is_our_temp_file(name)
    )
    if foreign:
        raise OutputDirError(
            f"{out_dir} holds files sd2tflite did not write ({', '.join(foreign[:3])}): "
            "choose an empty directory, or pass --force to write into it anyway"
        )


def _is_our_temp_file(name: str) -> bool:
    # write_bytes_atomic / write_json_atomic name temp files ".<target>.tmp-<pid>".
    return name.startswith(".") and TMP_MARK in name


def _clean_leftovers(out_dir: Path) -> None:
    """Removes work folders and temp files of earlier (interrupted) runs; nothing else."""
    for entry in out_dir.iterdir():
        if entry.name.startswith(WORK_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif _is_our_temp_file(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)


def tool_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"sd2tflite": __version__, "python": sys.version.split()[0]}
    for dist, key in (("tensorflow-cpu", "tensorflow"), ("tensorflow", "tensorflow"),
                      ("keras", "keras"), ("keras-cv", "keras_cv"),
                      ("ai-edge-litert", "ai_edge_litert")):
        try:
            versions.setdefault(key, metadata.version(dist))
        except metadata.PackageNotFoundError:
            pass
    return versions


def convert(request: ConvertRequest, progress=None) -> ConvertResult:
    """Runs the whole conversion; the manifest is written last."""
    progress = progress or NullProgress()
    out_dir = Path(request.out_dir)
    check_output_dir(out_dir, request.force)
    created_out_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out_dir)

    earlier = _previous_artifacts(out_dir)
    previous = {} if request.force else {a.build_key: a for a in earlier}
    reusable = {
        key: a for key, a in previous.items()
        if (out_dir / a.path).is_file() and sha256_file(out_dir / a.path) == a.sha256
    }
    old_files = {a.path: a.component for a in earlier}
    work_dir = out_dir / f"{WORK_PREFIX}{os.getpid()}"
    work_dir.mkdir()
    result_artifacts: list[Artifact] = []
    reused, built = [], []
    try:
        progress.begin(1)
        progress.step("building Keras models and exporting SavedModels")
        planned, split = _run(request.isolate, export_stage, request, frozenset(reusable), str(work_dir))
        progress.advance()
        progress.begin(len(planned))
        for artifact in planned:
            if artifact.saved_model_dir is None:
                result_artifacts.append(reusable[artifact.build_key])
                reused.append(artifact.file_name)
                progress.step(f"{artifact.file_name} (unchanged, reused)")
                progress.advance()
                continue
            progress.step(f"converting {artifact.file_name} ({request.quant})")
            stats = _run(request.isolate, convert_stage, artifact, request.quant, str(out_dir), request.keep_float)
            shutil.rmtree(artifact.saved_model_dir, ignore_errors=True)
            result_artifacts.append(built_artifact(artifact, stats))
            built.append(artifact.file_name)
            # Lets an interrupted run resume: these files are complete and hashed.
            write_json_atomic(out_dir / PROGRESS_NAME, [a.to_json() for a in result_artifacts])  # type: ignore[arg-type]
            progress.advance()
        # Components this run did not touch stay in the set if it is the same model and precision.
        kept: list[Artifact] = []
        try:
            before = load_manifest(out_dir)
            if (before.family, before.quant, before.dims) == (request.family, request.quant, request.dims.to_json()):
                kept = [a for a in before.artifacts if a.component not in request.components
                        and (out_dir / a.path).is_file()]
        except SD2TFLiteError:
            pass
        weights = {c: before.weights[c] for c in {a.component for a in kept}} if kept else {}
        weights.update({c: request.weights[c].identity for c in request.components})
        result_artifacts = kept + result_artifacts
        manifest = Manifest(
            family=request.family,
            quant=request.quant,
            dims=request.dims.to_json(),
            weights=weights,
            artifacts=tuple(result_artifacts),
            versions=tool_versions(),
            command=request.command,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            split=split,
        )
        manifest_path = save_manifest(manifest, out_dir)
        # Files of an earlier plan (e.g. more UNet parts) that this manifest no longer lists.
        current = {a.path for a in result_artifacts}
        for stale, component in old_files.items():
            if stale not in current and stale.endswith(".tflite") and component in request.components:
                (out_dir / stale).unlink(missing_ok=True)
        (out_dir / PROGRESS_NAME).unlink(missing_ok=True)
        if built:  # a verify report of the earlier files would describe files that are gone
            (out_dir / VERIFY_REPORT_NAME).unlink(missing_ok=True)
    finally:
        progress.end()
        shutil.rmtree(work_dir, ignore_errors=True)
        _clean_leftovers(out_dir)
        if created_out_dir and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a run that wrote nothing leaves nothing behind
    return ConvertResult(manifest, manifest_path, reused=reused, built=built)


def default_isolation(family: str) -> bool:
    """Full-size families convert in child processes; the tiny one inline (fast tests)."""
    return family != "tiny"


__all__ = [
    "DEFAULT_MAX_PART_BYTES",
    "ConvertRequest",
    "ConvertResult",
    "convert",
    "default_isolation",
    "describe_plan",
    "plan_conversion",
]


def make_request(
    *,
    family: str,
    quant: str,
    components: str | None,
    weights: str | None,
    img_height: int,
    img_width: int,
    batch_size: int,
    out_dir: str | None,
    max_part_bytes: int,
    unet_parts: int | None,
    force: bool,
    isolate: bool | None,
    memory_budget: int | None = None,
    calibration_samples: int,
    calibration_seed: int,
    calibration: str = "synthetic",
    calibration_prompts: str | None = None,
    calibration_prompt_count: int | None = None,
    calibration_steps: int = 10,
    calibration_images: str | None = None,
    keep_float: str | None = None,
    command: str = "",
    resolve_weights: bool = True,
) -> ConvertRequest:
    """Validates user-facing options and resolves weights (downloading if needed)."""
    from .components import FAMILIES, parse_components
    from .errors import UsageError
    from .quant import get_recipe
    from .weights import parse_weights, resolve

    if family not in FAMILIES:
        raise UsageError(f"unknown model {family!r}: choose from {', '.join(FAMILIES)}")
    get_recipe(quant)
    for name, value in (("--img-height", img_height), ("--img-width", img_width)):
        if value <= 0 or value % 128:
            raise UsageError(f"{name} {value} is not a positive multiple of 128: use e.g. 256 or 512")
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} must be at least 1")
    if not (1 << 20) <= max_part_bytes <= HARD_FLATBUFFER_LIMIT:
        raise UsageError(
            f"--max-part-bytes {max_part_bytes:,} is outside 1 MiB .. 2 GiB (the flatbuffer limit)"
        )
    if unet_parts is not None and unet_parts < 1:
        raise UsageError(f"--unet-parts {unet_parts} must be at least 1")
    if memory_budget is not None and memory_budget <= CONVERTER_RSS_BASE + (1 << 28):
        raise UsageError(
            f"--memory-budget {memory_budget:,} is too small: a conversion worker alone needs about "
            f"{CONVERTER_RSS_BASE / 1e9:.1f} GB; give at least 1GB"
        )
    if calibration_samples < 1:
        raise UsageError(f"--calibration-samples {calibration_samples} must be at least 1")
    recording = None
    if calibration not in ("recorded", "synthetic"):
        raise UsageError(f"--calibration {calibration!r}: choose recorded or synthetic")
    if calibration == "recorded" and get_recipe(quant).needs_calibration:
        from .recording import RecordingSettings, read_prompts

        if calibration_steps < 1:
            raise UsageError(f"--calibration-steps {calibration_steps} must be at least 1")
        recording = RecordingSettings(
            prompts=read_prompts(Path(calibration_prompts) if calibration_prompts else None,
                                 calibration_prompt_count),
            steps=calibration_steps, samples=calibration_samples, seed=calibration_seed,
            images_dir=str(Path(calibration_images).resolve()) if calibration_images else None)
    keep = KeepFloat.parse(keep_float)
    if keep is not None and quant != "int8":
        raise UsageError(f"--keep-float works with --quant int8 (float fallback), not {quant}")
    if keep is not None:
        keep.check()
    if recording is None and (calibration_prompts or calibration_images):
        raise UsageError("--calibration-prompts / --calibration-images need a calibrated precision (int8, "
                         "int8-strict, int16x8) with --calibration recorded")
    model_family = FAMILIES[family]
    names = parse_components(components)
    source = parse_weights(weights, model_family)
    target = Path(out_dir or f"models/sd-{family}-{quant}")
    if resolve_weights:
        check_output_dir(target, force)  # before any download
        # Recording runs the whole pipeline, so it needs the other components' weights too.
        needed = [c for c in COMPONENTS if c in names or (recording and c in PIPELINE_COMPONENTS)]
        resolved = resolve(source, model_family, needed)
    else:  # planning only: the weights' identity does not change the plan
        resolved = {c: ResolvedWeights(c, None, {"kind": "unresolved"}) for c in names}
    return ConvertRequest(
        family=family,
        quant=quant,
        components=tuple(names),
        dims=model_family.dims(img_height, img_width, batch_size),
        weights=resolved,
        out_dir=target,
        max_part_bytes=max_part_bytes,
        unet_parts=unet_parts,
        memory_budget=default_memory_budget() if memory_budget is None else memory_budget,
        force=force,
        isolate=default_isolation(family) if isolate is None else isolate,
        calibration_samples=calibration_samples,
        calibration_seed=calibration_seed,
        recording=recording,
        keep_float=keep,
        command=command,
    )
