"""The picture diffusers draws: small random-weight SD 1.x and SD 2.x diffusers pipelines (folders
written by tests/fixtures/fidelity_models.py), converted to fp32 and run by `sd2tflite generate` with
no sampler flags, against StableDiffusionPipeline's 8-bit image from the same starting latents
(tests/data/fidelity/, made once by tests/fixtures/make_fidelity_fixtures.py with torch + diffusers).

Each of the three causes that once kept imported sets off diffusers' picture is held here: undo it
and the picture falls under the bar: the tokenizer's padding (SD 2.x pads with "!", id 0), the
model's own scheduler (PNDM for SD 1.5's config, DDIM leading + offset 1 for SD 2.1's) against
keras-cv's DDIM timesteps, and rounding to 8 bits against keras-cv's truncation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd2tflite.core.manifest import load_manifest
from sd2tflite.core.metrics import parity

from .conftest import run

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
from fidelity_models import DATA, GUIDANCE, IMG, PROMPT, STEPS, write_folder  # noqa: E402

BAR_DB = 60.0  # fp32 against diffusers: the bar (1 LSB everywhere is 48 dB)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return parity(np.asarray(a, np.float64), np.asarray(b, np.float64), peak=255.0).psnr_db


@pytest.fixture(scope="module", params=["v1", "v2"])
def converted(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(f"fidelity-{family}")
    folder = write_folder(family, root / "diffusers")
    out = root / "set"
    result = run(["convert", "--weights", str(folder), "--quant", "fp32", "--components",
                  "text_encoder,diffusion,decoder", "--img-height", str(IMG), "--img-width", str(IMG), "-o", str(out),
                  "-q"])
    assert result.exit_code == 0, (result.output, result.exception)
    return family, out, dict(np.load(DATA / family / "golden.npz"))


def _generate(out: Path, tmp: Path, *extra: str) -> np.ndarray:
    png = tmp / f"image{len(list(tmp.glob('*.png')))}.png"
    result = run(["generate", str(out), PROMPT, "--noise", str(tmp / "noise.npy"), "--steps", str(STEPS),
                  "-o", str(png), "-q", *extra])
    assert result.exit_code == 0, (result.output, result.exception)
    return np.asarray(Image.open(png).convert("RGB"))


def test_generate_with_no_sampler_flags_draws_diffusers_picture(converted, tmp_path):
    family, out, golden = converted
    manifest = load_manifest(out)
    assert manifest.pixels == "round"
    assert manifest.tokenizer["pad_id"] == (0 if family == "v2" else 49407)
    assert manifest.tokenizer["source"] == "tokenizer/special_tokens_map.json"
    assert manifest.scheduler["sampler"] == ("pndm" if family == "v1" else "ddim")
    np.save(tmp_path / "noise.npy", golden["latents_nchw"])  # diffusers' NCHW latents, as a user saves them
    image = _generate(out, tmp_path)
    figure = psnr(image, golden["image"])
    print(f"{family}: {figure:.1f} dB against diffusers, max |diff| {np.abs(image.astype(int) - golden['image']).max()}")
    assert figure >= BAR_DB, figure
    png = json.loads(Image.open(next(tmp_path.glob("*.png"))).text["parameters"])
    assert png["sampler"] == manifest.scheduler["sampler"] and png["guidance"] == GUIDANCE


def test_the_tokenizer_pads_as_the_models_tokenizer_config_says(converted):
    from sd2tflite.runtime.tokenizer import load_tokenizer

    family, out, golden = converted
    tokenizer = load_tokenizer(family, None, load_manifest(out).tokenizer)
    assert tokenizer.tokens_for(PROMPT) == golden["tokens"].tolist()
    assert tokenizer.tokens_for("") == golden["empty_tokens"].tolist()


def test_each_cause_undone_falls_under_the_bar(converted, tmp_path):
    """keras-cv's DDIM timesteps, keras-cv's truncation and (SD 2.x) end-of-text padding each
    move the picture off diffusers'."""
    from sd2tflite.runtime.litert import LiteRTComponents
    from sd2tflite.runtime.pipeline import GenerateSettings, Pipeline
    from sd2tflite.runtime.tokenizer import END_TOKEN, load_tokenizer

    family, out, golden = converted
    manifest = load_manifest(out)
    noise = np.moveaxis(golden["latents_nchw"], 1, -1)
    tokenizer = load_tokenizer(family, None, manifest.tokenizer)
    pipeline = Pipeline.for_manifest(LiteRTComponents(out, manifest, release_unused=False), manifest, tokenizer)
    settings = GenerateSettings(PROMPT, steps=STEPS, seed=None, noise=noise)
    reference = pipeline.generate(settings).images[0]
    assert psnr(reference, golden["image"]) >= BAR_DB
    figures = {"keras-cv ddim": psnr(pipeline.generate(GenerateSettings(
        PROMPT, steps=STEPS, seed=None, noise=noise, sampler="ddim-kerascv")).images[0], golden["image"])}
    pipeline.pixels = "truncate"
    figures["truncation"] = psnr(pipeline.generate(settings).images[0], golden["image"])
    pipeline.pixels = "round"
    if family == "v2":
        pipeline.tokenizer = tokenizer.with_padding(END_TOKEN)
        figures["end-of-text padding"] = psnr(pipeline.generate(settings).images[0], golden["image"])
    print(family, {k: round(v, 1) for k, v in figures.items()})
    assert all(v < BAR_DB for v in figures.values()), figures


