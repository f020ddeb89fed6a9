"""int8 calibration data recorded from real pipeline runs, cached on disk with its provenance.

The Keras pipeline (sd2tflite.runtime.pipeline over the Keras components, the same maths as keras-cv)
runs a prompt set; every component call's inputs are recorded:
  text_encoder   token sequences of the prompts and of the empty prompt
  diffusion      (latent, timestep embedding, context) at every step, conditional and
                 unconditional branch, spread over the whole schedule
  decoder        the final latents, plus UNet input latents from the last third of the schedule
  image_encoder  images from --calibration-images, else the decoded pipeline outputs
  taesd_decoder / taesd_encoder  the decoder's / image encoder's samples (the tiny autoencoder has the
                 full VAE's interfaces: the UNet-scale latent in, an image in [-1, 1] out, and back)
then `samples` of each are kept, stratified over the recording order (so over timesteps and
branches). The data is cached under ~/.cache/sd2tflite/calibration/<key>.npz, where the key hashes
everything that determines it, and reused when a later conversion asks for the same.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ...core.errors import UsageError
from ...core.fsutil import atomic_write, cache_root, sha256_file, write_json_atomic
from ...core.registry import COMPONENTS, PIPELINE_COMPONENTS, TINY_VAE, ModelDims

FORMAT = 1

# Written for this project: varied subjects (people, animals, landscapes, objects, text) and styles.
# verify's held-out prompts (verify/checks.VERIFY_PROMPTS) are deliberately not among them.
DEFAULT_PROMPTS = (
    "a portrait of an old fisherman with a grey beard, golden hour, 85mm photograph",
    "a red fox jumping over a snowy log in a pine forest",
    "a mountain lake at sunrise with mist over the water, wide angle landscape",
    "a bowl of ramen with a soft boiled egg on a wooden table, food photography",
    "a neon sign that says OPEN in a rainy city street at night",
    "an astronaut cat floating inside a space station, digital art",
    "a medieval castle on a hill, oil painting in the style of the old masters",
    "a close-up of a hummingbird drinking from a purple flower, macro photo",
    "a cozy reading nook with a blanket and a stack of books, watercolor",
    "a vintage sports car parked in front of a diner, 1960s film photo",
    "a child flying a kite on a beach, pastel colors, children's book illustration",
    "an isometric 3d render of a tiny island with a lighthouse",
    "a herd of elephants crossing a dry savanna under a dramatic sky",
    "a chess board with glass pieces, studio lighting, shallow depth of field",
    "a street market in marrakech full of spices and lanterns",
    "a pencil sketch of a ballet dancer in mid leap",
    "a futuristic city skyline with flying cars, cyberpunk, highly detailed",
    "a steaming cup of coffee next to a laptop, morning light, minimalist",
    "a koi pond with lily pads seen from above, japanese ink painting",
    "a group of friends laughing around a campfire at night",
    "a snow leopard resting on a rocky ledge, national geographic photo",
    "a poster with the words HELLO WORLD in bold retro typography",
    "a field of sunflowers under a thunderstorm, impressionist painting",
    "a robot chef cooking pancakes in a bright kitchen, pixar style",
)


@dataclass(frozen=True)
class RecordingSettings:
    prompts: tuple[str, ...] = DEFAULT_PROMPTS[:8]
    steps: int = 10  # pipeline steps per prompt
    samples: int = 32  # kept per component (the UNet: over prompts x steps x 2 branches)
    seed: int = 0
    guidance: float = 7.5
    images_dir: str | None = None

    def describe(self) -> dict:
        data = asdict(self)
        data["prompts"] = len(self.prompts)
        data["prompts_sha256"] = hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()[:16]
        return data


def read_prompts(path: Path | None, count: int | None) -> tuple[str, ...]:
    """Prompts from a file (one per line, # comments) or the built-in set; the first `count`."""
    if path is None:
        prompts = DEFAULT_PROMPTS
    else:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise UsageError(f"--calibration-prompts {path}: {exc.strerror or exc}: pass a text file, one prompt per line") from None
        prompts = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
        if not prompts:
            raise UsageError(f"--calibration-prompts {path} holds no prompts: one per line")
    if count is not None:
        if count < 1:
            raise UsageError(f"--calibration-prompt-count {count} must be at least 1")
        prompts = prompts[:count]
    return tuple(prompts)


def cache_key(family: str, dims: ModelDims, weights: dict[str, dict], settings: RecordingSettings) -> str:
    images = None
    if settings.images_dir:
        images = {p.name: sha256_file(p) for p in _image_files(Path(settings.images_dir))}
    identity = {"format": FORMAT, "family": family, "dims": dims.to_json(),
                "weights": {c: weights[c] for c in sorted(weights)},
                "settings": {**asdict(settings), "images_dir": None}, "images": images}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def cache_dir() -> Path:
    return cache_root() / "calibration"


def _image_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise UsageError(f"--calibration-images {directory} is not a directory: pass a folder of PNG/JPEG files")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not files:
        raise UsageError(f"--calibration-images {directory} holds no .png/.jpg/.webp files")
    return files


class _Recorder:
    """Wraps a component callable; keeps a copy of every call's inputs."""

    def __init__(self, fn: Callable):
        self.fn, self.calls = fn, []

    def __call__(self, **inputs):
        self.calls.append({k: np.array(v, copy=True) for k, v in inputs.items()})
        return self.fn(**inputs)


def keras_callable(model, component: str) -> Callable:
    """A Keras component as the pipeline's named-inputs -> named-outputs callable (compiled)."""
    from ..keras_models import call_keras

    output = COMPONENTS[component].output_name
    return lambda **inputs: {output: call_keras(model, inputs, compiled=True)[0]}


def _stratified(items: list, count: int) -> list:
    if len(items) <= count:
        return items
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in picks]


