"""PyTorch checkpoints as a --weights source: a .safetensors file (original layout), a diffusers
folder, or hf://OWNER/REPO[@REVISION] (downloaded, only the files needed, cached), with
per-component overrides, LoRAs, the prediction type and the EMA choice. The importer itself is
sd2tflite.convert.checkpoint; this module turns options into it and back from a manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UsageError, WeightsError
from ..core.fsutil import sha256_file

# --weights COMPONENT=PATH next to a checkpoint replaces that part of it.
OVERRIDE_NAMES = ("unet", "vae", "text_encoder", "diffusion", "decoder", "image_encoder")


@dataclass(frozen=True)
class CheckpointOptions:
    """What --prediction-type, --no-ema, --lora and --attention-heads say; they apply to a checkpoint only."""

    prediction_type: str | None = None
    use_ema: bool = True
    loras: tuple[str, ...] = ()  # FILE[:SCALE] as typed
    attention_heads: tuple[str, ...] = ()  # COMPONENT=VALUE as typed

    @property
    def given(self) -> bool:
        return self.prediction_type is not None or not self.use_ema or bool(self.loras) or bool(self.attention_heads)


def is_checkpoint(text: str) -> bool:
    """A PyTorch checkpoint rather than keras-cv weights (hub, DIR of .h5 files, random)."""
    from .checkpoint.layouts import is_diffusers_folder
    from .checkpoint.reader import PICKLE_SUFFIXES

    if text.startswith("hf://"):
        return True
    path = Path(text).expanduser()
    return path.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES) or (path.is_dir() and is_diffusers_folder(path))


def open_source(text: str, overrides: dict[str, Path], options: CheckpointOptions):
    """The opened Checkpoint (headers read, architecture inferred; no weights loaded)."""
    from .checkpoint import open_checkpoint, parse_lora_arg

    path = download(text) if text.startswith("hf://") else Path(text).expanduser().resolve()
    if not path.exists():
        raise UsageError(f"--weights {text}: no such file or folder")
    # Absolute paths: the manifest records them, and verify finds them again from anywhere.
    loras = [(lora.expanduser().resolve(), scale) for lora, scale in map(parse_lora_arg, options.loras)]
    overrides = {name: Path(p).expanduser().resolve() for name, p in overrides.items()}
    return open_checkpoint(path, overrides=overrides, prediction_type=options.prediction_type,
                           use_ema=options.use_ema, loras=loras, attention_heads=options.attention_heads)


def identity_of(checkpoint, text: str) -> dict:
    """The manifest's record of a checkpoint: every file with its sha256, family, widths, prediction
    type, EMA choice, LoRAs (file, sha256, scale), and the hf:// address if it came from the Hub."""
    return {"kind": "checkpoint", **checkpoint.identity(), **({"hub": text} if text.startswith("hf://") else {})}


def reopen(identity: dict, check_hashes: bool = False):
    """The Checkpoint a manifest's identity describes (verify, conversion workers). With
    `check_hashes`, every file must still have the recorded sha256."""
    from .checkpoint import open_checkpoint

    if check_hashes:
        recorded = [(f["path"], f["sha256"]) for f in identity.get("files", [])]
        recorded += [(lora["path"], lora["sha256"]) for lora in identity.get("loras", []) if lora.get("sha256")]
        for path, digest in recorded:
            if not Path(path).is_file() or sha256_file(Path(path)) != digest:
                raise WeightsError(f"the checkpoint file this set was converted from ({path}) is gone or changed: "
                                   "pass the weights again with --weights")
    return open_checkpoint(identity["path"], overrides=identity.get("overrides") or None,
                           prediction_type=identity.get("prediction_type"), use_ema=identity.get("ema") is not False,
                           loras=[(lora["path"], lora["scale"]) for lora in identity.get("loras", [])],
                           attention_heads=identity.get("attention_heads"))


