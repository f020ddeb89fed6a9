"""The one place that lists model families and components.

Everything else (weights, split, convert, tests) iterates over these tables; adding a component
or a family is one entry here plus its builder in convert/keras_models.py. Imports no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_TEXT_LENGTH = 77
TIMESTEP_EMBEDDING_DIM = 320
LATENT_CHANNELS = 4
VAE_FACTOR = 8
CLIP_VOCAB_SIZE = 49408


@dataclass(frozen=True)
class TensorSpec:
    """A named, fully static tensor of a signature (batch included)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict) -> "TensorSpec":
        return cls(data["name"], tuple(int(d) for d in data["shape"]), data["dtype"])


@dataclass(frozen=True)
class ModelDims:
    """The static shapes a converted set is built for."""

    img_height: int = 512
    img_width: int = 512
    batch_size: int = 1
    max_text_length: int = MAX_TEXT_LENGTH
    context_dim: int = 768
    vocab_size: int = CLIP_VOCAB_SIZE
    # The sinusoidal timestep embedding fed to the UNet: 320 in SD 1.x / 2.x (the UNet's first width).
    timestep_dim: int = TIMESTEP_EMBEDDING_DIM
    # LCM-distilled UNets take the guidance scale as a sinusoidal embedding of this width
    # (diffusers' time_cond_proj_dim, e.g. 256); 0: the UNet has no such input.
    guidance_embedding_dim: int = 0

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (
            self.batch_size,
            self.img_height // VAE_FACTOR,
            self.img_width // VAE_FACTOR,
            LATENT_CHANNELS,
        )

    def to_json(self) -> dict:
        return {
            "img_height": self.img_height,
            "img_width": self.img_width,
            "batch_size": self.batch_size,
            "max_text_length": self.max_text_length,
            "context_dim": self.context_dim,
            "vocab_size": self.vocab_size,
            "timestep_dim": self.timestep_dim,
            **({"guidance_embedding_dim": self.guidance_embedding_dim} if self.guidance_embedding_dim else {}),
        }


@dataclass(frozen=True)
class HubFile:
    """A released keras-cv weight file and the sha256 keras-cv pins for it."""

    repo_id: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class ComponentSpec:
    """A component's signature and how its weights are released."""

    name: str
    description: str
    output_name: str
    splittable: bool  # only the UNet is big enough to need parts
    optional: bool = False  # converted only when asked for by name (--components), never by "all"

    def input_specs(self, dims: ModelDims) -> list[TensorSpec]:
        b, h, w = dims.batch_size, dims.img_height, dims.img_width
        if self.name == "text_encoder":
            return [
                TensorSpec("tokens", (b, dims.max_text_length), "int32"),
                TensorSpec("positions", (b, dims.max_text_length), "int32"),
            ]
        if self.name == "diffusion":
            specs = [
                TensorSpec("latent", dims.latent_shape, "float32"),
                TensorSpec("timestep_embedding", (b, dims.timestep_dim), "float32"),
                TensorSpec("context", (b, dims.max_text_length, dims.context_dim), "float32"),
            ]
            if dims.guidance_embedding_dim:  # LCM UNets: the first part's extra input
                specs.append(TensorSpec("guidance_embedding", (b, dims.guidance_embedding_dim), "float32"))
            return specs
        if self.name in ("decoder", "taesd_decoder"):
            return [TensorSpec("latent", dims.latent_shape, "float32")]
        if self.name in ("image_encoder", "taesd_encoder"):
            return [TensorSpec("image", (b, h, w, 3), "float32")]
        raise KeyError(self.name)

    def output_spec(self, dims: ModelDims) -> TensorSpec:
        b, h, w = dims.batch_size, dims.img_height, dims.img_width
        shapes = {
            "text_encoder": (b, dims.max_text_length, dims.context_dim),
            "diffusion": dims.latent_shape,
            "decoder": (b, h, w, 3),
            "image_encoder": dims.latent_shape,
            "taesd_decoder": (b, h, w, 3),
            "taesd_encoder": dims.latent_shape,
        }
        return TensorSpec(self.output_name, shapes[self.name], "float32")


