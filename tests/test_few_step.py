"""Few-step models against diffusers: LCM UNets (the guidance embedding input), LCM / TCD / Hyper-SD style
LoRAs that touch convolutions, Turbo-style (SD 2.x) sets, and the end-to-end few-step runs.

Fixtures: tests/data/few_step/ (made by tests/fixtures/make_few_step_fixtures.py in a torch venv; no
torch here). Goldens without suffix use keras-cv's numerics (held tight: the mapping); `*_exact` are
diffusers as it is (held to keras-cv's own deviation), as in tests/test_checkpoint.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sd2tflite.convert.checkpoint import open_checkpoint
from sd2tflite.core.errors import WeightsError

from .conftest import assert_one_line_error, run
from .goldens import check, load_golden

DATA = Path(__file__).resolve().parent / "data" / "few_step"
LCM = DATA / "lcm" / "diffusers"
TAESD = DATA / "taesd" / "diffusers"
LORA = DATA / "lora"
H, W = 128, 128  # convert's smallest size


def golden(name: str) -> dict[str, np.ndarray]:
    return load_golden(DATA / name / "golden.npz")


def fixture(name: str) -> dict:
    return json.loads((DATA / name / "fixture.json").read_text())


@pytest.fixture(scope="module")
def turbo(tmp_path_factory) -> Path:
    """The Turbo-style folder with the LCM folder's VAE (committed once)."""
    folder = tmp_path_factory.mktemp("turbo") / "diffusers"
    shutil.copytree(DATA / "turbo" / "diffusers", folder)
    shutil.copytree(LCM / "vae", folder / "vae")
    return folder


def unet_inputs(g: dict, t: int, w: float | None) -> dict:
    feed = {"latent": g["unet_latent"], "timestep_embedding": g[f"timestep_embedding_{t}"],
            "context": g["unet_context"]}
    if w is not None:
        feed["guidance_embedding"] = g[f"guidance_embedding_{w}"]
    return feed


def check_lcm_unet(model, g: dict, prefix: str, label: str, exact: bool = True):
    from sd2tflite.convert.keras_models import call_keras

    for t in fixture("lcm")["timesteps"]:
        for w in fixture("lcm")["guidance"]:
            out = call_keras(model, unet_inputs(g, t, w))[0]
            key = f"{prefix}_{t}_{w}"
            check(f"{label} t={t} w={w}", out, g[key], exact=g[f"{key}_exact"] if exact else None)


# ---------------------------------------------------------------- import


def test_lcm_unet_takes_the_guidance_embedding():
    from sd2tflite.runtime.schedule import guidance_scale_embedding

    ckpt = open_checkpoint(LCM)
    assert ckpt.family == "v1" and ckpt.architecture.unet.time_cond_proj_dim == 32
    model = ckpt.build("diffusion", H, W)
    assert [t.name.split(":")[0] for t in model.inputs][-1] == "guidance_embedding"
    g = golden("lcm")
    check_lcm_unet(model, g, "unet", "LCM diffusers folder")
    # the embedding the runtime feeds is the one LatentConsistencyModelPipeline makes, to float32's
    # resolution of sin((w - 1) * 1000 * f): an argument of 7000 carries ~4e-4 of rounding
    for w in fixture("lcm")["guidance"]:
        np.testing.assert_allclose(guidance_scale_embedding(w, 1, 32), g[f"guidance_embedding_{w}"], atol=5e-4)


def test_lcm_unet_as_a_lone_file_override():
    """LCM UNets ship as one diffusers-named UNet file (LCM_Dreamshaper_v7_4k.safetensors) next to a base."""
    ckpt = open_checkpoint(LCM, overrides={"unet": LCM / "unet" / "diffusion_pytorch_model.safetensors"})
    assert ckpt.architecture.unet.time_cond_proj_dim == 32
    check_lcm_unet(ckpt.build("diffusion", H, W), golden("lcm"), "unet", "LCM UNet override", exact=False)