def _repo_weight_files(files: list[str], part: str) -> list[str]:
    """The files of a diffusers repo's component that the importer reads, as layouts.component_files
    picks them in a folder: the plain weights (single or sharded), else the .fp16 variant."""
    from .checkpoint.layouts import WEIGHT_NAMES

    stem = f"{part}/{WEIGHT_NAMES[part]}"
    for variant in ("", ".fp16"):
        if f"{stem}{variant}.safetensors.index.json" in files:
            shards = [f for f in files if f.startswith(f"{stem}{variant}-") and f.endswith(".safetensors")]
            return [f"{stem}{variant}.safetensors.index.json", *shards]
        if f"{stem}{variant}.safetensors" in files:
            return [f"{stem}{variant}.safetensors"]
    return []


def download(uri: str) -> Path:
    """hf://OWNER/REPO[@REVISION] -> a local folder or file in the Hugging Face cache. Only what
    the conversion reads is downloaded: a diffusers repo's unet / vae / text_encoder weights (the
    fp32 files, else the fp16 variant) and configs, or a single-file repo's one .safetensors."""
    from huggingface_hub import HfApi, snapshot_download

    from ..runtime.hub import endpoint, parse_hf_uri, with_retries

    repo_id, revision = parse_hf_uri(uri)
    where = f"{uri} on {endpoint()}"
    quiet = lambda _message: None  # noqa: E731
    info = with_retries(lambda: HfApi(endpoint=endpoint()).model_info(repo_id, revision=revision), None, where,
                        quiet, download=True)
    files = [s.rfilename for s in info.siblings or []]
    if "model_index.json" in files:
        patterns = ["model_index.json", "scheduler/scheduler_config.json",
                    "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json"]
        for part in ("unet", "vae", "text_encoder"):
            patterns += [f"{part}/config.json", *_repo_weight_files(files, part)]
        if not any(".safetensors" in p for p in patterns):
            raise WeightsError(f"{uri} has no .safetensors weights (only pickled ones, which sd2tflite never "
                               "loads): convert it to safetensors first")
        folder = with_retries(lambda: snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                                        endpoint=endpoint()), None, where, quiet, download=True)
        return Path(folder)
    single = [f for f in files if "/" not in f and f.endswith(".safetensors")]
    if len(single) != 1:
        found = ", ".join(single[:5]) or "none"
        raise UsageError(f"{uri} is not a diffusers repo and has {len(single)} top-level .safetensors files "
                         f"({found}): download the one you want and pass its path to --weights")
    folder = with_retries(lambda: snapshot_download(repo_id, revision=revision, allow_patterns=single,
                                                    endpoint=endpoint()), None, where, quiet, download=True)
    return Path(folder) / single[0]


# ---------------------------------------------------------------- the model's scheduler and tokenizer


@dataclass(frozen=True)
class SchedulerOptions:
    """convert's --default-sampler / --default-steps / --default-guidance / --default-spacing /
    --default-eta / --pad-token: what the manifest records as the set's defaults, over the model's
    own configs."""

    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    spacing: str | None = None
    eta: float | None = None
    pad_token: str | None = None  # "eos" | "!" | a token the vocabulary pads with


