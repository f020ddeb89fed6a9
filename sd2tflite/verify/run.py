"""`sd2tflite verify`: proof that a converted set computes what the Keras model computes.

Three groups of checks, all run and all reported (failures are collected, not raised):
  integrity    files vs manifest (runtime/integrity.py; LiteRT only)
  parity       each component (split ones as their chained parts) vs the Keras component built
               from the same weights, on seeded inputs that look like the pipeline's
  end-to-end   the LiteRT pipeline vs keras-cv's own `StableDiffusion.generate_image` fed the same
               Keras components and the same starting noise
and, as information that never fails verify, what real accelerators take of each file: the NPU by the
AOT compiler's partitioning, the GPU by LiteRT.js's WebGPU accelerator (accelerators.py).

`verify(VerifyRequest, progress) -> VerifyReport`, the shape of every command's entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import NumericsError, UsageError
from ..core.fsutil import sha256_file, write_json_atomic
from ..core.manifest import MANIFEST_NAME
from ..core.outputs import NewFile, check_new_files, json_with_keys
from ..core.progress import NO_PROGRESS, Progress
from ..core.precisions import RECIPES
from ..core.registry import FAMILIES, PIPELINE_COMPONENTS
from ..runtime.hub import resolve_model_dir
from ..runtime.integrity import Check, check_integrity, description_holds
from ..runtime.litert import LiteRTComponents, invoke_failure
from ..runtime.pipeline import Pipeline
from ..runtime.tokenizer import load_tokenizer
from .checks import GUIDANCE, VERIFY_PROMPTS, VERIFY_TIMESTEPS, component_check, end_to_end_check, parity_inputs
from .accelerators import ACCELERATORS, DEFAULT_NPU_TARGET
from .accelerators import measure as measure_accelerators
from .reference import reference_models
from .report import VerifyReport


@dataclass(frozen=True)
class VerifyRequest:
    model_dir: Path | str  # a converted set's folder, or hf://OWNER/REPO[@REVISION] (downloaded, checked)
    weights: str | None = None  # the reference's weights (convert's forms); None: the manifest's
    vocab: Path | None = None
    steps: int | None = None  # end-to-end steps; None: the precision's own (RECIPES)
    end_to_end: bool = True
    threads: int | None = None
    accelerators: tuple[str, ...] = ACCELERATORS  # which accelerators' placement to measure ("npu", "gpu")
    npu_target: str = DEFAULT_NPU_TARGET  # the SoC the NPU placement is asked of (vendor:SOC)
    json_path: Path | None = None  # also write the report here (checked before any work)
    force: bool = False  # replace an existing json_path that is not a verify report


def verify(request: VerifyRequest, progress: Progress | None = None) -> VerifyReport:
    """Runs every check and returns the report (failures are in it, not raised); progress: one
    announced stage per group of checks."""
    check_new_files([NewFile("--json", request.json_path, json_with_keys("checks", "manifest_sha256"),
                             "a verify report")], request.force)
    if request.steps is not None and request.steps < 1:
        raise UsageError(f"--steps {request.steps} must be at least 1")
    unknown = [a for a in request.accelerators if a not in ACCELERATORS]
    if unknown:
        raise UsageError(f"unknown accelerator {unknown[0]!r}: use {', '.join(ACCELERATORS)} or none")
    if "npu" in request.accelerators:
        from ..device.targets import parse_targets

        if len(parse_targets(request.npu_target)) != 1:
            raise UsageError(f"--npu-target {request.npu_target!r} names several SoCs: give one, e.g. qualcomm:SM8650")
    directory = resolve_model_dir(str(request.model_dir))
    report = _verify(directory, request, progress or NO_PROGRESS)
    if request.json_path is not None:
        write_json_atomic(request.json_path, report.to_json())
    return report


IMPORTED_SCOPE = ("imported checkpoint: this proves the files compute what the Keras import of it computes, not "
                  "that the picture is diffusers'; that is held by the fidelity tests (docs/fidelity.md)")


def _scoped(check: Check, manifest) -> Check:
    """The end-to-end check says what it proves for a set imported from a PyTorch checkpoint."""
    from dataclasses import replace

    if not any(w.get("kind") == "checkpoint" for w in manifest.weights.values()):
        return check
    return replace(check, detail=f"{check.detail}; {IMPORTED_SCOPE}", figures={**check.figures, "scope": IMPORTED_SCOPE})


def _verify(directory: Path, request: VerifyRequest, progress: Progress) -> VerifyReport:
    weights, steps = request.weights, request.steps
    report = VerifyReport(str(directory), None, settings={
        "steps": steps, "guidance": GUIDANCE, "weights": weights or "from the manifest",
        "prompts": list(VERIFY_PROMPTS), "timesteps": list(VERIFY_TIMESTEPS)})
    progress.stage("integrity: sizes, sha256, signatures")
    manifest, checks = check_integrity(directory)
    report.manifest = manifest
    if manifest is not None:
        report.manifest_sha256 = sha256_file(directory / MANIFEST_NAME)
    report.checks += checks
    if manifest is None:
        return report
    if steps is None:  # the precision's own: int8's error needs a finished picture to be judged
        steps = RECIPES[manifest.quant].end_to_end_steps if manifest.quant in RECIPES else 3
        report.settings["steps"] = steps
    if request.accelerators:
        progress.stage(f"accelerators: what {' and '.join(a.upper() for a in request.accelerators)} take of each file")
        damaged = {c.name: "the file failed its integrity check" for c in checks
                   if not c.passed and c.name in {a.path for a in manifest.artifacts}}
        report.accelerators = measure_accelerators(directory, manifest, request.accelerators, request.npu_target,
                                                   damaged)  # information: never a failed check
    if manifest.family not in FAMILIES:
        report.checks.append(Check("parity", "model family", False,
                                   f"unknown family {manifest.family!r}: this sd2tflite cannot rebuild it"))
        return report
    if not description_holds(checks):
        return report  # the manifest does not describe its files: nothing to compare (the checks say why)
    dims = manifest.model_dims
    broken = {c.component for c in checks if not c.passed and c.component}

    progress.stage("building the Keras reference models")
    keras = reference_models(manifest, weights)
    tokenizer = load_tokenizer(manifest.family, request.vocab, manifest.tokenizer)  # the set's padding
    litert = LiteRTComponents(directory, manifest, request.threads)
    samples = parity_inputs(dims, tokenizer, keras)
    for component in manifest.components:
        if component in broken:
            report.checks.append(Check("parity", component, False, "not run: its files do not match the manifest",
                                       component=component))
            continue
        progress.stage(f"parity: {component}")
        try:
            report.checks.append(component_check(component, keras.for_parity(component), litert[component],
                                                 samples[component], manifest.quant))
        except RuntimeError as exc:  # LiteRT cannot invoke the file (e.g. an operator without a kernel)
            broken.add(component)
            report.checks.append(Check("parity", component, False, f"LiteRT cannot run it: {invoke_failure(exc)}",
                                       component=component))
    pipeline_parts = set(PIPELINE_COMPONENTS)
    if RECIPES[manifest.quant].needs_calibration and pipeline_parts <= set(manifest.components) - broken:
        from .quality import held_out_inputs, quality_report

        progress.stage("int8 quality: recording held-out inputs from the Keras pipeline")
        report.quality = quality_report(manifest, keras, litert, held_out_inputs(keras, dims, tokenizer,
                                                                                 prediction_type=manifest.prediction_type))
    if request.end_to_end:
        needed = pipeline_parts
        missing = needed - set(manifest.components)
        if missing or needed & broken:
            report.checks.append(Check("end-to-end", "pipeline", False,
                                       f"not run: {', '.join(sorted(missing or needed & broken))} "
                                       f"{'missing from the set' if missing else 'failed an earlier check'}"))
        else:
            progress.stage(f"end to end: keras-cv vs LiteRT, {steps} steps")
            pipeline = Pipeline(litert, dims, tokenizer, manifest.prediction_type)
            try:
                report.checks.append(_scoped(end_to_end_check(manifest.family, keras, pipeline, dims, manifest.quant,
                                                              steps), manifest))
            except NumericsError as exc:
                report.checks.append(Check("end-to-end", "pipeline", False, str(exc)))
            except RuntimeError as exc:
                report.checks.append(Check("end-to-end", "pipeline", False, f"LiteRT failed: {invoke_failure(exc)}"))
    return report
