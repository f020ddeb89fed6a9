"""What a conversion is asked to do: the user's options as typed (`ConvertOptions`, whose defaults
the CLI shows), their checks, and the resolved `ConvertRequest` the rest of the converter reads.

`check_options` is pure (no files, no network); `build_request` then resolves the weights
(downloading if needed) and checks the output folder before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..core.errors import UsageError
from ..core.precisions import get_recipe
from ..core.registry import COMPONENTS, FAMILIES, PIPELINE_COMPONENTS, PREDICTION_TYPES, ModelDims, parse_components
from .calibration.recorded import RecordingSettings, read_prompts
from .calibration.selective import KeepFloat
from .limits import CONVERTER_RSS_BASE, DEFAULT_MAX_PART_BYTES, HARD_FLATBUFFER_LIMIT, default_memory_budget
from .weights import ResolvedWeights


@dataclass(frozen=True)
class ConvertOptions:
    """The options of `sd2tflite convert`, as the user gave them; the CLI's defaults are these."""

    family: str = "v1"
    quant: str = "fp32"
    components: str = "all"
    weights: str | None = None  # None: the family's default (hub; the trained weights for tiny)
    img_height: int | None = None  # None: the family's size (512; 128 for tiny, what it is trained for)
    img_width: int | None = None
    batch_size: int = 1
    out_dir: str | None = None  # None: models/sd-FAMILY-QUANT
    max_part_bytes: int = DEFAULT_MAX_PART_BYTES
    unet_parts: int | None = None
    memory_budget: int | None = None  # None: 80 % of this machine's RAM
    join_unet: bool | None = None  # None: join the parts when one file fits (plan.joins_unet)
    force: bool = False
    isolate: bool | None = None  # None: worker processes for v1/v2, inline for tiny
    calibration: str = "recorded"  # int8: "recorded" from Keras pipeline runs, or "synthetic"
    calibration_prompts: str | None = None
    calibration_prompt_count: int = 8
    calibration_steps: int = 10
    calibration_samples: int = 32
    calibration_images: str | None = None
    keep_float: str | None = None
    seed: int = 0
    # PyTorch checkpoints (--weights FILE.safetensors | DIFFUSERS_DIR | hf://OWNER/REPO):
    prediction_type: str | None = None  # None: the checkpoint's scheduler config, else the family's
    ema: bool = True  # single files with EMA weights: use them
    loras: tuple[str, ...] = ()  # FILE[:SCALE]
    attention_heads: tuple[str, ...] = ()  # COMPONENT=N[,N...] | COMPONENT=CONFIG.json
    export_cache: str | None = None  # keep / reuse exported SavedModels here (other precisions)
    command: str = ""
    # The set's generate defaults, over the model's own scheduler / tokenizer configs (the manifest records them):
    default_sampler: str | None = None
    default_steps: int | None = None
    default_guidance: float | None = None
    default_spacing: str | None = None
    default_eta: float | None = None
    pad_token: str | None = None  # "eos" | "!"


@dataclass(frozen=True)
class ConvertRequest:
    """A checked conversion: every name known, every file found, every number in range."""

    family: str
    quant: str
    components: tuple[str, ...]
    dims: ModelDims
    weights: dict[str, ResolvedWeights]
    out_dir: Path
    max_part_bytes: int
    unet_parts: int | None
    memory_budget: int | None  # bytes of RAM one conversion may use; None: no bound
    join_unet: bool | None  # None: join the UNet parts when one file fits (plan.joins_unet)
    force: bool
    isolate: bool
    calibration_samples: int
    calibration_seed: int
    # int8: None calibrates on synthetic samples; settings record them from Keras pipeline runs.
    recording: RecordingSettings | None
    keep_float: KeepFloat | None  # int8 modes: operators kept in float (calibration/selective.py)
    export_cache: Path | None = None
    command: str = ""
    # The manifest's {"scheduler", "tokenizer", "pixels"} (checkpoint_source.model_conventions)
    conventions: dict | None = None


def default_isolation(family: str) -> bool:
    """Full-size families convert in child processes; the tiny one inline (fast tests)."""
    return family != "tiny"