# The family's own configs for single files (no scheduler_config.json / tokenizer/ beside them):
# SD 1.5's (PNDM, leading, offset 1) and SD 2.1's (DDIM, leading, offset 1); SD 2.x pads with "!".
FAMILY_SCHEDULERS = {
    "v1": {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
           "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1},
    "v2": {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
           "num_train_timesteps": 1000, "set_alpha_to_one": False, "clip_sample": False, "steps_offset": 1},
}
FAMILY_PAD_TOKENS = {"v1": "<|endoftext|>", "v2": "!"}

# Scheduler config fields whose other values this runtime does not reproduce: field -> accepted values.
_ALWAYS_CHECKED = {
    "trained_betas": (None,), "rescale_betas_zero_snr": (False, None), "thresholding": (False, None),
    "timestep_type": ("discrete", None), "interpolation_type": ("linear", None),
    "use_exponential_sigmas": (False, None), "use_beta_sigmas": (False, None), "use_lu_lambdas": (False, None),
    "use_flow_sigmas": (False, None), "use_dynamic_shifting": (False, None),
}
_CLASS_CHECKED = {
    "PNDMScheduler": {"skip_prk_steps": (True,)},
    "DPMSolverMultistepScheduler": {"algorithm_type": ("dpmsolver++",), "solver_order": (2,),
                                    "solver_type": ("midpoint",), "final_sigmas_type": ("zero", None),
                                    "euler_at_final": (False, None), "lower_order_final": (True, None),
                                    "variance_type": (None,)},
    "EulerDiscreteScheduler": {"final_sigmas_type": ("zero", None), "sigma_min": (None,), "sigma_max": (None,)},
}


def _read_json_file(path: Path) -> dict | None:
    import json

    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}): repair or delete it") from exc
    if not isinstance(data, dict):
        raise WeightsError(f"{path} is not a JSON object: repair or delete it")
    return data


def _pad_of(config: dict | None) -> str | None:
    if not config or "pad_token" not in config:
        return None
    pad = config["pad_token"]
    return pad.get("content") if isinstance(pad, dict) else pad


def model_conventions(identity: dict, family: str, options: SchedulerOptions | None = None) -> dict:
    """The manifest's {"scheduler", "tokenizer", "pixels"} for a checkpoint: the diffusers folder's
    scheduler/scheduler_config.json and tokenizer/ configs, else the family's (single files), with
    the convert options on top. A config this runtime cannot reproduce is refused in one line."""
    from ..runtime.samplers import SCHEDULER_CLASSES, SAMPLERS, check_spacing
    from ..runtime.schedule import Schedule
    from ..runtime.tokenizer import pad_id_of

    options = options or SchedulerOptions()
    root = Path(identity["path"])
    folder = root.is_dir()  # a diffusers folder (a single file is a file)
    where = root / "scheduler" / "scheduler_config.json"
    config = _read_json_file(where) if folder else None
    source = "scheduler/scheduler_config.json"
    if config is None:
        config, source = dict(FAMILY_SCHEDULERS[family]), f"the {family} family's scheduler config"
        where = None
    name = config.get("_class_name")
    sampler = SCHEDULER_CLASSES.get(name)
    fix = "pass --default-sampler NAME (one of " + ", ".join(n for n in SAMPLERS if n != "ddim-kerascv") + ")"
    if options.sampler is not None and options.sampler not in SAMPLERS:
        raise UsageError(f"--default-sampler {options.sampler!r} is unknown: use one of {', '.join(SAMPLERS)}")
    if sampler is None and options.sampler is None:
        raise UsageError(f"{where or source}: scheduler {name!r} is not one this sd2tflite runs: {fix}")
    for field_name, accepted in _ALWAYS_CHECKED.items():
        if config.get(field_name) not in accepted:
            raise UsageError(f"{where or source}: {field_name} = {config[field_name]!r} is not supported (this "
                             f"sd2tflite runs {accepted[0]!r}): use a model without it")
    if options.sampler is None:
        for field_name, accepted in _CLASS_CHECKED.get(name, {}).items():
            if field_name in config and config[field_name] not in accepted:
                raise UsageError(f"{where or source}: {name} with {field_name} = {config[field_name]!r} is not "
                                 f"supported (this sd2tflite runs {accepted[0]!r}): {fix}")
    check_spacing(options.spacing)
    if options.steps is not None and options.steps < 1:
        raise UsageError(f"--default-steps {options.steps} must be at least 1")
    from .checkpoint.recommend import family_recommendation  # few-step families' steps / guidance

    recommended = family_recommendation(identity, name, config) if where is not None else {}
    try:
        schedule = Schedule(
            convention="diffusers",
            beta_start=float(config.get("beta_start", 0.0001)), beta_end=float(config.get("beta_end", 0.02)),
            beta_schedule=config.get("beta_schedule", "linear"),
            num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
            timestep_spacing=options.spacing or config.get("timestep_spacing"),
            steps_offset=int(config.get("steps_offset", 0)),
            set_alpha_to_one=config.get("set_alpha_to_one"),
            clip_sample=bool(config.get("clip_sample", False)) and (options.sampler or sampler) in ("ddim", "lcm"),
            clip_sample_range=float(config.get("clip_sample_range", 1.0)),
            original_inference_steps=int(config.get("original_inference_steps", 50)),
            timestep_scaling=float(config.get("timestep_scaling", 10.0)),
            sampler=options.sampler or sampler, steps=options.steps or recommended.get("steps"),
            guidance=options.guidance if options.guidance is not None else recommended.get("guidance"), eta=options.eta,
            scheduler_class=name, source=source if not (options.sampler or options.spacing) else f"{source} + options",
        )
    except UsageError as exc:
        raise UsageError(f"{where or source}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where or source}: a field has the wrong type ({exc}): repair the config") from None

    pad, pad_source = None, None
    if options.pad_token is not None:
        pad, pad_source = ("<|endoftext|>" if options.pad_token == "eos" else options.pad_token), "--pad-token"
    elif folder:
        for file in ("special_tokens_map.json", "tokenizer_config.json"):
            pad = _pad_of(_read_json_file(root / "tokenizer" / file))
            if pad is not None:
                pad_source = f"tokenizer/{file}"
                break
    if pad is None:
        pad, pad_source = FAMILY_PAD_TOKENS[family], f"the {family} family's convention"
    tokenizer = {"pad_token": pad, "pad_id": pad_id_of(pad), "source": pad_source}
    return {"scheduler": schedule.to_json(), "tokenizer": tokenizer, "pixels": "round"}