# ---------------------------------------------------------------- what convert reads (no conversion)


def _folder_with(tmp_path: Path, family: str, scheduler: dict | None = None, pad: str | None = None) -> Path:
    folder = tmp_path / family
    spec = json.loads((DATA / family / "spec.json").read_text())
    for rel, config in spec["configs"].items():
        if rel.startswith(("scheduler/", "tokenizer/")):
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if rel.startswith("scheduler/") and scheduler is not None:
                config = {**config, **scheduler}
            if rel.startswith("tokenizer/") and pad is not None:
                config = {**config, "pad_token": pad}
            path.write_text(json.dumps(config))
    return folder


def test_convert_reads_the_scheduler_and_tokenizer_configs_or_takes_the_familys(tmp_path):
    from sd2tflite.convert.checkpoint_source import SchedulerOptions, keras_cv_conventions, model_conventions

    v2 = model_conventions({"path": str(_folder_with(tmp_path, "v2"))}, "v2")
    assert (v2["scheduler"]["sampler"], v2["scheduler"]["timestep_spacing"], v2["scheduler"]["steps_offset"]) == \
        ("ddim", None, 1)
    assert v2["tokenizer"] == {"pad_token": "!", "pad_id": 0, "source": "tokenizer/special_tokens_map.json"}
    assert v2["pixels"] == "round"
    single = model_conventions({"path": str(tmp_path / "model.safetensors")}, "v2")
    assert single["tokenizer"]["pad_id"] == 0 and single["scheduler"]["scheduler_class"] == "DDIMScheduler"
    v1 = model_conventions({"path": str(tmp_path / "model.safetensors")}, "v1")
    assert v1["scheduler"]["sampler"] == "pndm" and v1["tokenizer"]["pad_id"] == 49407
    turbo = model_conventions({"path": str(_folder_with(tmp_path / "t", "v2", {
        "_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing"}))}, "v2",
        SchedulerOptions(steps=1, guidance=0.0))
    assert (turbo["scheduler"]["sampler"], turbo["scheduler"]["timestep_spacing"], turbo["scheduler"]["steps"],
            turbo["scheduler"]["guidance"]) == ("euler", "trailing", 1, 0.0)
    kcv = keras_cv_conventions()
    assert (kcv["scheduler"]["convention"], kcv["tokenizer"]["pad_id"], kcv["pixels"]) == ("keras-cv", 49407, "truncate")


@pytest.mark.parametrize("change, fragments", [
    ({"_class_name": "UniPCMultistepScheduler"}, ["scheduler 'UniPCMultistepScheduler' is not one this sd2tflite runs",
                                                  "pass --default-sampler NAME"]),
    ({"rescale_betas_zero_snr": True}, ["rescale_betas_zero_snr = True is not supported"]),
    ({"beta_schedule": "squaredcos_cap_v2"}, ["beta_schedule 'squaredcos_cap_v2' is not supported"]),
    ({"_class_name": "PNDMScheduler", "skip_prk_steps": False}, ["PNDMScheduler with skip_prk_steps = False"]),
    ({"timestep_spacing": "even"}, ["timestep spacing 'even' is unknown"]),
])
def test_a_scheduler_config_this_runtime_cannot_reproduce_is_refused_in_one_line(tmp_path, change, fragments):
    from sd2tflite.convert.checkpoint_source import model_conventions
    from sd2tflite.core.errors import UsageError

    with pytest.raises(UsageError) as info:
        model_conventions({"path": str(_folder_with(tmp_path, "v1", change))}, "v1")
    text = str(info.value)
    assert "\n" not in text and "scheduler_config.json" in text
    for fragment in fragments:
        assert fragment in text, text
