"""SD 1.x / 2.x PyTorch checkpoints (safetensors) -> Keras, against diffusers/transformers goldens.

Fixtures: tests/data/checkpoints/ (made by tests/fixtures/make_checkpoint_fixtures.py in a torch venv;
no torch here). Goldens with no suffix are the same models with keras-cv's numerics (GroupNorm eps
1e-5, tanh GELU): they isolate the weight mapping and are held tight. `*_exact` goldens are
diffusers/transformers as they are: held to keras-cv's own deviation.

Committed: the v1 single file and the v2 diffusers folder. The v1 diffusers folder and the v2
single file are written here into a temporary folder (fixture `derived`) from those files and the
script's plans, so each weight is committed once.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from sd2tflite.core.errors import UsageError, WeightsError
from sd2tflite.convert.checkpoint import SD1, SD2, Architecture, open_checkpoint, parse_lora_arg

from .goldens import TIGHT, load_golden
from .goldens import check as golden_check

DATA = Path(__file__).parent / "data" / "checkpoints"
H, W = 64, 128  # text encoder and UNet (latents 8x16): non-square, catches H/W mix-ups
VH, VW = 64, 64  # VAE goldens (images: the biggest goldens); its non-square shapes: test_build_...
SIZE = {"text_encoder": (H, W), "diffusion": (H, W), "decoder": (VH, VW), "image_encoder": (VH, VW)}
V1_SINGLE = DATA / "v1" / "sd-v1-tiny-ema.safetensors"
V2_DIFFUSERS = DATA / "v2" / "diffusers"
LORA = DATA / "lora"

ERRORS: list[str] = []  # measured errors, printed at the end (pytest -s)


def golden(family: str) -> dict[str, np.ndarray]:
    return load_golden(DATA / family / "golden.npz")


def derive(plan_file: Path, out: Path) -> None:
    """Writes the files a plan (tests/fixtures/make_checkpoint_fixtures.py) lists into `out`: each tensor
    gathered from committed files (paths relative to the plan), concatenated, reshaped, negated or
    filled, and stored in its dtype, exactly (the values are exact in fp16 and bf16)."""
    import ml_dtypes  # TensorFlow's own dependency: numpy's bf16
    from safetensors.numpy import save_file

    from sd2tflite.convert.checkpoint.reader import SafetensorsFile

    dtypes = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}
    sources: dict[str, SafetensorsFile] = {}

    def read(rel: str, key: str) -> np.ndarray:
        if rel not in sources:
            sources[rel] = SafetensorsFile(plan_file.parent / rel)
        return sources[rel].get(key)

    plan = json.loads(gzip.decompress(plan_file.read_bytes()))
    for rel, spec in plan["files"].items():
        tensors = {}
        for e in spec["tensors"]:
            if e["op"] == "fill":
                x = np.full(e["shape"], e["value"], np.float32)
            else:
                x = np.concatenate([read(f, k) for f, k in e["src"]]).reshape(e["shape"])
                x = -x if e["op"] == "negate" else x
            y = x.astype(dtypes[e["dtype"]])
            assert np.array_equal(y.astype(np.float32), x), (rel, e["name"])
            tensors[e["name"]] = y
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out / rel), metadata=spec["metadata"])


@pytest.fixture(scope="module")
def derived(tmp_path_factory):
    """The v1 diffusers folder (committed configs and sharded index; weights from the v1 single
    file's EMA copy) and the v2 single file (bf16, OpenCLIP; from the v2 diffusers folder)."""
    root = tmp_path_factory.mktemp("checkpoints")
    v1 = root / "v1-diffusers"
    shutil.copytree(DATA / "v1" / "diffusers", v1)
    derive(DATA / "v1" / "diffusers.plan.json.gz", v1)
    v2 = root / "v2"
    derive(DATA / "v2" / "sd-v2-tiny.safetensors.plan.json.gz", v2)
    return SimpleNamespace(v1_diffusers=v1, v2_single=v2 / "sd-v2-tiny.safetensors")


@pytest.fixture(scope="module")
def built():
    """One built Keras model per (architecture, component): building a tiny UNet takes ~5 s, and a
    checkpoint's weights can be loaded into any model of its architecture (Checkpoint.load)."""
    from sd2tflite.convert.checkpoint.builders import build

    cache = {}

    def get(ckpt, component):
        part = {"text_encoder": "text", "diffusion": "unet"}.get(component, "vae")
        key = (json.dumps(ckpt.architecture.to_json()[part], sort_keys=True), component)
        if key not in cache:
            cache[key] = build(ckpt.architecture, component, *SIZE[component])
        model, rows = cache[key]
        return ckpt.load(component, model, rows)

    return get


def run(model, component: str, g: dict, t: int = 500) -> np.ndarray:
    if component == "text_encoder":
        return np.asarray(model([g["tokens"], g["positions"]]))
    if component == "diffusion":
        return np.asarray(model([g["unet_latent"], g[f"timestep_embedding_{t}"], g["unet_context"]]))
    if component == "decoder":
        return np.asarray(model(g["decoder_latent"]))
    return np.asarray(model(g["image"]))


GOLDEN_KEY = {"text_encoder": "text_encoder", "decoder": "decoder", "image_encoder": "image_encoder"}


def check(label: str, out: np.ndarray, ref: np.ndarray, tol: float, exact: np.ndarray | None = None):
    golden_check(label, out, ref, tol, exact, log=ERRORS)


def check_all(ckpt, family: str, built, label: str, unet_prefix: str = "", timesteps=(500,)):
    g = golden(family)
    for component in ("text_encoder", "decoder", "image_encoder"):
        out = run(built(ckpt, component), component, g)
        key = GOLDEN_KEY[component]
        check(f"{label} {component}", out, g[key], TIGHT, g[f"{key}_exact"])
    model = built(ckpt, "diffusion")
    for t in timesteps:
        out = run(model, "diffusion", g, t)
        exact = g.get(f"unet_{t}_exact") if not unet_prefix else None
        check(f"{label} diffusion t={t}", out, g[f"{unet_prefix}unet_{t}"], TIGHT, exact)


# ---------------------------------------------------------------- goldens per layout


def test_v1_diffusers_folder(built, derived):
    ckpt = open_checkpoint(derived.v1_diffusers)
    assert ckpt.family == "v1" and ckpt.prediction_type == "epsilon" and ckpt.ema is None
    assert ckpt.context_dim == 64 and ckpt.timestep_dim == 32
    assert ckpt.architecture.unet.heads == (8,) and not ckpt.architecture.unet.linear_projection
    check_all(ckpt, "v1", built, "v1 diffusers (sharded fp16 unet, fp16-variant text, fp32 vae)",
              timesteps=(1, 500, 999))


def test_v1_single_file_ema_default(built):
    ckpt = open_checkpoint(V1_SINGLE)
    assert ckpt.ema is True and ckpt.prediction_type == "epsilon"
    assert ckpt.identity()["ema"] is True
    check_all(ckpt, "v1", built, "v1 single-file EMA")


def test_v1_single_file_raw_weights(built):
    ckpt = open_checkpoint(V1_SINGLE, use_ema=False)
    assert ckpt.ema is False
    g = golden("v1")
    for t in (1, 999):
        check(f"v1 single-file --no-ema diffusion t={t}", run(built(ckpt, "diffusion"), "diffusion", g, t),
              g[f"raw_unet_{t}"], TIGHT)


def test_v2_diffusers_folder(built):
    ckpt = open_checkpoint(V2_DIFFUSERS)
    assert ckpt.family == "v2" and ckpt.prediction_type == "v_prediction"
    assert ckpt.prediction_type_from == "scheduler_config.json"
    assert ckpt.architecture.unet.linear_projection and ckpt.architecture.text.activation == "gelu"
    check_all(ckpt, "v2", built, "v2 diffusers (fp16 unet/vae, bf16 text)", timesteps=(1, 999))


def test_v2_single_file(built, derived):
    with pytest.raises(UsageError, match="prediction-type"):
        open_checkpoint(derived.v2_single)
    ckpt = open_checkpoint(derived.v2_single, prediction_type="v_prediction")
    assert ckpt.family == "v2" and ckpt.ema is None and ckpt.prediction_type_from == "argument"
    # heads follow the SD 2.x convention (head dim 64, at least one head) without a config
    assert ckpt.architecture.unet.heads == (1, 1, 1)
    assert ckpt.architecture.text.layers == 2  # OpenCLIP's last resblock is unused (penultimate)
    check_all(ckpt, "v2", built, "v2 single-file (bf16, OpenCLIP)")


def test_vae_override_both_layouts(built, derived, tmp_path):
    g = golden("v2")
    ckpt = open_checkpoint(V1_SINGLE, overrides={"vae": V2_DIFFUSERS / "vae"})
    assert ckpt.architecture.vae == open_checkpoint(V2_DIFFUSERS).architecture.vae
    check("override vae (diffusers folder) decoder", run(built(ckpt, "decoder"), "decoder", g), g["decoder"],
          TIGHT)
    # a stand-alone VAE in the original layout (as vae-ft-mse-840000 ships: no prefix)
    from safetensors.numpy import save_file

    from sd2tflite.convert.checkpoint.reader import SafetensorsFile

    f = SafetensorsFile(derived.v2_single)
    vae = {k[len("first_stage_model."):]: f.get(k) for k in f.keys() if k.startswith("first_stage_model.")}
    save_file(vae, str(tmp_path / "vae.safetensors"))
    ckpt = open_checkpoint(derived.v1_diffusers, overrides={"decoder": tmp_path / "vae.safetensors"})
    check("override vae (original file) image_encoder",
          run(built(ckpt, "image_encoder"), "image_encoder", g), g["image_encoder"], TIGHT)
    assert ckpt.identity()["overrides"] == {"vae": str(tmp_path / "vae.safetensors")}


# ---------------------------------------------------------------- LoRA


@pytest.mark.parametrize("fmt", ["peft", "kohya", "kohya_te1"])
def test_lora_matches_diffusers_fuse(built, derived, fmt, tmp_path):
    z = golden("lora")
    scale = float(z["scale"])
    path = LORA / f"lora_{fmt}.safetensors"
    if fmt == "kohya_te1":  # newer kohya scripts name the one text encoder `lora_te1_` (diffusers reads it so)
        from safetensors.numpy import load_file, save_file

        save_file({k.replace("lora_te_", "lora_te1_", 1): v
                   for k, v in load_file(str(LORA / "lora_kohya.safetensors")).items()}, str(path := tmp_path / "te1.safetensors"))
        fmt = "kohya"
    assert parse_lora_arg(f"{path}:{scale}") == (path, scale)
    ckpt = open_checkpoint(derived.v1_diffusers, loras=[(path, scale)])
    assert ckpt.loras[0].format == ("kohya" if fmt == "kohya" else "diffusers")
    g = golden("v1")
    check(f"lora {fmt} text_encoder", run(built(ckpt, "text_encoder"), "text_encoder", g),
          z[f"{fmt}_text_encoder"], TIGHT, z[f"{fmt}_text_encoder_exact"])
    check(f"lora {fmt} diffusion t=500", run(built(ckpt, "diffusion"), "diffusion", g),
          z[f"{fmt}_unet_500"], TIGHT, z[f"{fmt}_unet_500_exact"])
    ident = ckpt.identity()["loras"][0]
    assert ident["scale"] == scale and ident["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- identity, architecture


def test_identity_is_json_and_hashes_files(derived):
    ckpt = open_checkpoint(derived.v1_diffusers)
    ident = ckpt.identity()
    text = json.dumps(ident)
    assert ident["source_format"] == "diffusers" and ident["family"] == "v1"
    assert {f["component"] for f in ident["files"]} == {"text_encoder", "unet", "vae"}
    assert sum(f["component"] == "unet" for f in ident["files"]) > 1  # the shards
    first = ident["files"][0]
    assert first["sha256"] == hashlib.sha256(Path(first["path"]).read_bytes()).hexdigest()
    assert Architecture.from_json(json.loads(text)["architecture"]) == ckpt.architecture
    assert open_checkpoint(V1_SINGLE).identity()["source_format"] == "single-file"


def test_build_gives_the_component_interfaces(derived):
    """Checkpoint.build: the interfaces of sd2tflite's components (names, static shapes; the VAE's
    at a non-square size, which its goldens are not)."""
    ckpt = open_checkpoint(derived.v2_single, prediction_type="epsilon")
    text = ckpt.build("text_encoder", H, W)
    assert [t.name for t in text.inputs] == ["tokens", "positions"]
    assert [tuple(t.shape) for t in text.inputs] == [(None, 77), (None, 77)]
    assert tuple(text.outputs[0].shape) == (None, 77, ckpt.context_dim)
    g = golden("v2")
    check("build() text_encoder", run(text, "text_encoder", g), g["text_encoder"], TIGHT)
    enc = ckpt.build("image_encoder", H, W)
    assert tuple(enc.inputs[0].shape) == (None, H, W, 3) and tuple(enc.outputs[0].shape) == (None, H // 8, W // 8, 4)
    dec = ckpt.build("decoder", H, W)
    assert tuple(dec.inputs[0].shape) == (None, H // 8, W // 8, 4) and tuple(dec.outputs[0].shape) == (None, H, W, 3)
    with pytest.raises(UsageError, match="max_text_length"):
        ckpt.build("text_encoder", H, W, max_text_length=64)


def test_full_size_conventions():
    """What the conventions give at SD 1.x / 2.x widths is keras-cv's v1 / v2."""
    assert SD1.unet.heads == (8,) * 4 and SD1.text.heads == 12
    assert SD2.unet.heads == tuple(w // 64 for w in SD2.unet.widths) and SD2.text.heads == 16


# ---------------------------------------------------------------- bad inputs: one-line errors


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


def copy_vae(v1_diffusers: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(v1_diffusers / "vae" / "diffusion_pytorch_model.safetensors"))


def save(tmp_path: Path, name: str, tensors: dict) -> Path:
    from safetensors.numpy import save_file

    p = tmp_path / name
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(p))
    return p


def test_truncated_file(tmp_path, derived):
    src = (derived.v1_diffusers / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    p = tmp_path / "vae.safetensors"
    p.write_bytes(src[:-1000])
    with pytest.raises(WeightsError) as e:
        open_checkpoint(V1_SINGLE, overrides={"vae": p})
    assert "truncated" in one_line(e) and "vae.safetensors" in str(e.value)


def test_pickle_refused(tmp_path):
    p = tmp_path / "model.ckpt"
    p.write_bytes(b"\x80\x04not really")
    with pytest.raises(WeightsError) as e:
        open_checkpoint(p)
    assert "unpickling runs arbitrary code" in one_line(e) and "safetensors" in str(e.value)
    with pytest.raises(WeightsError, match="unpickling"):
        open_checkpoint(V1_SINGLE, overrides={"vae": tmp_path / "diffusion_pytorch_model.bin"})


def test_wrong_shape_names_tensor(tmp_path, built, derived):
    vae = copy_vae(derived.v1_diffusers)
    vae["decoder.conv_in.bias"] = np.zeros(33, np.float32)
    ckpt = open_checkpoint(V1_SINGLE, overrides={"vae": save(tmp_path, "vae.safetensors", vae)})
    with pytest.raises(WeightsError) as e:  # names and shapes are checked before anything is assigned
        built(ckpt, "decoder")
    msg = one_line(e)
    assert "decoder.conv_in.bias" in msg and "expected [32]" in msg and "found [33]" in msg


def test_missing_and_leftover_tensors(tmp_path, built, derived):
    vae = copy_vae(derived.v1_diffusers)
    del vae["decoder.mid_block.attentions.0.to_q.weight"]
    ckpt = open_checkpoint(V1_SINGLE, overrides={"vae": save(tmp_path, "a.safetensors", vae)})
    with pytest.raises(WeightsError) as e:
        built(ckpt, "decoder")
    assert "1 decoder tensors missing: decoder.mid_block.attentions.0.to_q.weight" in one_line(e)
    vae = copy_vae(derived.v1_diffusers)
    for i in range(7):
        vae[f"decoder.extra.{i}.weight"] = np.zeros(3, np.float32)
    ckpt = open_checkpoint(V1_SINGLE, overrides={"vae": save(tmp_path, "b.safetensors", vae)})
    with pytest.raises(WeightsError) as e:
        built(ckpt, "decoder")
    msg = one_line(e)
    assert "7 decoder tensors unused" in msg and "decoder.extra.0.weight" in msg and "(+2 more)" in msg


def small_unet_keys(conv_in_channels: int = 4) -> dict[str, np.ndarray]:
    return {"model.diffusion_model.input_blocks.0.0.weight": np.zeros((32, conv_in_channels, 3, 3), np.float32)}


@pytest.mark.parametrize("keys, error, words", [
    ({**small_unet_keys(), "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight":
      np.zeros(8, np.float32)}, WeightsError, "SDXL"),
    ({"model.diffusion_model.joint_blocks.0.x.weight": np.zeros(8, np.float32)}, WeightsError, "SD3"),
    (small_unet_keys(9), WeightsError, "inpainting"),
    ({"first_stage_model.encoder.conv_in.weight": np.zeros((8, 3, 3, 3), np.float32)}, UsageError, "VAE-only"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.zeros((4, 32), np.float32)},
     UsageError, "LoRA"),
    ({"foo.weight": np.zeros(3, np.float32)}, WeightsError, "unknown checkpoint layout"),
    ({**small_unet_keys(), "cond_stage_model.something_else": np.zeros(3, np.float32)}, WeightsError,
     "match no SD 1.x/2.x component"),
])
def test_refused_checkpoints(tmp_path, keys, error, words):
    with pytest.raises(error) as e:
        open_checkpoint(save(tmp_path, "model.safetensors", keys))
    assert words in one_line(e)


def test_sdxl_diffusers_folder(tmp_path):
    (tmp_path / "text_encoder_2").mkdir()
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(WeightsError, match="SDXL"):
        open_checkpoint(tmp_path)


def test_lora_errors(tmp_path, derived):
    good = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight":
            np.zeros((4, 32), np.float32),
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight":
            np.zeros((32, 4), np.float32)}
    bad = {**good, "lora_unet_no_such_block.lora_down.weight": np.zeros((4, 32), np.float32),
           "lora_te_text_model_encoder_layers_9_mlp_fc1.lora_up.weight": np.zeros((4, 32), np.float32)}
    with pytest.raises(WeightsError) as e:
        open_checkpoint(derived.v1_diffusers, loras=[(save(tmp_path, "bad.safetensors", bad), 1.0)])
    msg = one_line(e)
    assert "2 LoRA keys match no weight" in msg and "lora_unet_no_such_block.lora_down.weight" in msg
    wide = {k: np.zeros((s[0] * 2, s[1]) if "up" in k else s, np.float32)
            for k, s in ((k, v.shape) for k, v in good.items())}
    with pytest.raises(WeightsError) as e:
        open_checkpoint(derived.v1_diffusers, loras=[(save(tmp_path, "wide.safetensors", wide), 1.0)])
    assert "LoRA for another model" in one_line(e)
    sdxl = {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": np.zeros((4, 32), np.float32)}
    with pytest.raises(WeightsError) as e:
        open_checkpoint(derived.v1_diffusers, loras=[(save(tmp_path, "xl.safetensors", sdxl), 1.0)])
    assert "SDXL LoRA" in one_line(e)


def test_usage_errors(tmp_path, derived):
    with pytest.raises(UsageError, match="prediction type"):
        open_checkpoint(derived.v1_diffusers, prediction_type="sample")
    with pytest.raises(UsageError, match="override component"):
        open_checkpoint(derived.v1_diffusers, overrides={"tokenizer": V1_SINGLE})
    with pytest.raises(WeightsError, match="no such file"):
        open_checkpoint(tmp_path / "nope.safetensors")


def test_bf16_reads_as_float32(tmp_path, derived):
    """bf16 widened exactly (the v2 single file is bf16; compare with the fp16 diffusers copy)."""
    from sd2tflite.convert.checkpoint.reader import SafetensorsFile

    bf = SafetensorsFile(derived.v2_single)
    fp = SafetensorsFile(V2_DIFFUSERS / "vae" / "diffusion_pytorch_model.safetensors")
    a = bf.get("first_stage_model.decoder.conv_in.weight")
    b = fp.get("decoder.conv_in.weight")
    assert a.dtype == np.float32 and np.array_equal(a, b)


# ---------------------------------------------------------------- full size (slow)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["v1", "v2"])
def test_builders_equal_keras_cv_at_full_size(family):
    """At SD 1.x / 2.x widths the builders' weight lists (shapes, in order) are keras-cv's."""
    import gc

    from keras_cv.src.models.stable_diffusion import decoder, diffusion_model, image_encoder, text_encoder

    from sd2tflite.convert.checkpoint.builders import build

    arch = SD1 if family == "v1" else SD2
    reference = {
        "text_encoder": lambda: (text_encoder.TextEncoder if family == "v1" else text_encoder.TextEncoderV2)(
            77, download_weights=False),
        "diffusion": lambda: (diffusion_model.DiffusionModel if family == "v1" else
                              diffusion_model.DiffusionModelV2)(512, 512, 77, download_weights=False),
        "decoder": lambda: decoder.Decoder(512, 512, download_weights=False),
        "image_encoder": lambda: image_encoder.ImageEncoder(download_weights=False),
    }
    for component, make in reference.items():
        ours, rows = build(arch, component, 512, 512)
        shapes = [tuple(w.shape) for w in ours.weights]
        assert len(rows) == len(shapes)
        del ours, rows
        gc.collect()
        theirs = make()
        assert shapes == [tuple(w.shape) for w in theirs.weights], component
        del theirs
        gc.collect()


def teardown_module(module):
    if ERRORS:
        print("\nmeasured errors:\n  " + "\n  ".join(ERRORS))

