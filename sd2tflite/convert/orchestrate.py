"""Executes a conversion: plan once, export, convert, join, write the manifest last.

  plan     (plan.py) the run's one ConversionPlan: every file, the UNet's cut and whether its parts
           are joined (Keras graphs without weights); made before the output folder is touched;
  state    (outdir.py) what earlier runs left in the folder, read once under its lock: the planned
           files already there, intact, are reused;
  export   (export.py) builds the components that still need files, with their weights, cuts the
           UNet where the plan says and writes one SavedModel per part (plus int8 calibration
           samples) into a work folder;
  convert  (tflite.py) turns one SavedModel into one .tflite file;
  join     (join.py) turns the UNet's part files into the one file the plan joins them into (the
           parts stay on disk, listed in the progress file, until the manifest lists the joined file);
  manifest the plan's split record, the files, and the components an earlier run converted.
With `isolate=True` (the default for full-size families) plan, export, each conversion and the join
run in fresh spawned processes, so no process ever holds the Keras UNet and a converter at the same
time, and every part's converter memory is returned to the OS when its process ends.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import shutil
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from ..core.errors import ConversionError
from ..core.fsutil import write_json_atomic
from ..core.manifest import VERIFY_REPORT_NAME, Artifact, Manifest, save_manifest
from ..core.precisions import RECIPES
from ..core.progress import NO_PROGRESS, Progress
from ..core.versions import CONVERTER_LIBRARIES, library_versions
from .export import export_stage
from .join import join_stage
from .outdir import (PROGRESS_NAME, WORK_PREFIX, OutputState, check_output_dir, clean_leftovers, compiled_carry,
                     make_output_dir, output_lock, read_output_state, remove_compiled)
from .plan import SIGNATURE_KEY, ConversionPlan, PlannedArtifact, plan_conversion
from .quiet import quiet_worker
from .request import ConvertRequest
from .tflite import convert_stage


@dataclass
class ConvertResult:
    manifest: Manifest
    manifest_path: Path
    reused: list[str] = field(default_factory=list)
    built: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one line each, for the user (e.g. compiled files removed)


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


def convert(request: ConvertRequest, progress: Progress | None = None,
            plan: ConversionPlan | None = None) -> ConvertResult:
    """Runs the whole conversion, holding the output folder; the manifest is written last.
    plan: the request's plan (plan_conversion) when the caller has made it already; else it is
    made here, once. progress: the export stage (one unit; planning included), then one stage
    counting the files (and the join)."""
    progress = progress or NO_PROGRESS
    progress.stage("building Keras models and exporting SavedModels", 1, unit="file")
    if plan is None:
        progress.status("planning (Keras graphs, no weights)")
        # A --join-unet that cannot fit one file stops here, before anything is written.
        plan = _run(request.isolate, plan_conversion, request)
    out_dir = Path(request.out_dir)
    created_out_dir = make_output_dir(out_dir)
    try:
        with output_lock(out_dir):
            state = read_output_state(out_dir)  # the run's one read of the earlier manifest
            check_output_dir(out_dir, request.force, state)
            return _convert_locked(request, plan, state, progress)
    finally:
        with contextlib.suppress(OSError):  # another run may have just created its lock file
            if created_out_dir and not any(out_dir.iterdir()):
                out_dir.rmdir()  # a run that wrote nothing leaves nothing behind


def _convert_locked(request: ConvertRequest, plan: ConversionPlan, state: OutputState,
                    progress: Progress) -> ConvertResult:
    out_dir = state.directory
    clean_leftovers(out_dir)
    reusable = {} if request.force else state.intact()
    # A joined UNet already on disk stands for its parts: they need no export and no conversion.
    joined_reused = reusable.get(plan.joined.build_key) if plan.joined is not None else None

    def earlier_file(artifact: PlannedArtifact) -> Artifact | None:
        if joined_reused is not None and artifact.component == "diffusion":
            return joined_reused
        return reusable.get(artifact.build_key)

    todo = frozenset(a.build_key for a in plan.artifacts if earlier_file(a) is None)
    work_dir = out_dir / f"{WORK_PREFIX}{os.getpid()}"
    work_dir.mkdir()
    result_artifacts: list[Artifact] = []
    reused, built, notes = [], [], []
    try:
        progress.status("building Keras models and exporting SavedModels")
        exported = _run(request.isolate, export_stage, request, plan, todo, str(work_dir)) if todo else {}
        progress.advance()
        progress.stage("converting", len(plan.artifacts) + (plan.joined is not None), unit="file")
        for artifact in plan.artifacts:
            earlier = earlier_file(artifact)
            if earlier is not None:
                if earlier not in result_artifacts:  # (a joined UNet stands for every part once)
                    result_artifacts.append(earlier)
                    reused.append(earlier.path)
                progress.status(f"{artifact.file_name} (unchanged, reused)")
                progress.advance()
                continue
            ready = exported[artifact.build_key]
            progress.status(f"converting {artifact.file_name} ({request.quant})")
            # The file is written in the work folder, listed in the progress record, and only then
            # renamed into place: an interrupt at any moment leaves either no file or a listed one,
            # so the plain re-run resumes (a listed file that is missing or differs is rebuilt).
            stats = _run(request.isolate, convert_stage, ready, request.quant, str(work_dir), request.keep_float)
            if Path(ready.saved_model_dir).parent == work_dir:  # not one in the export cache
                shutil.rmtree(ready.saved_model_dir, ignore_errors=True)
            result_artifacts.append(built_artifact(ready, stats))
            built.append(artifact.file_name)
            write_json_atomic(out_dir / PROGRESS_NAME, [a.to_json() for a in result_artifacts])  # type: ignore[arg-type]
            os.replace(work_dir / artifact.file_name, out_dir / artifact.file_name)
            progress.advance()
        split = plan.split_record()
        joined_leftovers: list[str] = []
        if plan.joined is not None:
            joined = plan.joined
            split["joined"] = state.join_record(joined.file_name)
            if joined_reused is None:
                parts = [a for a in result_artifacts if a.component == "diffusion"]
                at = result_artifacts.index(parts[0])
                progress.status(f"joining {len(parts)} UNet parts into {joined.file_name}")
                stats = _run(request.isolate, join_stage, joined, plan.unet_parts, request.dims, str(out_dir))
                split["joined"] = {
                    "file": joined.file_name, "seconds": stats["seconds"],
                    "max_abs_diff_vs_parts": stats["max_abs_diff_vs_parts"],
                    "peak_rss_bytes": stats["peak_rss_bytes"],  # the join's own worker
                    "parts_conversion_seconds": round(sum(a.conversion_seconds for a in parts), 2)}
                stats["peak_rss_bytes"] = max([stats["peak_rss_bytes"]] + [a.peak_rss_bytes for a in parts])
                stats["seconds"] = round(stats["seconds"] + split["joined"]["parts_conversion_seconds"], 2)
                kept_float = [a.op_stats["kept_float"] for a in parts if a.op_stats and "kept_float" in a.op_stats]
                if kept_float:  # int8: what each part kept in float
                    stats["op_stats"]["kept_float_per_part"] = kept_float
                joined_artifact = replace(built_artifact(joined, stats),
                                          joined_from=[p.build_key for p in plan.unet_parts])
                built.append(joined.file_name)
                result_artifacts = [a for a in result_artifacts if a.component != "diffusion"]
                result_artifacts.insert(at, joined_artifact)
                joined_leftovers = [a.path for a in parts]
                # The parts stay listed (and on disk) until the manifest is written: a resumed run reuses them.
                write_json_atomic(out_dir / PROGRESS_NAME, [a.to_json() for a in result_artifacts + parts])  # type: ignore[arg-type]
            progress.advance()
        result_artifacts = _kept_from_earlier(request, state) + result_artifacts
        # `sd2tflite compile`'s records stay while their source file is byte for byte the one compiled.
        compiled, stale_compiled = compiled_carry(state, result_artifacts)
        manifest = Manifest(
            family=request.family,
            quant=request.quant,
            dims=request.dims.to_json(),
            weights=_weights_record(request, state, result_artifacts),
            artifacts=tuple(result_artifacts),
            versions=library_versions(CONVERTER_LIBRARIES),
            command=request.command,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            split=split,
            converter=RECIPES[request.quant].converter_settings(),
            prediction_type=_prediction_type(request, state, result_artifacts),
            compiled=compiled,
            **(request.conventions or {}),  # the model's scheduler, tokenizer padding and pixel rule
        )
        manifest_path = save_manifest(manifest, out_dir)
        # Files of an earlier plan (e.g. more UNet parts), or of components not kept, that this
        # manifest no longer lists: ours (an earlier manifest listed them), and stale.
        current = {a.path for a in result_artifacts}
        for stale in {a.path for a in state.artifacts}:
            if stale not in current and stale.endswith(".tflite"):
                (out_dir / stale).unlink(missing_ok=True)
        for leftover in joined_leftovers:  # the parts now inside the joined UNet
            (out_dir / leftover).unlink(missing_ok=True)
        if stale_compiled:
            remove_compiled(out_dir, stale_compiled)
            before = state.manifest.compiled if state.manifest else []
            targets = sorted({r["target"] for r in before if r["path"] in stale_compiled}) or ["VENDOR:SOC"]
            shown = ", ".join(stale_compiled[:2]) + (", ..." if len(stale_compiled) > 2 else "")
            notes.append(f"removed {len(stale_compiled)} stale compiled NPU file{'s' * (len(stale_compiled) > 1)} "
                         f"({shown}): run sd2tflite compile {out_dir} --target {','.join(targets)} to compile "
                         "the new files")
        (out_dir / PROGRESS_NAME).unlink(missing_ok=True)
        if built:  # a verify report of the earlier files would describe files that are gone
            (out_dir / VERIFY_REPORT_NAME).unlink(missing_ok=True)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        clean_leftovers(out_dir)
    return ConvertResult(manifest, manifest_path, reused=reused, built=built, notes=notes)


def _kept_from_earlier(request: ConvertRequest, state: OutputState) -> list[Artifact]:
    """The files of components this run does not convert, kept in the set when the earlier
    manifest is of the same model and precision."""
    before = state.manifest
    if before is None or (before.family, before.quant, before.model_dims) != (
            request.family, request.quant, request.dims):
        return []
    return [a for a in before.artifacts
            if a.component not in request.components and (state.directory / a.path).is_file()]


def _weights_record(request: ConvertRequest, state: OutputState, artifacts: list[Artifact]) -> dict:
    """The weights of every component in the set: kept ones as the earlier manifest says."""
    kept = {a.component for a in artifacts} - set(request.components)
    weights = {c: state.manifest.weights.get(c, {}) for c in kept} if kept else {}
    weights.update({c: request.weights[c].identity for c in request.components})
    return weights


def _prediction_type(request: ConvertRequest, state: OutputState, artifacts: list[Artifact]) -> str:
    """What the set's UNet predicts: a kept UNet's (the earlier manifest's), else this run's weights'."""
    if "diffusion" not in request.components and any(a.component == "diffusion" for a in artifacts):
        return state.manifest.prediction_type
    return request.weights[request.components[0]].identity.get("prediction_type", "epsilon")