COMPONENTS: dict[str, ComponentSpec] = {
    spec.name: spec
    for spec in (
        ComponentSpec("text_encoder", "CLIP text encoder: tokens, positions -> context",
                      "context", splittable=False),
        ComponentSpec("diffusion", "UNet: latent, timestep_embedding, context -> noise prediction",
                      "noise_pred", splittable=True),
        ComponentSpec("decoder", "VAE decoder: latent -> image in [-1, 1]", "image",
                      splittable=False),
        ComponentSpec("image_encoder", "VAE image encoder: image in [-1, 1] -> latent", "latent",
                      splittable=False),
        # The tiny autoencoder (TAESD / diffusers AutoencoderTiny): the VAE's interfaces at ~1/40 of its
        # work; optional, from its own files (convert/taesd.py), chosen at generate time (--vae tiny).
        ComponentSpec("taesd_decoder", "tiny VAE decoder (TAESD): latent -> image in [-1, 1]", "image",
                      splittable=False, optional=True),
        ComponentSpec("taesd_encoder", "tiny VAE image encoder (TAESD): image in [-1, 1] -> latent", "latent",
                      splittable=False, optional=True),
    )
}
# What "all" converts: every component but the optional ones.
CORE_COMPONENTS = tuple(n for n, spec in COMPONENTS.items() if not spec.optional)
# Which full-VAE component each tiny-autoencoder component stands in for.
TINY_VAE = {"decoder": "taesd_decoder", "image_encoder": "taesd_encoder"}

# What the UNet predicts: the noise (SD 1.x, SD 2.x 512-base, keras-cv) or v (SD 2.x 768-v).
PREDICTION_TYPES = ("epsilon", "v_prediction")

# What a text-to-image run calls (the image encoder only runs for image-to-image and inpainting).
PIPELINE_COMPONENTS = ("text_encoder", "diffusion", "decoder")

_FCHOLLET = "fchollet/stable-diffusion"
_SD21 = "ianstenbit/keras-sd2.1"
# sha256 values are the ones keras-cv 0.9 pins in its source.
_V1_FILES = {
    "text_encoder": HubFile(_FCHOLLET, "kcv_encoder.h5",
                            "4789e63e07c0e54d6a34a29b45ce81ece27060c499a709d556c7755b42bb0dc4"),
    "diffusion": HubFile(_FCHOLLET, "kcv_diffusion_model.h5",
                         "8799ff9763de13d7f30a683d653018e114ed24a6a819667da4f5ee10f9e805fe"),
    "decoder": HubFile(_FCHOLLET, "kcv_decoder.h5",
                       "ad350a65cc8bc4a80c8103367e039a3329b4231c2469a1093869a345f55b1962"),
    "image_encoder": HubFile(_FCHOLLET, "vae_encoder.h5",
                             "c60fb220a40d090e0f86a6ab4c312d113e115c87c40ff75d11ffcf380aab7ebb"),
}
_V2_FILES = {
    **_V1_FILES,  # SD 2.1 in keras-cv reuses the v1 VAE
    "text_encoder": HubFile(_SD21, "text_encoder_v2_1.h5",
                            "985002e68704e1c5c3549de332218e99c5b9b745db7171d5f31fcd9a6089f25b"),
    "diffusion": HubFile(_SD21, "diffusion_model_v2_1.h5",
                         "c31730e91111f98fe0e2dbde4475d381b5287ebb9672b1821796146a25c5132d"),
}


@dataclass(frozen=True)
class ModelFamily:
    name: str
    description: str
    context_dim: int
    hub_files: dict[str, HubFile] | None  # None: no released weights (tiny)
    default_weights: str
    license: str | None
    default_size: int = 512  # image side the weights are trained for: convert's default --img-height/width
    trained: str | None = None  # weights shipped in the package (sd2tflite/data/NAME/COMPONENT.weights.h5)

    def dims(self, img_height: int | None = None, img_width: int | None = None, batch_size: int = 1) -> ModelDims:
        return ModelDims(img_height or self.default_size, img_width or self.default_size, batch_size,
                         context_dim=self.context_dim)


FAMILIES: dict[str, ModelFamily] = {
    f.name: f
    for f in (
        ModelFamily("v1", "keras-cv StableDiffusion (SD 1.4)", 768, _V1_FILES, "hub",
                    "creativeml-openrail-m"),
        ModelFamily("v2", "keras-cv StableDiffusionV2 (SD 2.1)", 1024, _V2_FILES, "hub",
                    "openrail++"),
        # Trained by scripts/train_tiny.py on the shapes captions of sd2tflite/verify/shapes.py.
        ModelFamily("tiny", "v1 topology at small widths, real interfaces, trained on shapes (tests, demos)", 768,
                    None, "trained", None, default_size=128, trained="tiny"),
    )
}


def parse_components(text: str | None) -> list[str]:
    """'decoder,text_encoder' -> ['text_encoder', 'decoder'] in registry order."""
    if not text or text == "all":
        return list(CORE_COMPONENTS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        from .errors import UsageError

        raise UsageError(
            f"unknown component {unknown[0]!r}: choose from {', '.join(COMPONENTS)}"
        )
    return [n for n in COMPONENTS if n in names]