def keras_cv_conventions(options: SchedulerOptions | None = None) -> dict:
    """keras-cv weights: keras-cv's DDIM, end-of-text padding, truncated pixels (the convert options
    can still record other defaults)."""
    from ..runtime.samplers import SAMPLERS, check_spacing
    from ..runtime.schedule import Schedule
    from ..runtime.tokenizer import END_TOKEN, pad_id_of

    o = options or SchedulerOptions()
    if o.sampler is not None and o.sampler not in SAMPLERS:
        raise UsageError(f"--default-sampler {o.sampler!r} is unknown: use one of {', '.join(SAMPLERS)}")
    check_spacing(o.spacing)
    if o.steps is not None and o.steps < 1:
        raise UsageError(f"--default-steps {o.steps} must be at least 1")
    given = any(v is not None for v in (o.sampler, o.steps, o.guidance, o.spacing, o.eta))
    schedule = Schedule(timestep_spacing=o.spacing, sampler=o.sampler, steps=o.steps, guidance=o.guidance, eta=o.eta,
                        source="keras-cv + options" if given else "keras-cv")
    pad = "<|endoftext|>" if o.pad_token in (None, "eos") else o.pad_token
    return {"scheduler": schedule.to_json(),
            "tokenizer": {"pad_token": pad, "pad_id": pad_id_of(pad) if pad != "<|endoftext|>" else END_TOKEN,
                          "source": "--pad-token" if o.pad_token else "keras-cv"},
            "pixels": "truncate"}


def unet_sample_size(identity: dict) -> int | None:
    """The image side a diffusers UNet config says (sample_size x 8), when it is one we build."""
    if not Path(identity["path"]).is_dir():
        return None
    config = _read_json_file(Path(identity["path"]) / "unet" / "config.json") or {}
    size = config.get("sample_size")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0 and (size * 8) % 128 == 0:
        return size * 8
    return None
