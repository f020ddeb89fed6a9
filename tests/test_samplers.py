"""Samplers: diffusers' recorded loops replayed (tests/data/samplers/, made by
tests/fixtures/make_sampler_fixtures.py), ddim equal to keras-cv's update bit for bit, image-to-image and
inpainting wiring, the ancestral noise stream, and the option errors. No model conversion."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sd2tflite.core.errors import UsageError
from sd2tflite.core.registry import ModelDims
from sd2tflite.runtime.pipeline import GenerateSettings, Pipeline
from sd2tflite.runtime.samplers import SAMPLERS, make_sampler, seeded_noise
from sd2tflite.runtime.schedule import alphas, timestep_embedding, timesteps
from sd2tflite.runtime.tokenizer import ClipTokenizer

from .conftest import assert_one_line_error, run

FIXTURES = Path(__file__).parent / "data" / "samplers"
CASES = sorted(p for p in FIXTURES.glob("*.npz") if p.stem.rsplit("-", 2)[1] in ("plain", "karras")
               and p.stem.split("-")[0] in ("euler", "dpm++2m"))  # the first fixtures: no first_latent
MORE_CASES = sorted(p for p in FIXTURES.glob("*.npz") if p not in CASES)
# diffusers' latents carry its float32 rounding of the early, large latents (|x| ~ 40 at sigma
# 14.6): measured at most 6.8e-6 of the latent's size at the same step (euler-a, 25 steps).
LATENT_TOLERANCE = 1e-5


def _parse(path: Path) -> tuple[str, str, bool, int]:
    name, prediction_type, kind, steps = path.stem.rsplit("-", 3)
    return name, prediction_type, kind == "karras", int(steps)


def test_the_fixtures_cover_every_case():
    cases = {_parse(p) for p in CASES}
    assert cases == {(n, p, k, s) for n in ("euler", "euler-a", "dpm++2m") for p in ("epsilon", "v_prediction")
                     for k in (False, True) for s in (8, 25)}
    versions = json.loads((FIXTURES / "versions.json").read_text())
    assert versions["diffusers"] and versions["torch"].startswith("2.13.0")
    assert sum(f.stat().st_size for f in FIXTURES.iterdir()) < 800_000


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_sampler_reproduces_diffusers(path):
    name, prediction_type, karras, steps = _parse(path)
    data = dict(np.load(path))
    sampler = make_sampler(name, steps, prediction_type, karras)

    # Schedule: the same timesteps (the UNet sees them as float32) and sigmas.
    if name == "dpm++2m":
        np.testing.assert_array_equal(sampler.timesteps, data["timesteps"])
    else:  # float32 spacing; Karras timesteps go through diffusers' float32 log sigmas
        assert np.abs(sampler.timesteps - data["timesteps"]).max() <= 5e-5
    assert len(sampler.sigmas) == steps + 1 and sampler.sigmas[-1] == data["sigmas"][-1] == 0
    assert np.max(np.abs(sampler.sigmas[:-1] / data["sigmas"][:-1] - 1)) <= 3e-7

    # The loop, on our own latents (errors accumulate as in a real run), diffusers' outputs and noise.
    drawn = iter(data.get("step_noise", []))
    calls = []

    def recorded_noise(shape):
        calls.append(shape)
        return next(drawn)

    latent = sampler.initial_latent(data["noise"])
    expected = data["noise"] * data["init_noise_sigma"]
    assert np.abs(latent - expected).max() <= 3e-7 * np.abs(expected).max()
    worst = 0.0
    for i in range(steps):
        model_input = sampler.scale_input(latent, i)
        assert model_input.dtype == np.float32
        recorded_input = data["model_inputs"][i]
        assert np.abs(model_input - recorded_input).max() <= LATENT_TOLERANCE * np.abs(recorded_input).max()
        latent = sampler.step(data["model_outputs"][i], i, latent, recorded_noise)
        assert latent.dtype == np.float32
        error = np.abs(latent - data["latents"][i]).max() / np.abs(data["latents"][i]).max()
        worst = max(worst, error)
        assert error <= LATENT_TOLERANCE, (i, error)
    assert len(calls) == (steps if name == "euler-a" else 0)
    assert worst > 0  # float64 against float32: never bit-equal, so the replay did run
    print(f"{path.stem}: max latent difference {worst:.2e} of the latent's size")  # the README's figures (-rP)


def _parse_more(path: Path) -> tuple[str, str, str, int]:
    name, prediction_type, kind, steps = path.stem.rsplit("-", 3)
    return name, prediction_type, kind, int(steps)


def test_the_spacing_few_step_and_img2img_fixtures_cover_every_sampler():
    cases = {_parse_more(p) for p in MORE_CASES}
    for name in ("ddim", "pndm", "euler", "euler-a", "dpm++2m"):
        for kind in ("leading", "trailing", "linspace", "img2img"):
            assert any(c[0] == name and c[2] == kind for c in cases), (name, kind)
    for name in ("lcm", "tcd"):
        assert {c[3] for c in cases if c[0] == name and c[2] == "plain"} >= {1, 4}
        assert any(c[0] == name and c[2] == "img2img" for c in cases)
    assert {c[1] for c in cases} == {"epsilon", "v_prediction"}


@pytest.mark.parametrize("path", MORE_CASES, ids=lambda p: p.stem)
def test_sampler_with_spacing_strength_and_few_steps_reproduces_diffusers(path):
    """DDIM / PNDM / Euler / Euler-a / DPM++2M with each spacing, LCM and TCD, and img2img starts,
    replayed on diffusers' recorded outputs and noise (SD 1.5's scheduler config, steps_offset 1)."""
    from sd2tflite.runtime.schedule import Schedule

    name, prediction_type, kind, steps = _parse_more(path)
    data = dict(np.load(path))
    schedule = Schedule(convention="diffusers", steps_offset=1, set_alpha_to_one=False,
                        timestep_spacing=str(data["spacing"]), scheduler_class="PNDMScheduler")
    eta = float(data["eta"]) if "eta" in data else None
    sampler = make_sampler(name, steps, prediction_type, schedule=schedule, eta=eta)
    strength = float(data["strength"])
    noise = data["noise"]
    if strength < 1:
        sampler.set_strength(strength)
        latent = sampler.add_noise(data["x0"], noise, sampler.start).astype(np.float32)
    else:
        assert sampler.start == 0
        latent = sampler.initial_latent(noise)
    np.testing.assert_allclose(latent, data["first_latent"], rtol=0, atol=1e-5 * np.abs(data["first_latent"]).max())
    run = sampler.timesteps[sampler.start:]
    assert len(run) == len(data["timesteps"])
    assert np.abs(run - data["timesteps"]).max() <= 1e-3 * max(1.0, float(np.abs(data["timesteps"]).max()))

    drawn = iter(data["step_noise"])
    calls = []

    def recorded_noise(shape):
        calls.append(shape)
        return next(drawn)

    for i, index in enumerate(range(sampler.start, len(sampler.timesteps))):
        model_input = sampler.scale_input(latent, index)
        recorded = data["model_inputs"][i]
        assert np.abs(model_input - recorded).max() <= LATENT_TOLERANCE * np.abs(recorded).max(), i
        latent = sampler.step(data["model_outputs"][i], index, latent, recorded_noise)
        assert latent.dtype == np.float32
        error = np.abs(latent - data["latents"][i]).max() / np.abs(data["latents"][i]).max()
        assert error <= LATENT_TOLERANCE, (i, error)
    assert len(calls) == len(data["step_noise"])  # the same draws, in the same places


def test_pndm_runs_plms_with_one_extra_call_and_lcm_spaces_over_its_distillation_schedule():
    from sd2tflite.runtime.schedule import Schedule

    sd15 = Schedule(convention="diffusers", steps_offset=1, set_alpha_to_one=False)
    assert list(make_sampler("pndm", 4, "epsilon", schedule=sd15).timesteps) == [751, 501, 501, 251, 1]
    assert list(make_sampler("ddim", 4, "epsilon", schedule=sd15).timesteps) == [751, 501, 251, 1]
    assert list(make_sampler("ddim", 4, "epsilon", schedule=sd15, spacing="trailing").timesteps) == [999, 749, 499, 249]
    assert list(make_sampler("lcm", 4, "epsilon", schedule=sd15).timesteps) == [999, 759, 499, 259]
    assert list(make_sampler("euler", 1, "epsilon", schedule=sd15, spacing="trailing").timesteps) == [999]
    # keras-cv sets keep keras-cv's ddim unless a spacing is asked for
    assert type(make_sampler("ddim", 4, "epsilon")).__name__ == "KerasCvDdim"
    assert type(make_sampler("ddim", 4, "epsilon", spacing="leading")).__name__ == "Ddim"
    with pytest.raises(UsageError, match="--steps 8 x --strength 0.1 leaves no step to run"):
        make_sampler("euler", 8, "epsilon", schedule=sd15).set_strength(0.1)
    with pytest.raises(UsageError, match="--spacing 'even' is unknown"):
        make_sampler("euler", 8, "epsilon", spacing="even")
    with pytest.raises(UsageError, match="--eta 1.5 must be in"):
        make_sampler("tcd", 4, "epsilon", eta=1.5)
    with pytest.raises(UsageError, match="--steps 60 is more than this model's distillation schedule"):
        make_sampler("lcm", 60, "epsilon")


def test_guidance_embedding_is_diffusers_get_guidance_scale_embedding():
    """diffusers' LatentConsistencyModelPipeline.get_guidance_scale_embedding(w - 1, 8), values
    recorded from diffusers 0.42.1 (w = 8.5)."""
    from sd2tflite.runtime.schedule import guidance_scale_embedding

    emb = guidance_scale_embedding(8.5, 2, 8)
    assert emb.shape == (2, 8) and emb.dtype == np.float32
    w = 7.5 * 1000.0
    freqs = np.exp(-np.log(10000.0) / 3 * np.arange(4))
    expected = np.concatenate([np.sin(w * freqs), np.cos(w * freqs)])
    np.testing.assert_allclose(emb[0], expected, atol=2e-3)  # float32 arguments up to 7500: ~1e-3
    np.testing.assert_array_equal(emb[0], emb[1])
    assert np.allclose(guidance_scale_embedding(1.0, 1, 8)[0], [0, 0, 0, 0, 1, 1, 1, 1])


# ---------------------------------------------------------------- ddim: keras-cv's update, unchanged


def _keras_cv_loop(predict, noise, settings: GenerateSettings, prediction_type: str, known=None, latent_mask=None):
    """The update loop as pipeline.py had it before samplers existed (keras-cv's `generate_image`)."""
    schedule = timesteps(settings.steps)
    alpha, alpha_prev = alphas(schedule)
    strength = settings.strength if settings.strength is not None else 1.0
    first = len(schedule) - 1
    if known is not None:
        first = max(0, round(len(schedule) * strength) - 1)
        if strength >= 1.0 and latent_mask is not None:
            latent = noise
        else:
            latent = (math.sqrt(alpha[first]) * known + math.sqrt(1 - alpha[first]) * noise).astype(np.float32)
    else:
        latent = noise
    for index in range(first, -1, -1):
        latent_prev = latent
        output = predict(latent, schedule[index])
        a_t, a_prev = alpha[index], alpha_prev[index]
        if prediction_type == "v_prediction":
            eps = math.sqrt(a_t) * output + math.sqrt(1 - a_t) * latent_prev
        else:
            eps = output
        pred_x0 = (latent_prev - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        latent = eps * math.sqrt(1.0 - a_prev) + math.sqrt(a_prev) * pred_x0
        if latent_mask is not None:
            known_t = math.sqrt(a_prev) * known + math.sqrt(1.0 - a_prev) * noise
            latent = latent_mask * latent + (1.0 - latent_mask) * known_t
        latent = latent.astype(np.float32)
    return latent


DIMS = ModelDims(img_height=32, img_width=48, batch_size=2)
_RNG = np.random.default_rng(7)
_MIX = _RNG.normal(size=(4, 4)).astype(np.float32)
IMAGE = _RNG.uniform(-1, 1, (32, 48, 3)).astype(np.float32)
MASK = np.zeros((32, 48), np.float32)
MASK[8:24, 16:40] = 1.0


class FakeComponents(dict):
    """Deterministic numpy stand-ins; the UNet records what it is fed."""

    def __init__(self):
        super().__init__(text_encoder=self.text, diffusion=self.unet, decoder=self.decoder, image_encoder=self.encoder)
        self.fed: list[tuple[np.ndarray, np.ndarray]] = []

    @staticmethod
    def text(tokens, positions):
        return {"context": np.sin(tokens[:, :, None] * 0.01 + np.arange(DIMS.context_dim)).astype(np.float32)}

    def unet(self, latent, timestep_embedding, context):
        self.fed.append((latent, timestep_embedding))
        bias = timestep_embedding[:, None, None, :4] + context[:, None, :1, :4]
        return {"noise_pred": np.tanh(latent @ _MIX + bias).astype(np.float32)}

    @staticmethod
    def decoder(latent):
        return {"image": np.tanh(np.repeat(np.repeat(latent[..., :3], 8, 1), 8, 2))}

    @staticmethod
    def encoder(image):
        return {"latent": np.repeat(image[:, ::8, ::8, :1], 4, -1).astype(np.float32)}


def _pipeline(prediction_type: str = "epsilon") -> tuple[Pipeline, FakeComponents]:
    components = FakeComponents()
    return Pipeline(components, DIMS, ClipTokenizer.generated(), prediction_type), components


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [1, 7, 25])
@pytest.mark.parametrize("mode", ["text", "img2img", "inpaint", "inpaint-full"])
def test_ddim_through_the_sampler_interface_is_keras_cvs_update_bit_for_bit(prediction_type, steps, mode):
    extra = {"text": {}, "img2img": {"image": IMAGE, "strength": 0.6},
             "inpaint": {"image": IMAGE, "mask": MASK, "strength": 0.7}, "inpaint-full": {"image": IMAGE, "mask": MASK}}
    settings = GenerateSettings("a red circle", steps=steps, guidance=7.5, seed=3, **extra[mode])
    pipeline, _ = _pipeline(prediction_type)
    result = pipeline.generate(settings)

    reference, components = _pipeline(prediction_type)
    context = reference.encode_text(settings.prompt)
    unconditional = reference.encode_text("")

    def predict(latent, t):
        t_emb = timestep_embedding(t, DIMS.batch_size, DIMS.timestep_dim)
        uncond = components.unet(latent, t_emb, unconditional)["noise_pred"]
        cond = components.unet(latent, t_emb, context)["noise_pred"]
        return uncond + settings.guidance * (cond - uncond)

    known = reference.encode_image(IMAGE) if mode != "text" else None
    from sd2tflite.runtime.pipeline import latent_mask

    repaint = latent_mask(MASK, DIMS) if "inpaint" in mode else None
    expected = _keras_cv_loop(predict, result.noise, settings, prediction_type, known, repaint)
    assert np.array_equal(result.latents, expected)
    assert np.abs(result.latents).max() > 0.1


# ---------------------------------------------------------------- the pipeline with the new samplers


@pytest.mark.parametrize("name", ["euler", "euler-a", "dpm++2m"])
def test_image_to_image_starts_at_the_first_step_runs_noise_level(name):
    pipeline, components = _pipeline()
    settings = GenerateSettings("a red circle", steps=8, seed=5, image=IMAGE, strength=0.5, sampler=name, karras=True)
    result = pipeline.generate(settings)
    sampler = make_sampler(name, 8, "epsilon", karras=True)
    start = 4  # round(8 * 0.5) steps run: the last four
    known = pipeline.encode_image(IMAGE)
    first_latent = sampler.add_noise(known, result.noise, start).astype(np.float32)
    fed_latents = [f[0] for f in components.fed[::2]]  # unconditional and conditional calls share the input
    assert len(fed_latents) == 4
    np.testing.assert_array_equal(fed_latents[0], sampler.scale_input(first_latent, start))
    for (_, t_emb), t in zip(components.fed[::2], sampler.timesteps[start:]):
        np.testing.assert_array_equal(t_emb, timestep_embedding(t, DIMS.batch_size, DIMS.timestep_dim))
    if name != "dpm++2m":  # sigma space: x0 + sigma * noise
        np.testing.assert_allclose(first_latent, known + result.noise * sampler.sigmas[start], rtol=0, atol=1e-6)
    else:  # variance preserving: alpha x0 + sigma_t noise
        sigma = sampler.sigmas[start]
        expected = (known + result.noise * sigma) / math.sqrt(sigma**2 + 1)
        np.testing.assert_allclose(first_latent, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["euler", "euler-a", "dpm++2m"])
@pytest.mark.parametrize("strength", [None, 0.6])
def test_inpainting_ends_on_the_image_outside_the_mask(name, strength):
    pipeline, _ = _pipeline()
    result = pipeline.generate(GenerateSettings("a red circle", steps=6, seed=2, image=IMAGE, mask=MASK,
                                                strength=strength, sampler=name))
    from sd2tflite.runtime.pipeline import latent_mask

    keep = latent_mask(MASK, DIMS)[0, :, :, 0] == 0
    known = pipeline.encode_image(IMAGE)
    np.testing.assert_array_equal(result.latents[:, keep], known[:, keep])
    assert np.abs(result.latents[:, ~keep] - known[:, ~keep]).max() > 0.05  # the masked region was repainted


def test_ancestral_noise_is_a_stream_of_the_runs_starting_noise():
    noise = np.random.default_rng(0).standard_normal((1, 2, 2, 4)).astype(np.float32)
    a = seeded_noise(noise)((1, 2, 2, 4))
    np.testing.assert_array_equal(a, seeded_noise(noise.copy())((1, 2, 2, 4)))
    assert a.dtype == np.float32 and np.abs(a - noise).min() > 0  # not the starting noise again
    assert not np.array_equal(a, seeded_noise(noise + 1)((1, 2, 2, 4)))

    pipeline, _ = _pipeline()
    one, two, other = (pipeline.generate(GenerateSettings("x", steps=4, seed=s, sampler="euler-a")).latents
                       for s in (0, 0, 1))
    assert np.array_equal(one, two) and np.abs(one - other).max() > 0.1
    # --noise reproduces the seeded run that drew it, ancestral noise included.
    from_noise = pipeline.generate(GenerateSettings("x", steps=4, seed=None, noise=pipeline.starting_noise(
        GenerateSettings("x", seed=0)), sampler="euler-a")).latents
    np.testing.assert_array_equal(from_noise, one)
    deterministic = pipeline.generate(GenerateSettings("x", steps=4, seed=0, sampler="euler")).latents
    assert np.abs(one - deterministic).max() > 0.01  # the ancestral noise did change the run


def test_karras_changes_the_schedule_and_ddim_refuses_it():
    plain, karras = make_sampler("euler", 8, "epsilon"), make_sampler("euler", 8, "epsilon", karras=True)
    assert plain.sigmas[0] == pytest.approx(karras.sigmas[0]) and plain.sigmas[-2] == pytest.approx(karras.sigmas[-2])
    assert karras.sigmas[4] < plain.sigmas[4] * 0.7  # Karras spends more steps at low noise
    assert karras.timesteps[1] != round(karras.timesteps[1])  # fractional timesteps
    with pytest.raises(UsageError, match="--karras does not apply to --sampler ddim"):
        _pipeline()[0].resolve(GenerateSettings("x", karras=True))  # the set's default sampler: ddim
    with pytest.raises(UsageError, match="--karras does not apply to --sampler pndm"):
        GenerateSettings("x", sampler="pndm", karras=True)
    with pytest.raises(UsageError, match="--sampler 'heun' is unknown: use one of ddim, euler, euler-a, dpm\\+\\+2m"):
        GenerateSettings("x", sampler="heun")
    assert list(SAMPLERS) == ["ddim", "euler", "euler-a", "dpm++2m", "pndm", "lcm", "tcd", "ddim-kerascv"]


def test_cli_sampler_defaults_are_the_library_defaults():
    from sd2tflite.cli.app import generate
    from sd2tflite.runtime.samplers import DEFAULT_SAMPLER

    parsed = generate.make_context("generate", ["set", "prompt"]).params
    assert (parsed["sampler"], parsed["karras"]) == (None, False) == (GenerateSettings("x").sampler,
                                                                       GenerateSettings("x").karras)
    assert _pipeline()[0].resolve(GenerateSettings("x")).sampler == DEFAULT_SAMPLER  # keras-cv sets


@pytest.mark.parametrize("args, fragments", [
    (["--sampler", "tcd", "--karras"], ["--karras does not apply to --sampler tcd", "--sampler euler, euler-a, dpm++2m"]),
    (["--sampler", "ddim", "--karras"], ["--karras does not apply"]),
    (["--sampler", "heun"], ["--sampler 'heun' is unknown", "ddim, euler, euler-a, dpm++2m, pndm, lcm, tcd"]),
])
def test_cli_sampler_errors_are_one_line_and_come_before_the_set_is_read(tmp_path, args, fragments):
    result = run(["generate", str(tmp_path / "no-such-set"), "a red circle", "-o", str(tmp_path / "o.png"), *args])
    assert_one_line_error(result, 2, *fragments)
    assert not (tmp_path / "o.png").exists()


# ---------------------------------------------------------------- the model's own scheduler, guidance, pixels


def _diffusers_pipeline(**schedule) -> tuple[Pipeline, FakeComponents]:
    from sd2tflite.runtime.schedule import Schedule

    components = FakeComponents()
    fields = {"convention": "diffusers", "steps_offset": 1, "set_alpha_to_one": False, **schedule}
    return Pipeline(components, DIMS, ClipTokenizer.generated(), "epsilon", Schedule(**fields), "round"), components


def test_generate_defaults_to_the_models_own_scheduler_and_its_recommendations():
    pipeline, components = _diffusers_pipeline(sampler="pndm", scheduler_class="PNDMScheduler")
    resolved = pipeline.resolve(GenerateSettings("x"))
    assert (resolved.sampler, resolved.steps, resolved.guidance) == ("pndm", 25, 7.5)
    pipeline.generate(GenerateSettings("x", steps=4))
    assert len(components.fed) == 2 * 5  # PLMS: steps + 1 calls, both guidance branches
    fed_t = [float(np.arccos(np.clip(e[0, 0], -1, 1))) for _, e in components.fed[::2]]  # cos(t * 1) at freq 0
    assert len(fed_t) == 5
    # SD-Turbo as converted with its recommendation: euler trailing, 1 step, guidance 0: one UNet call
    turbo, calls = _diffusers_pipeline(sampler="euler", timestep_spacing="trailing", steps=1, guidance=0.0)
    result = turbo.generate(GenerateSettings("x"))
    assert len(calls.fed) == 1 and result.settings.steps == 1 and result.settings.guidance == 0.0
    np.testing.assert_array_equal(calls.fed[0][1], timestep_embedding(999.0, DIMS.batch_size, DIMS.timestep_dim))
    # --sampler / --steps / --guidance still override
    over = turbo.resolve(GenerateSettings("x", sampler="ddim", steps=3, guidance=5.0))
    assert (over.sampler, over.steps, over.guidance) == ("ddim", 3, 5.0)


@pytest.mark.parametrize("guidance, calls_per_step", [(7.5, 2), (1.0, 1), (0.0, 1), (1.01, 2)])
def test_guidance_at_most_one_skips_the_unconditional_call(guidance, calls_per_step):
    pipeline, components = _pipeline()
    seen = []
    pipeline.encode_text = lambda prompt: (seen.append(prompt), FakeComponents.text(
        np.zeros((DIMS.batch_size, DIMS.max_text_length), np.int32), None)["context"] + len(prompt))[1]
    result = pipeline.generate(GenerateSettings("a red circle", steps=3, guidance=guidance, sampler="euler"))
    assert len(components.fed) == 3 * calls_per_step
    assert seen == (["a red circle", ""] if calls_per_step == 2 else ["a red circle"])
    if calls_per_step == 1:  # the conditional prediction alone, not uncond + g * (cond - uncond)
        reference, _ = _pipeline()
        reference.encode_text = pipeline.encode_text
        cond_only = reference.generate(GenerateSettings("a red circle", steps=3, guidance=1.0, sampler="euler"))
        np.testing.assert_array_equal(result.latents, cond_only.latents)


def test_an_lcm_unet_takes_guidance_through_its_embedding_once_per_step():
    from sd2tflite.runtime.schedule import guidance_scale_embedding

    pipeline, components = _diffusers_pipeline(sampler="lcm", scheduler_class="LCMScheduler")
    fed = []

    def unet(latent, timestep_embedding, context, guidance_embedding):
        fed.append(guidance_embedding)
        return components.unet(latent, timestep_embedding, context)

    components["diffusion"] = unet
    pipeline.guidance_embedding_dim = 8
    result = pipeline.generate(GenerateSettings("x"))
    assert (result.settings.sampler, result.settings.steps, result.settings.guidance) == ("lcm", 4, 8.5)
    assert len(fed) == 4  # no classifier-free guidance: one call per step
    np.testing.assert_array_equal(fed[0], guidance_scale_embedding(8.5, DIMS.batch_size, 8))
    assert pipeline.sampler_notes(result.settings) == []


def test_lcm_on_a_model_not_distilled_for_it_runs_and_says_what_its_config_recommends():
    pipeline, _ = _diffusers_pipeline(sampler="pndm")
    notes = pipeline.sampler_notes(pipeline.resolve(GenerateSettings("x", sampler="lcm")))
    assert len(notes) == 1 and "recommends pndm" in notes[0]
    assert pipeline.generate(GenerateSettings("x", sampler="lcm", steps=2)).latents.shape == DIMS.latent_shape


def test_steps_times_strength_below_one_is_refused_before_any_model_runs():
    pipeline, components = _diffusers_pipeline(sampler="pndm")
    with pytest.raises(UsageError, match=r"--steps 4 x --strength 0.2 leaves no step to run: raise --steps to at "
                                         r"least 5 or --strength to at least 0.25"):
        pipeline.generate(GenerateSettings("x", steps=4, image=IMAGE, strength=0.2))
    assert components.fed == []
    # diffusers keeps int(steps x strength) steps: 10 x 0.55 -> 5 (PLMS: from index 5 of its 11 timesteps)
    pipeline.generate(GenerateSettings("x", steps=10, image=IMAGE, strength=0.55))
    assert len(components.fed) == 2 * 6


def test_pixels_are_rounded_as_diffusers_rounds_them_on_imported_sets_and_truncated_on_keras_cv_sets():
    from sd2tflite.runtime.pipeline import to_pixels

    decoded = np.array([-1.0, -0.999, 0.0, 0.5, 0.999, 1.0, 1.5], np.float32)
    np.testing.assert_array_equal(to_pixels(decoded, "truncate"), [0, 0, 127, 191, 254, 255, 255])
    np.testing.assert_array_equal(to_pixels(decoded, "round"), [0, 0, 128, 191, 255, 255, 255])
    with pytest.raises(UsageError, match="pixel rule 'floor' is unknown"):
        Pipeline(FakeComponents(), DIMS, ClipTokenizer.generated(), pixels="floor")


def test_the_tokenizer_pads_as_the_manifest_says():
    from sd2tflite.runtime.tokenizer import END_TOKEN, load_tokenizer, pad_id_of

    plain = load_tokenizer("tiny")
    sd2 = load_tokenizer("tiny", record={"pad_token": "!", "pad_id": 0})
    ids = plain.encode("a red circle")
    assert plain.tokens_for("a red circle", 12) == ids + [END_TOKEN] * (12 - len(ids))
    assert sd2.tokens_for("a red circle", 12) == ids + [0] * (12 - len(ids))  # open_clip's padding
    assert pad_id_of("!") == 0 and pad_id_of("<|endoftext|>") == END_TOKEN
    with pytest.raises(UsageError, match="pad token '<pad>' is not one CLIP's vocabulary pads with"):
        pad_id_of("<pad>")


def test_noise_in_diffusers_nchw_layout_is_transposed_and_other_shapes_refused():
    from sd2tflite.runtime.generate import _noise_layout

    nchw = np.arange(1 * 4 * 6 * 5, dtype=np.float32).reshape(1, 4, 6, 5)
    noise, note = _noise_layout(nchw, (1, 6, 5, 4), "n.npy")
    np.testing.assert_array_equal(noise, np.moveaxis(nchw, 1, -1))
    assert "NCHW [1, 4, 6, 5]" in note and "transposed" in note
    same, none = _noise_layout(noise, (1, 6, 5, 4), "n.npy")
    assert none is None and same is noise
    with pytest.raises(UsageError, match=r"--noise n.npy has shape \[1, 3, 6, 5\], this set needs NHWC \[1, 6, 5, 4\]"):
        _noise_layout(np.zeros((1, 3, 6, 5), np.float32), (1, 6, 5, 4), "n.npy")