@pytest.mark.parametrize("fmt", ["kohya", "kohya_ldm", "peft"])
def test_conv_loras_match_diffusers_fuse(fmt):
    """kohya names + alpha (LCM-LoRA, Hyper-SD), the same in the original UNet's names (input_blocks_1_1_...;
    its golden is the kohya one: the fixture script checks that merging it into the original-named UNet and
    converting with diffusers' single-file converter equals diffusers' fuse_lora of the kohya file) and PEFT
    names (TCD-LoRA), incl. 3x3 conv LoRAs."""
    g = golden("lora")
    scale = float(g["scale"])
    ckpt = open_checkpoint(LCM, loras=[(LORA / f"lora_{fmt}.safetensors", scale)])
    lora = ckpt.loras[0]
    if fmt == "kohya_ldm":
        keys = [k for m in lora.modules.values() for k in m.keys]
        assert any(k.startswith("lora_unet_output_blocks_1_1_conv.") for k in keys)  # up_blocks.0's upsampler
        assert {m.module for m in lora.modules.values()} == \
            {m.module for m in open_checkpoint(LCM, loras=[(LORA / "lora_kohya.safetensors", 1.0)]).loras[0].modules.values()}
        fmt = "kohya"
    kinds = {len(m.down.shape) and m.down.shape[2:] for m in lora.modules.values()}
    assert (3, 3) in kinds and (1, 1) in kinds and () in kinds  # 3x3 convs, 1x1 convs, linears
    assert any(m.module.endswith("time_emb_proj") for m in lora.modules.values())
    g.update({k: v for k, v in golden("lcm").items() if k.startswith(("unet_latent", "unet_context", "timestep_",
                                                                        "guidance_"))})
    check_lcm_unet(ckpt.build("diffusion", H, W), g, f"{fmt}_unet", f"LoRA {fmt}")


def test_turbo_folder(turbo):
    from sd2tflite.convert.keras_models import call_keras

    ckpt = open_checkpoint(turbo)
    assert ckpt.family == "v2" and ckpt.architecture.unet.time_cond_proj_dim == 0
    model = ckpt.build("diffusion", H, W)
    assert "guidance_embedding" not in [t.name.split(":")[0] for t in model.inputs]
    g = golden("turbo")
    for t in fixture("turbo")["timesteps"]:
        check(f"turbo t={t}", call_keras(model, unet_inputs(g, t, None))[0], g[f"unet_{t}"],
              exact=g[f"unet_{t}_exact"])


# ---------------------------------------------------------------- LoRAs for another architecture


def _lora_file(path: Path, tensors: dict) -> Path:
    from safetensors.numpy import save_file

    save_file({k: np.asarray(v, np.float16) for k, v in tensors.items()}, str(path))
    return path


def _lora_tensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_a_lora_for_another_architecture_is_refused(tmp_path, turbo):
    # the SD 1.x-style LoRA (32-d cross-attention, conv projections) on the SD 2.x-style model (64-d,
    # linear projections): the same module names, other shapes
    with pytest.raises(WeightsError, match="LoRA for another model.*made for this model's family"):
        open_checkpoint(turbo, loras=[(LORA / "lora_kohya.safetensors", 1.0)])
    # SDXL, UNet only (kohya's sgm names: several transformer blocks per attention)
    sdxl = _lora_file(tmp_path / "sdxl.safetensors", {
        f"lora_unet_input_blocks_4_1_transformer_blocks_{i}_attn1_to_q.lora_{d}.weight": np.zeros((4, 4))
        for i in (0, 1) for d in ("down", "up")})
    with pytest.raises(WeightsError, match="SDXL LoRA"):
        open_checkpoint(LCM, loras=[(sdxl, 1.0)])
    # SDXL with its two text encoders
    sdxl_te = _lora_file(tmp_path / "sdxl_te.safetensors", {
        f"lora_te{i}_text_model_encoder_layers_0_mlp_fc1.lora_{d}.weight": np.zeros((4, 32) if d == "down" else (128, 4))
        for i in (1, 2) for d in ("down", "up")})
    with pytest.raises(WeightsError, match="SDXL LoRA"):
        open_checkpoint(LCM, loras=[(sdxl_te, 1.0)])
    # `lora_te1_` alone (no second text encoder) is the one text encoder, as diffusers reads it
    te1 = _lora_file(tmp_path / "te1.safetensors", {
        k.replace("lora_te2_", "lora_te1_"): v for k, v in _lora_tensors(sdxl_te).items() if "lora_te2_" in k})
    assert [m.module for m in open_checkpoint(LCM, loras=[(te1, 1.0)]).loras[0].modules.values()] == \
        ["encoder.layers.0.mlp.fc1"]