def check_options(o: ConvertOptions) -> None:
    """The first option that cannot work, as a UsageError naming it and the fix (no I/O)."""
    if o.family not in FAMILIES:
        raise UsageError(f"unknown model {o.family!r}: choose from {', '.join(FAMILIES)}")
    recipe = get_recipe(o.quant)
    parse_components(o.components)
    for name, value in (("--img-height", o.img_height), ("--img-width", o.img_width)):
        if value is not None and (value <= 0 or value % 128):
            raise UsageError(f"{name} {value} is not a positive multiple of 128: use e.g. 256 or 512")
    at_least_one = (("--batch-size", o.batch_size), ("--unet-parts", o.unet_parts),
                    ("--calibration-samples", o.calibration_samples), ("--calibration-steps", o.calibration_steps),
                    ("--calibration-prompt-count", o.calibration_prompt_count))
    for name, value in at_least_one:
        if value is not None and value < 1:
            raise UsageError(f"{name} {value} must be at least 1")
    if not (1 << 20) <= o.max_part_bytes <= HARD_FLATBUFFER_LIMIT:
        raise UsageError(f"--max-part-bytes {o.max_part_bytes:,} is outside 1 MiB .. 2 GiB (the flatbuffer limit)")
    if o.memory_budget is not None and o.memory_budget <= CONVERTER_RSS_BASE + (1 << 28):
        raise UsageError(
            f"--memory-budget {o.memory_budget:,} is too small: a conversion worker alone needs about "
            f"{CONVERTER_RSS_BASE / 1e9:.1f} GB; give at least 1GB")
    if o.calibration not in ("recorded", "synthetic"):
        raise UsageError(f"--calibration {o.calibration!r}: choose recorded or synthetic")
    recorded = o.calibration == "recorded" and recipe.needs_calibration
    if not recorded and (o.calibration_prompts or o.calibration_images):
        raise UsageError("--calibration-prompts / --calibration-images need a calibrated precision (int8, "
                         "int8-strict, int16x8) with --calibration recorded")
    if o.prediction_type is not None and o.prediction_type not in PREDICTION_TYPES:
        raise UsageError(f"--prediction-type {o.prediction_type!r}: choose {' or '.join(PREDICTION_TYPES)}")
    if o.keep_float and o.quant != "int8":
        raise UsageError(f"--keep-float works with --quant int8 (float fallback), not {o.quant}")


def build_request(o: ConvertOptions, resolve_weights: bool = True) -> ConvertRequest:
    """Checks the options, then resolves the weights (downloading if needed; skipped for a plan)."""
    from .checkpoint_source import (CheckpointOptions, SchedulerOptions, keras_cv_conventions, model_conventions,
                                    unet_sample_size)
    from .weights import checkpoint_dims, parse_weights, resolve

    check_options(o)
    recipe = get_recipe(o.quant)
    recording = None
    if o.calibration == "recorded" and recipe.needs_calibration:
        recording = RecordingSettings(
            prompts=read_prompts(Path(o.calibration_prompts) if o.calibration_prompts else None,
                                 o.calibration_prompt_count),
            steps=o.calibration_steps, samples=o.calibration_samples, seed=o.seed,
            images_dir=str(Path(o.calibration_images).resolve()) if o.calibration_images else None)
    keep = KeepFloat.parse(o.keep_float)
    if keep is not None:
        keep.check()
    if recipe.float_ops:  # the precision's own float operators come first, the user's are added
        keep = KeepFloat(tuple(dict.fromkeys(recipe.float_ops + (keep.patterns if keep else ()))),
                         keep.auto_target_db if keep else None)
    family = FAMILIES[o.family]
    names = parse_components(o.components)
    source = parse_weights(o.weights, family, CheckpointOptions(o.prediction_type, o.ema, tuple(o.loras),
                                                                       tuple(o.attention_heads)))
    scheduler_options = SchedulerOptions(o.default_sampler, o.default_steps, o.default_guidance, o.default_spacing,
                                         o.default_eta, o.pad_token)
    dims = family.dims(o.img_height, o.img_width, o.batch_size)
    if source.kind == "checkpoint":
        if o.family == "tiny":
            raise UsageError("--model tiny has no PyTorch checkpoints: leave --model out (the checkpoint says v1 or v2)")
        # The checkpoint says the family and the widths (headers only, no hashing yet).
        identity = resolve(source, family, names, hash_files=False)[names[0]].identity
        family = FAMILIES[identity["family"]]
        size = unet_sample_size(identity) if o.img_height is None and o.img_width is None else None
        dims = family.dims(size or o.img_height, size or o.img_width, o.batch_size)  # the UNet config's size
        dims = replace(dims, **checkpoint_dims(identity))
        conventions = model_conventions(identity, family.name, scheduler_options)
    else:
        conventions = keras_cv_conventions(scheduler_options)
    target = Path(o.out_dir or f"models/sd-{family.name}-{o.quant}")
    if resolve_weights:
        from .outdir import check_output_dir

        check_output_dir(target, o.force)  # before any download or hashing
        # Recording runs the whole pipeline, so it needs the other components' weights too.
        needed = [c for c in COMPONENTS if c in names or (recording and c in PIPELINE_COMPONENTS)]
        resolved = resolve(source, family, needed)
    elif source.kind == "checkpoint":  # planning: the architecture is enough
        resolved = resolve(source, family, names, hash_files=False)
    else:  # planning only: the weights' identity does not change the plan
        resolved = {c: ResolvedWeights(c, None, {"kind": "unresolved"}) for c in names}
    return ConvertRequest(
        family=family.name, quant=o.quant, components=tuple(names),
        dims=dims, weights=resolved, out_dir=target,
        max_part_bytes=o.max_part_bytes, unet_parts=o.unet_parts,
        memory_budget=default_memory_budget() if o.memory_budget is None else o.memory_budget,
        join_unet=o.join_unet, force=o.force, isolate=default_isolation(o.family) if o.isolate is None else o.isolate,
        calibration_samples=o.calibration_samples, calibration_seed=o.seed, recording=recording,
        keep_float=keep, export_cache=Path(o.export_cache).expanduser() if o.export_cache else None,
        command=o.command, conventions=conventions,
    )
