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
    """What --prediction-type, --no-ema and --lora say; they apply to a checkpoint only."""

    prediction_type: str | None = None
    use_ema: bool = True
    loras: tuple[str, ...] = ()  # FILE[:SCALE] as typed

    @property
    def given(self) -> bool:
        return self.prediction_type is not None or not self.use_ema or bool(self.loras)


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
                           use_ema=options.use_ema, loras=loras)


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
                           loras=[(lora["path"], lora["scale"]) for lora in identity.get("loras", [])])


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
        patterns = ["model_index.json", "scheduler/scheduler_config.json"]
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