@pytest.mark.parametrize("name, fragment", [("sd2", "LoRA for another model"), ("sdxl", "SDXL LoRA")])
def test_convert_refuses_a_lora_for_another_architecture(tmp_path, turbo, name, fragment):
    if name == "sdxl":
        lora = _lora_file(tmp_path / "sdxl.safetensors", {
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": np.zeros((4, 32)),
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": np.zeros((128, 4))})
        weights = LCM
    else:
        lora, weights = LORA / "lora_kohya.safetensors", turbo
    out = tmp_path / "set"
    result = run(["convert", "--weights", str(weights), "--lora", f"{lora}:0.5", "--components", "diffusion",
                  "--img-height", "128", "--img-width", "128", "--quant", "fp32", "-o", str(out)])
    assert_one_line_error(result, 1, fragment, "made for this model's family")
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------- the converted LCM UNet


@pytest.fixture(scope="module")
def lcm_unet_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("lcm") / "set"
    result = run(["convert", "--weights", f"{LCM},taesd={TAESD}", "--quant", "fp32",
                  "--components", "diffusion,decoder,taesd_decoder,taesd_encoder",
                  "--img-height", str(H), "--img-width", str(W), "-q", "-o", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    return out


def test_the_converted_lcm_unet_has_the_guidance_input(lcm_unet_set):
    from sd2tflite.core.manifest import load_manifest
    from sd2tflite.runtime.litert import LiteRTComponents

    manifest = load_manifest(lcm_unet_set)
    assert manifest.model_dims.guidance_embedding_dim == 32
    first = manifest.parts_of("diffusion")[0]
    assert [s.shape for s in first.inputs if s.name == "guidance_embedding"] == [(1, 32)]
    components = LiteRTComponents(lcm_unet_set, manifest)
    g = golden("lcm")
    for t in fixture("lcm")["timesteps"]:
        for w in fixture("lcm")["guidance"]:
            out = components["diffusion"](**unet_inputs(g, t, w))["noise_pred"]
            check(f"LCM fp32 file t={t} w={w}", out, g[f"unet_{t}_{w}"], tol=1e-4)


# ---------------------------------------------------------------- the tiny autoencoder (TAESD)


@pytest.fixture(scope="module")
def madebyollin(tmp_path_factory) -> Path:
    """The fixture's weights in madebyollin/taesd's naming: the encoder's Sequential indices as they are,
    the decoder's shifted by one (its Sequential starts with a Clamp)."""
    from safetensors.numpy import save_file

    from sd2tflite.convert.checkpoint.reader import SafetensorsFile

    folder = tmp_path_factory.mktemp("taesd")
    f = SafetensorsFile(TAESD / "diffusion_pytorch_model.safetensors")
    enc, dec = {}, {}
    for key in f.keys():
        part, _, index, rest = key.split(".", 3)
        x = f.get(key).astype(np.float16)
        if part == "encoder":
            enc[f"{index}.{rest}"] = x
        else:
            dec[f"{int(index) + 1}.{rest}"] = x
    save_file(enc, str(folder / "taesd_encoder.safetensors"))
    save_file(dec, str(folder / "taesd_decoder.safetensors"))
    return folder


def _taesd_check(vae, label: str):
    from sd2tflite.convert.keras_models import call_keras

    g = golden("taesd")
    if vae.has("taesd_decoder"):
        out = call_keras(vae.build("taesd_decoder", H, W), {"latent": g["latent"]})[0]
        check(f"{label} decoder", out, g["decoder"])
    if vae.has("taesd_encoder"):
        out = call_keras(vae.build("taesd_encoder", H, W), {"image": g["image"]})[0]
        check(f"{label} encoder", out, g["image_encoder"])


def test_taesd_diffusers_folder_matches_autoencoder_tiny():
    from sd2tflite.convert.taesd import open_taesd

    vae = open_taesd(TAESD)
    assert vae.layout == "diffusers" and vae.arch.num_encoder_blocks == (1, 2, 1, 1)
    assert vae.arch.scaling_factor == 1.0 and vae.arch.latent_magnitude == 3
    _taesd_check(vae, "TAESD diffusers folder")


def test_taesd_madebyollin_files(madebyollin):
    from sd2tflite.convert.taesd import open_taesd

    both = open_taesd(madebyollin)  # no config: the structure comes from the tensors
    assert both.layout == "madebyollin" and both.arch.num_decoder_blocks == (1, 1, 2, 1)
    assert both.arch.num_encoder_blocks == (1, 2, 1, 1) and both.arch.encoder_block_out_channels == (32,) * 4
    _taesd_check(both, "TAESD madebyollin folder")
    decoder = open_taesd(madebyollin / "taesd_decoder.safetensors")
    assert decoder.has("taesd_decoder") and not decoder.has("taesd_encoder")
    _taesd_check(decoder, "TAESD madebyollin decoder file")
    with pytest.raises(WeightsError, match="no TAESD encoder weights"):
        decoder.build("taesd_encoder", H, W)


def test_taesd_bad_inputs(tmp_path):
    from sd2tflite.convert.taesd import open_taesd

    (tmp_path / "taesd_decoder.pth").write_bytes(b"\x80\x02")
    with pytest.raises(WeightsError, match="pickled"):
        open_taesd(tmp_path / "taesd_decoder.pth")
    with pytest.raises(WeightsError, match="full VAE"):
        open_taesd(LCM / "vae" / "diffusion_pytorch_model.safetensors")


def test_the_converted_set_holds_the_tiny_autoencoder(lcm_unet_set):
    from sd2tflite.core.manifest import load_manifest
    from sd2tflite.runtime.litert import LiteRTComponents

    manifest = load_manifest(lcm_unet_set)
    assert manifest.weights["taesd_decoder"]["taesd"]["layout"] == "diffusers"
    assert manifest.weights["taesd_decoder"]["taesd"]["files"][0]["sha256"]
    components = LiteRTComponents(lcm_unet_set, manifest)
    g = golden("taesd")
    check("TAESD decoder fp32 file", components["taesd_decoder"](latent=g["latent"])["image"], g["decoder"])
    check("TAESD encoder fp32 file", components["taesd_encoder"](image=g["image"])["latent"], g["image_encoder"])


@pytest.mark.parametrize("quant", ["fp16", "dynamic", "int8", "int8-strict", "int16x8"])
def test_taesd_converts_and_verifies_in_every_precision(tmp_path, quant):
    """Both TAESD components in each precision but fp32 (test_the_converted_set_holds_the_tiny_autoencoder),
    calibrated ones on their synthetic samples here; verify holds each file to the float Keras model
    with the precision's bars."""
    out = tmp_path / "set"
    result = run(["convert", "--weights", f"taesd={TAESD}", "--components", "taesd_decoder,taesd_encoder",
                  "--quant", quant, "--calibration", "synthetic", "--calibration-samples", "8",
                  "--img-height", str(H), "--img-width", str(W), "-q", "-o", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    report = tmp_path / "verify.json"
    result = run(["verify", str(out), "--no-end-to-end", "--json", str(report)])
    checks = json.loads(report.read_text())["checks"]
    parity = {c["name"]: c for c in checks if c["group"] == "parity"}
    assert set(parity) == {"taesd_decoder", "taesd_encoder"} and all(c["passed"] for c in parity.values()), checks
    assert result.exit_code == 0, result.output
    print(quant, {k: c["detail"] for k, c in parity.items()})


def test_taesd_calibrates_on_what_the_full_vae_records(tmp_path, monkeypatch):
    """Recorded int8 calibration: the tiny decoder gets the decoder's latents, the tiny encoder the image
    encoder's images, from a fresh recording and from the cache (which stores them once)."""
    from sd2tflite.convert.calibration import recorded

    latent, image = {"latent": np.ones((1, 16, 16, 4), np.float32)}, {"image": np.zeros((1, 128, 128, 3), np.float32)}
    samples = recorded.with_tiny_vae({"decoder": [latent], "image_encoder": [image]})
    assert samples["taesd_decoder"] == [latent] and samples["taesd_encoder"] == [image]
    path = tmp_path / "cached.npz"
    recorded._save(path, samples, {"key": "x"})
    with np.load(path) as z:
        assert sorted(z.files) == ["decoder/latent", "image_encoder/image"]
    loaded = recorded.with_tiny_vae(recorded._load(path))
    np.testing.assert_array_equal(loaded["taesd_decoder"][0]["latent"], latent["latent"])
    np.testing.assert_array_equal(loaded["taesd_encoder"][0]["image"], image["image"])


def test_taesd_needs_its_files(tmp_path):
    result = run(["convert", "--weights", str(LCM), "--components", "taesd_decoder", "--img-height", "128",
                  "--img-width", "128", "-o", str(tmp_path / "set")])
    assert_one_line_error(result, 2, "taesd=PATH")
    result = run(["convert", "--model", "tiny", "--components", "taesd_decoder", "-o", str(tmp_path / "set")])
    assert_one_line_error(result, 2, "keras-cv does not release")
    assert not (tmp_path / "set").exists()


# ---------------------------------------------------------------- end to end against diffusers


class _Tokens:
    """The e2e goldens start from prompt embeddings (diffusers' prompt_embeds): no tokenizer needed."""

    def tokens_for(self, prompt: str, length: int) -> list[int]:
        return [0] * length


class _WithContext(dict):
    """The converted set's components, with a text encoder that gives the golden's prompt embeddings."""

    def __init__(self, components, context):
        super().__init__({name: components[name] for name in ("diffusion", "decoder")})
        self["text_encoder"] = lambda **inputs: {"context": context}


def _e2e(set_dir: Path, name: str, monkeypatch, **settings):
    import dataclasses

    import sd2tflite.runtime.pipeline as pipeline_module
    from sd2tflite.core.manifest import load_manifest
    from sd2tflite.core.metrics import parity
    from sd2tflite.runtime.litert import LiteRTComponents
    from sd2tflite.runtime.pipeline import GenerateSettings, Pipeline
    from sd2tflite.runtime.schedule import Schedule

    g = golden(name)
    manifest = load_manifest(set_dir)
    if "e2e_step_noise" in g:  # the noise LCMScheduler drew between steps, in order
        draws = iter(g["e2e_step_noise"])
        monkeypatch.setattr(pipeline_module, "seeded_noise", lambda _noise: lambda shape: next(draws))
    # the fixtures' text encoders know 256 tokens; the prompt embeddings come from the golden
    dims = dataclasses.replace(manifest.model_dims, vocab_size=49408)
    pipeline = Pipeline(_WithContext(LiteRTComponents(set_dir, manifest), g["e2e_context"]), dims, _Tokens(),
                        manifest.prediction_type, Schedule.from_json(manifest.scheduler), "round")
    out = pipeline.generate(GenerateSettings("", noise=g["e2e_latent"][0], **settings))
    latent_db = parity(g["e2e_final_latent"], out.latents).psnr_db  # over the latent's range
    image = g["e2e_image"].astype(np.float32)
    image_db = parity(image * 255.0, out.images.astype(np.float32), peak=255.0).psnr_db
    print(f"{name} end to end vs diffusers: final latent {latent_db:.1f} dB, image {image_db:.1f} dB (uint8)")
    return latent_db, image_db


@pytest.fixture(scope="module")
def turbo_set(tmp_path_factory, turbo):
    out = tmp_path_factory.mktemp("turbo") / "set"
    result = run(["convert", "--weights", str(turbo), "--quant", "fp32", "--components", "diffusion,decoder",
                  "--img-height", str(H), "--img-width", str(W), "-q", "-o", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    return out


def test_lcm_four_steps_give_diffusers_image(lcm_unet_set, monkeypatch):
    """LatentConsistencyModelPipeline, 4 steps at guidance 8 (through the UNet's guidance embedding)."""
    e2e = fixture("lcm")["e2e"]
    latent_db, image_db = _e2e(lcm_unet_set, "lcm", monkeypatch, sampler="lcm", steps=e2e["steps"],
                               guidance=e2e["guidance"])
    assert latent_db >= 40 and image_db >= 40


def test_turbo_one_step_at_guidance_zero_gives_diffusers_image(turbo_set, monkeypatch):
    """StableDiffusionPipeline with SD-Turbo's scheduler (Euler, trailing), 1 step, guidance 0."""
    latent_db, image_db = _e2e(turbo_set, "turbo", monkeypatch, sampler="euler", spacing="trailing", steps=1,
                               guidance=0.0)
    assert latent_db >= 40 and image_db >= 40


def test_turbo_records_its_family_recommendation(turbo):
    """SD-Turbo's card (1 step at guidance 0) with its scheduler config (Euler, trailing) in the manifest's
    scheduler record; the convert options still win."""
    from sd2tflite.convert.checkpoint_source import SchedulerOptions, identity_of, model_conventions

    identity = identity_of(open_checkpoint(turbo), str(turbo))
    scheduler = model_conventions(identity, "v2")["scheduler"]
    assert (scheduler["sampler"], scheduler["timestep_spacing"], scheduler["steps"], scheduler["guidance"]) == \
        ("euler", "trailing", 1, 0.0)
    scheduler = model_conventions(identity, "v2", SchedulerOptions(steps=2, guidance=1.0))["scheduler"]
    assert (scheduler["steps"], scheduler["guidance"]) == (2, 1.0)
    lcm = model_conventions(identity_of(open_checkpoint(LCM), str(LCM)), "v1")["scheduler"]
    assert lcm["sampler"] == "lcm" and lcm["steps"] is None  # the runtime's few-step defaults apply


def test_vae_tiny_serves_the_decoder_from_the_taesd_files():
    from sd2tflite.runtime.tiny_vae import choose_vae

    class Set(dict):
        released: list = []

        def release(self, name):
            self.released.append(name)

    calls = Set(decoder=lambda **x: "full", taesd_decoder=lambda **x: "tiny", image_encoder=lambda **x: "full enc")
    tiny = choose_vae(calls, "tiny")
    assert tiny["decoder"]() == "tiny" and tiny["image_encoder"]() == "full enc"  # no taesd_encoder: the full one
    tiny.release("decoder")
    assert calls.released == ["taesd_decoder"]
    assert choose_vae(calls, "full")["decoder"]() == "full"


def test_vae_tiny_on_a_set_without_taesd_is_one_line(turbo_set, tmp_path):
    result = run(["generate", str(turbo_set), "a cat", "--vae", "tiny", "-o", str(tmp_path / "x.png"), "-q"])
    assert_one_line_error(result, 2, "no taesd_decoder", "--components taesd_decoder")
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- bad inputs of few-step runs


def test_every_sampler_refuses_steps_times_strength_below_one():
    """diffusers keeps int(steps x strength) steps; none is a one-line refusal on every diffusers sampler;
    LCM / TCD shorten their distillation schedule instead and refuse when it holds fewer than --steps.
    keras-cv's own DDIM (keras-cv sets' default) keeps its rule: the rounded share, at least one step."""
    from sd2tflite.core.errors import UsageError
    from sd2tflite.runtime.samplers import SAMPLERS, make_sampler

    for name in SAMPLERS:
        if name == "ddim-kerascv":
            continue
        if name in ("lcm", "tcd"):
            with pytest.raises(UsageError, match=r"--steps 4 is more than .* \(2 steps at this strength\): "
                                                 r"lower --steps or raise --strength"):
                make_sampler(name, 4, "epsilon").set_strength(0.05)
            continue
        with pytest.raises(UsageError, match=r"--steps 4 x --strength 0.2 leaves no step to run: raise --steps to "
                                             r"at least 5 or --strength to at least 0.25") as info:
            make_sampler(name, 4, "epsilon", spacing="leading").set_strength(0.2)
        assert "\n" not in str(info.value), name
    kerascv = make_sampler("ddim-kerascv", 4, "epsilon")
    kerascv.set_strength(0.2)  # 0.8 -> at least one step, the last
    assert kerascv.start == 3
    kerascv.set_strength(0.65)  # 2.6 -> keras-cv sets round: three steps (diffusers' samplers: int, two)
    ddim = make_sampler("ddim", 4, "epsilon", spacing="leading")
    ddim.set_strength(0.65)
    assert (kerascv.start, ddim.start) == (1, 2)


def test_lcm_sampler_on_a_set_not_distilled_for_it_says_what_its_config_recommends(turbo_set):
    from sd2tflite.core.manifest import load_manifest
    from sd2tflite.runtime.pipeline import GenerateSettings, Pipeline
    from sd2tflite.runtime.schedule import Schedule

    import dataclasses

    manifest = load_manifest(turbo_set)
    dims = dataclasses.replace(manifest.model_dims, vocab_size=49408)  # the fixture's text encoder: 256 tokens
    pipeline = Pipeline({}, dims, _Tokens(), manifest.prediction_type,
                        Schedule.from_json(manifest.scheduler), "round")
    for sampler in ("lcm", "tcd"):
        notes = pipeline.sampler_notes(pipeline.resolve(GenerateSettings("x", sampler=sampler)))
        assert len(notes) == 1 and f"--sampler {sampler} on a model not distilled for it" in notes[0], notes
        assert "recommends euler" in notes[0]
    assert pipeline.sampler_notes(pipeline.resolve(GenerateSettings("x", sampler="euler"))) == []


@pytest.mark.parametrize("change, fragment", [
    ({"thresholding": True}, "thresholding = True is not supported"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr = True is not supported"),
    ({"_class_name": "DPMSolverSinglestepScheduler"}, "scheduler 'DPMSolverSinglestepScheduler' is not one"),
])
def test_convert_refuses_a_few_step_scheduler_config_it_cannot_run(tmp_path, change, fragment):
    folder = tmp_path / "lcm"
    shutil.copytree(LCM, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **change}))
    out = tmp_path / "set"
    result = run(["convert", "--weights", str(folder), "--components", "decoder", "--img-height", "128",
                  "--img-width", "128", "-o", str(out)])
    assert_one_line_error(result, 2, "scheduler_config.json", fragment)
    assert not out.exists() or not any(out.iterdir())