def record(keras_models: dict, dims: ModelDims, tokenizer, settings: RecordingSettings,
           on_prompt: Callable[[int, int], None] | None = None,
           prediction_type: str = "epsilon") -> dict[str, list[dict[str, np.ndarray]]]:
    """Runs the Keras pipeline over the prompts; returns up to `samples` inputs per component."""
    from ...runtime.pipeline import GenerateSettings, Pipeline

    recorders = {c: _Recorder(keras_callable(keras_models[c], c))
                 for c in PIPELINE_COMPONENTS if c in keras_models}
    if len(recorders) < len(PIPELINE_COMPONENTS):
        raise UsageError("recording calibration data needs the text encoder, UNet and decoder weights")
    pipeline = Pipeline(recorders, dims, tokenizer, prediction_type)
    decoded = []
    for i, prompt in enumerate(settings.prompts):
        result = pipeline.generate(GenerateSettings(prompt, steps=settings.steps, guidance=settings.guidance,
                                                    seed=settings.seed + i))
        decoded.append(result.images.astype(np.float32) / 127.5 - 1.0)
        if on_prompt:
            on_prompt(i + 1, len(settings.prompts))

    unique_tokens: dict[bytes, dict] = {}
    for call in recorders["text_encoder"].calls:
        unique_tokens.setdefault(call["tokens"].tobytes(), call)
    unet_calls = recorders["diffusion"].calls
    # Calls come prompt by prompt, two per step, from the noisiest step down: keep each prompt's
    # last third (nearly clean latents) for the decoder too.
    per_prompt = 2 * settings.steps
    late = [c for i, c in enumerate(unet_calls) if i % per_prompt >= per_prompt * 2 // 3]
    samples = {
        "text_encoder": _stratified(list(unique_tokens.values()), settings.samples),
        "diffusion": _stratified(unet_calls, settings.samples),
        "decoder": _stratified(recorders["decoder"].calls + [{"latent": c["latent"]} for c in late],
                               settings.samples),
    }
    if settings.images_dir:
        images = [_load_image(p, dims) for p in _image_files(Path(settings.images_dir))]
    else:
        images = decoded
    samples["image_encoder"] = _stratified([{"image": img} for img in images], settings.samples)
    return with_tiny_vae(samples)


def _load_image(path: Path, dims: ModelDims) -> np.ndarray:
    from ...runtime.images import load_image

    image, _ = load_image(path, dims.img_height, dims.img_width, resize=True)
    return np.repeat(image[None], dims.batch_size, axis=0)


def pipeline_weights(weights: dict) -> dict[str, dict]:
    """The identities the recording depends on (the image encoder is never run)."""
    return {c: (w.identity if hasattr(w, "identity") else w) for c, w in weights.items() if c in PIPELINE_COMPONENTS}


def load_or_record(family: str, dims: ModelDims, weights: dict, settings: RecordingSettings,
                   on_prompt: Callable[[int, int], None] | None = None) -> dict[str, list[dict[str, np.ndarray]]]:
    """The cached recording for these settings, or a new one (then cached)."""
    key = cache_key(family, dims, pipeline_weights(weights), settings)
    path = cache_dir() / f"{key}.npz"
    cached = _load(path)
    if cached is not None:
        return with_tiny_vae(cached)
    from ...runtime.tokenizer import load_tokenizer
    from ..weights import build_with_weights

    missing = [c for c in PIPELINE_COMPONENTS if c not in weights]
    if missing:
        raise UsageError(f"recording calibration data runs the pipeline, which needs the {', '.join(missing)} "
                         "weights too: convert them in the same run (--components, --weights) or pass "
                         "--calibration synthetic")
    models = {c: build_with_weights(family, c, dims, weights[c]) for c in PIPELINE_COMPONENTS}
    prediction_type = weights["diffusion"].identity.get("prediction_type", "epsilon")
    samples = record(models, dims, load_tokenizer(family), settings, on_prompt, prediction_type)
    _save(path, samples, {"key": key, "family": family, "dims": dims.to_json(),
                          "weights": pipeline_weights(weights), "settings": asdict(settings)})
    return with_tiny_vae(samples)


def with_tiny_vae(samples: dict[str, list[dict[str, np.ndarray]]]) -> dict[str, list[dict[str, np.ndarray]]]:
    """The tiny autoencoder calibrates on what the full VAE's components do: the latents the pipeline
    decodes, and the images the image encoder gets."""
    return {**samples, **{tiny: samples[full] for full, tiny in TINY_VAE.items() if full in samples}}


def _save(path: Path, samples: dict[str, list[dict]], provenance: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{c}/{name}": np.stack([s[name] for s in items])
              for c, items in samples.items() if c not in TINY_VAE.values() for name in items[0]}
    with atomic_write(path, suffix=".npz") as tmp:  # np.savez adds .npz otherwise
        np.savez(tmp, **arrays)
        # Provenance first: an .npz without its .json is ignored, never the other way round.
        write_json_atomic(path.with_suffix(".json"), provenance)


def _load(path: Path) -> dict[str, list[dict[str, np.ndarray]]] | None:
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            grouped: dict[str, dict[str, np.ndarray]] = {}
            for name in data.files:
                component, _, tensor = name.partition("/")
                grouped.setdefault(component, {})[tensor] = data[name]
    except (OSError, ValueError, EOFError):
        return None  # a damaged cache entry is recorded again
    return {c: [{n: arrays[n][i] for n in arrays} for i in range(len(next(iter(arrays.values()))))]
            for c, arrays in grouped.items()}
