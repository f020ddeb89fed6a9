"""`sd2tflite generate`: a converted set, a prompt and settings in; PNG files out. No TensorFlow.

`generate(GenerateRequest, progress) -> GenerateResult`, the shape of every command's entry point.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.errors import UsageError
from ..core.fsutil import atomic_write
from ..core.outputs import NewFile, check_new_files
from ..core.progress import NO_PROGRESS, Progress
from .hub import resolve_model_dir
from .images import load_image, load_mask, output_paths, save_png
from .integrity import ensure_intact
from .litert import LiteRTComponents
from .tiny_vae import check_vae, choose_vae
from .pipeline import GenerateSettings, Pipeline
from .schedule import Schedule
from .tokenizer import load_tokenizer
from .weight_cache import default_cache_dir


@dataclass(frozen=True)
class GenerateRequest:
    model_dir: Path | str  # a converted set's folder, or hf://OWNER/REPO[@REVISION] (downloaded, checked)
    output: Path
    settings: GenerateSettings
    noise_file: Path | None = None
    image_file: Path | None = None
    mask_file: Path | None = None
    resize: bool = True
    threads: int | None = None
    vocab: Path | None = None
    save_latents: Path | None = None
    force: bool = False
    weight_cache: bool = True  # XNNPACK's packed weights as files (weight_cache.py): file-backed memory
    vae: str = "full"  # full | tiny: the set's TAESD files decode (and encode, when converted) instead


@dataclass(frozen=True)
class GenerateResult:
    paths: list[Path]  # the PNG files written, one per image of the batch
    notes: list[str]  # what was adapted on the way (an input image resized)
    seconds: float


def _check_outputs(request: GenerateRequest, batch_size: int) -> list[Path]:
    if request.output.suffix.lower() != ".png":
        raise UsageError(f"-o {request.output}: the output is a PNG file, name it *.png")
    paths = output_paths(request.output, batch_size)
    check_new_files([NewFile("-o", p) for p in paths] + [NewFile("--save-latents", request.save_latents)],
                    request.force)
    return paths


def _load_noise(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"--noise {path} does not exist: check the path") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--noise {path} is not a .npy array ({exc}): save one with numpy.save") from exc


def _noise_layout(noise: np.ndarray, shape: tuple[int, ...], path: Path) -> tuple[np.ndarray, str | None]:
    """--noise in our NHWC layout, or diffusers' NCHW where that is unambiguous (transposed, with a
    note); anything else is refused before any model is loaded."""
    nhwc = (tuple(shape), tuple(shape[1:]))
    if noise.shape in nhwc:
        return noise, None
    if noise.ndim in (3, 4):
        moved = np.moveaxis(noise, -3, -1)  # (..., C, H, W) -> (..., H, W, C)
        if moved.shape in nhwc:
            return np.ascontiguousarray(moved), f"--noise {path} is NCHW {list(noise.shape)} (diffusers' layout): " \
                                                f"transposed to NHWC {list(moved.shape)}"
    b, h, w, c = shape
    raise UsageError(f"--noise {path} has shape {list(noise.shape)}, this set needs NHWC {list(shape)} (or "
                     f"{list(shape[1:])}; diffusers' NCHW {[b, c, h, w]} is transposed): save a matching array")


def generate(request: GenerateRequest, progress: Progress | None = None) -> GenerateResult:
    """Writes the images (and --save-latents) of one pipeline run; progress: one stage of
    denoising steps, begun when the first step is done (the pipeline knows the count)."""
    progress = progress or NO_PROGRESS
    start = time.monotonic()
    model_dir = resolve_model_dir(str(request.model_dir))
    manifest = ensure_intact(model_dir, reuse_hashes=True)
    dims = manifest.model_dims
    paths = _check_outputs(request, dims.batch_size)  # before any work: nothing is overwritten
    settings, notes = request.settings, []
    if request.noise_file is not None:
        noise, note = _noise_layout(_load_noise(request.noise_file), dims.latent_shape, request.noise_file)
        notes += [note] if note else []
        settings = replace(settings, noise=noise, seed=None)
    if request.mask_file is not None and request.image_file is None:
        raise UsageError("--mask needs --image: pass the image to inpaint")
    if request.image_file is not None:
        image, note = load_image(request.image_file, dims.img_height, dims.img_width, request.resize)
        notes += [note] if note else []
        settings = replace(settings, image=image)
        if request.mask_file is not None:
            settings = replace(settings, mask=load_mask(
                request.mask_file, request.image_file, dims.img_height, dims.img_width, request.resize))
    elif settings.strength is not None:
        raise UsageError("--strength needs --image: it says how far to move away from that image")

    tokenizer = load_tokenizer(manifest.family, request.vocab, manifest.tokenizer)
    cache = default_cache_dir() if request.weight_cache else None
    said: set[str] = set()  # a weight-cache note (a folder that takes no files) is said once per run

    def cache_note(text: str) -> None:
        if text not in said:
            said.add(text)
            progress.note(f"note: {text}")

    check_vae(request.vae, manifest.components)
    components = choose_vae(LiteRTComponents(model_dir, manifest, request.threads, weight_cache=cache,
                                             note=cache_note), request.vae)
    pipeline = Pipeline(components, dims,
                        tokenizer, manifest.prediction_type, Schedule.from_json(manifest.scheduler), manifest.pixels)
    resolved = pipeline.resolve(settings)
    pipeline.make_sampler(resolved)  # steps x strength, the spacing: refused before any model is loaded
    notes += pipeline.sampler_notes(resolved)

    def on_step(done: int, total: int) -> None:
        if done == 1:
            progress.stage("denoising", total, unit="step")
        progress.advance()

    result = pipeline.generate(settings, on_step=on_step)
    settings = result.settings or settings  # what ran: the set's defaults filled in

    text = {
        "prompt": settings.prompt,
        "parameters": json.dumps(_recorded_settings(request, settings, manifest, tokenizer.name)),
        "Software": f"sd2tflite {__version__}",
    }
    for i, path in enumerate(paths):
        save_png(path, result.images[i], text)
    if request.save_latents:
        with atomic_write(request.save_latents, suffix=".npy") as tmp:  # np.save adds .npy otherwise
            np.save(tmp, result.latents)
    return GenerateResult(paths, notes, time.monotonic() - start)


def _recorded_settings(request: GenerateRequest, settings: GenerateSettings, manifest, tokenizer: str) -> dict:
    """Everything needed to reproduce the image, for the PNG's text metadata."""
    return {
        "prompt": settings.prompt,
        "negative_prompt": settings.negative_prompt,
        "seed": settings.seed,
        "noise_file": str(request.noise_file) if request.noise_file else None,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "strength": settings.strength,
        "sampler": settings.sampler,
        "karras": settings.karras,
        "spacing": settings.spacing,
        "eta": settings.eta,
        "image": str(request.image_file) if request.image_file else None,
        "mask": str(request.mask_file) if request.mask_file else None,
        "model": {"family": manifest.family, "quant": manifest.quant, "dims": manifest.dims,
                  "weights": manifest.weights,
                  "files": {a.path: a.sha256 for a in manifest.artifacts}},
        "tokenizer": tokenizer,
    }
