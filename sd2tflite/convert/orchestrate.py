"""Executes a conversion: plan, export, convert, write atomically, record in the manifest.

Two stages keep memory down:
  export  (export.py) builds each Keras component, loads its weights, plans the UNet split and
          writes one SavedModel per part (plus int8 calibration samples) into a work folder;
  convert (tflite.py) turns one SavedModel into one .tflite file.
UNet parts cut only for the converter's memory are then joined into one file (join.py; the parts
stay on disk, listed in the progress file, until the manifest lists the joined file).
With `isolate=True` (the default for full-size families) each stage runs in a fresh spawned
process, so no process ever holds the Keras UNet and a converter at the same time, and every
part's converter memory is returned to the OS when its process ends.
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

from ..core.errors import ConversionError, OutputError, SD2TFLiteError
from ..core.fsutil import sha256_file, write_json_atomic
from ..core.manifest import VERIFY_REPORT_NAME, Artifact, Manifest, load_manifest, save_manifest
from ..core.precisions import RECIPES
from ..core.progress import NO_PROGRESS, Progress
from ..core.versions import CONVERTER_LIBRARIES, library_versions
from .export import export_stage
from .outdir import PROGRESS_NAME, WORK_PREFIX, check_output_dir, clean_leftovers, output_lock, previous_artifacts
from .join import join_stage
from .plan import SIGNATURE_KEY, PlannedArtifact, joined_unet, joins_unet
from .quiet import quiet_worker
from .request import ConvertRequest
from .tflite import convert_stage


@dataclass
class ConvertResult:
    manifest: Manifest
    manifest_path: Path
    reused: list[str] = field(default_factory=list)
    built: list[str] = field(default_factory=list)


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


def _earlier_join_record(out_dir: Path, file_name: str) -> dict:
    """The join figures an earlier run recorded for a joined file this run reuses whole."""
    try:
        record = load_manifest(out_dir).split.get("joined") or {}
    except SD2TFLiteError:
        record = {}
    return record if record.get("file") == file_name else {"file": file_name}


def convert(request: ConvertRequest, progress: Progress | None = None) -> ConvertResult:
    """Runs the whole conversion, holding the output folder; the manifest is written last.
    progress: the export stage (one unit), then one stage counting the files (and the join)."""
    out_dir = Path(request.out_dir)
    check_output_dir(out_dir, request.force)
    created_out_dir = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out_dir} ({exc.strerror}): choose another --output") from exc
    try:
        with output_lock(out_dir):
            check_output_dir(out_dir, request.force)  # again: another run may have written meanwhile
            return _convert_locked(request, out_dir, progress or NO_PROGRESS)
    finally:
        with contextlib.suppress(OSError):  # another run may have just created its lock file
            if created_out_dir and not any(out_dir.iterdir()):
                out_dir.rmdir()  # a run that wrote nothing leaves nothing behind


def _convert_locked(request: ConvertRequest, out_dir: Path, progress: Progress) -> ConvertResult:
    clean_leftovers(out_dir)

    earlier = previous_artifacts(out_dir)
    previous = {} if request.force else {a.build_key: a for a in earlier}
    reusable = {
        key: a for key, a in previous.items()
        if (out_dir / a.path).is_file() and sha256_file(out_dir / a.path) == a.sha256
    }
    # A reusable joined UNet stands for its parts: they need no conversion (unless parts are asked for).
    joined_parts = {} if request.join_unet is False else {
        key: a for a in reusable.values() for key in (a.joined_from or [])}
    old_files = {a.path: a.component for a in earlier}
    work_dir = out_dir / f"{WORK_PREFIX}{os.getpid()}"
    work_dir.mkdir()
    result_artifacts: list[Artifact] = []
    reused, built = [], []
    try:
        progress.stage("building Keras models and exporting SavedModels", 1, unit="file")
        planned, split = _run(request.isolate, export_stage, request, frozenset(reusable) | frozenset(joined_parts),
                              str(work_dir))
        unet_parts = [a for a in planned if a.component == "diffusion"]
        joined = joined_unet(request, unet_parts) if joins_unet(request, unet_parts) else None
        if any(a.saved_model_dir is None and a.build_key not in reusable for a in unet_parts) and (
                joined is None or joined.build_key not in reusable):
            # The parts were skipped for an earlier run's joined file, but this run delivers them
            # otherwise (as parts, e.g. --unet-parts): export them after all.
            exported = frozenset(a.build_key for a in planned if a.saved_model_dir is not None)
            again, split = _run(request.isolate, export_stage, request, frozenset(reusable) | exported, str(work_dir))
            first = {a.build_key: a for a in planned}
            planned = [first[a.build_key] if a.build_key in exported else a for a in again]
            unet_parts = [a for a in planned if a.component == "diffusion"]
        progress.advance()
        progress.stage("converting", len(planned) + (joined is not None), unit="file")
        for artifact in planned:
            if artifact.saved_model_dir is None:
                # (else a part of the earlier run's joined file, which this run delivers again)
                earlier = reusable.get(artifact.build_key) or joined_parts[artifact.build_key]
                if earlier not in result_artifacts:
                    result_artifacts.append(earlier)
                    reused.append(earlier.path)
                progress.status(f"{artifact.file_name} (unchanged, reused)")
                progress.advance()
                continue
            progress.status(f"converting {artifact.file_name} ({request.quant})")
            stats = _run(request.isolate, convert_stage, artifact, request.quant, str(out_dir), request.keep_float)
            if Path(artifact.saved_model_dir).parent == work_dir:  # not one in the export cache
                shutil.rmtree(artifact.saved_model_dir, ignore_errors=True)
            result_artifacts.append(built_artifact(artifact, stats))
            built.append(artifact.file_name)
            # Lets an interrupted run resume: these files are complete and hashed.
            write_json_atomic(out_dir / PROGRESS_NAME, [a.to_json() for a in result_artifacts])  # type: ignore[arg-type]
            progress.advance()
        joined_leftovers: list[str] = []
        if joined is not None:
            split["joined"] = _earlier_join_record(out_dir, joined.file_name)
            parts = [a for a in result_artifacts if a.component == "diffusion" and a.build_key != joined.build_key]
            if parts:  # (else the joined file of an earlier run was reused whole)
                at = result_artifacts.index(parts[0])
                if joined.build_key in reusable:  # an interrupted run had joined them already
                    joined_artifact = reusable[joined.build_key]
                    reused.append(joined_artifact.path)
                else:
                    progress.status(f"joining {len(parts)} UNet parts into {joined.file_name}")
                    stats = _run(request.isolate, join_stage, joined, unet_parts, request.dims, str(out_dir))
                    split["joined"] = {
                        "file": joined.file_name, "seconds": stats["seconds"],
                        "max_abs_diff_vs_parts": stats["max_abs_diff_vs_parts"],
                        "peak_rss_bytes": stats["peak_rss_bytes"],  # the join's own worker
                        "parts_conversion_seconds": round(sum(a.conversion_seconds for a in parts), 2)}
                    stats["peak_rss_bytes"] = max([stats["peak_rss_bytes"]] + [a.peak_rss_bytes for a in parts])
                    stats["seconds"] = round(stats["seconds"] + split["joined"]["parts_conversion_seconds"], 2)
                    kept = [a.op_stats["kept_float"] for a in parts if a.op_stats and "kept_float" in a.op_stats]
                    if kept:  # int8: what each part kept in float
                        stats["op_stats"]["kept_float_per_part"] = kept
                    joined_artifact = replace(built_artifact(joined, stats), joined_from=[p.build_key for p in unet_parts])
                    built.append(joined.file_name)
                result_artifacts = [a for a in result_artifacts if a.component != "diffusion"]
                result_artifacts.insert(at, joined_artifact)
                joined_leftovers = [a.path for a in parts]
                # The parts stay listed (and on disk) until the manifest is written: a resumed run reuses them.
                write_json_atomic(out_dir / PROGRESS_NAME, [a.to_json() for a in result_artifacts + parts])  # type: ignore[arg-type]
            progress.advance()
        # Components this run did not touch stay in the set if it is the same model and precision.
        kept: list[Artifact] = []
        prediction_type = request.weights[request.components[0]].identity.get("prediction_type", "epsilon")
        try:
            before = load_manifest(out_dir)
            if (before.family, before.quant, before.model_dims) == (request.family, request.quant, request.dims):
                kept = [a for a in before.artifacts if a.component not in request.components
                        and (out_dir / a.path).is_file()]
                if "diffusion" not in request.components and any(a.component == "diffusion" for a in kept):
                    prediction_type = before.prediction_type  # the kept UNet's, not this run's weights'
        except SD2TFLiteError:
            pass
        weights = {c: before.weights.get(c, {}) for c in {a.component for a in kept}} if kept else {}
        weights.update({c: request.weights[c].identity for c in request.components})
        result_artifacts = kept + result_artifacts
        manifest = Manifest(
            family=request.family,
            quant=request.quant,
            dims=request.dims.to_json(),
            weights=weights,
            artifacts=tuple(result_artifacts),
            versions=library_versions(CONVERTER_LIBRARIES),
            command=request.command,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            split=split,
            converter=RECIPES[request.quant].converter_settings(),
            prediction_type=prediction_type,
        )
        manifest_path = save_manifest(manifest, out_dir)
        # Files of an earlier plan (e.g. more UNet parts), or of components not kept, that this
        # manifest no longer lists: ours (an earlier manifest listed them), and stale.
        current = {a.path for a in result_artifacts}
        for stale in old_files:
            if stale not in current and stale.endswith(".tflite"):
                (out_dir / stale).unlink(missing_ok=True)
        for leftover in joined_leftovers:  # the parts now inside the joined UNet
            (out_dir / leftover).unlink(missing_ok=True)
        (out_dir / PROGRESS_NAME).unlink(missing_ok=True)
        if built:  # a verify report of the earlier files would describe files that are gone
            (out_dir / VERIFY_REPORT_NAME).unlink(missing_ok=True)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        clean_leftovers(out_dir)
    return ConvertResult(manifest, manifest_path, reused=reused, built=built)
