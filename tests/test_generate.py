"""generate: the LiteRT pipeline, its maths against keras-cv, and its handling of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sd2tflite.core.manifest import load_manifest

from .conftest import assert_one_line_error, run

# CLIP's vocabulary (MIT licence, sha256 pinned by keras-cv): tests/data/README.md
VOCAB = Path(__file__).resolve().parent / "data" / "bpe_simple_vocab_16e6.txt.gz"


def _pixels(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _generate(set_dir, out, *extra):
    return run(["generate", str(set_dir), "a red bicycle", "--steps", "3", "-o", str(out), "-q", *extra])


# ----------------------------------------------------------------------------- the maths


def test_schedule_matches_keras_cv():
    from keras_cv.src.models.stable_diffusion import stable_diffusion as kcv
    from keras_cv.src.models.stable_diffusion.constants import _ALPHAS_CUMPROD

    from sd2tflite.runtime.schedule import alphas_cumprod, timestep_embedding, timesteps

    np.testing.assert_allclose(alphas_cumprod(), _ALPHAS_CUMPROD, rtol=2e-7)
    assert timesteps(25).tolist()[:3] == [0, 42, 83] and timesteps(25)[-1] == 999
    reference = kcv.StableDiffusion.__new__(kcv.StableDiffusion)
    for t in (0, 42, 999):
        expected = np.asarray(reference._get_timestep_embedding(t, 2))
        np.testing.assert_allclose(timestep_embedding(t, 2), expected, atol=1e-4)  # float32 exp/sin/cos differ in the last bits; x999


def test_tokenizer_matches_keras_cv_simple_tokenizer():
    from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

    from sd2tflite.runtime.tokenizer import ClipTokenizer

    ours, theirs = ClipTokenizer.from_file(VOCAB), SimpleTokenizer(bpe_path=str(VOCAB))
    prompts = ["a photograph of an astronaut riding a horse", "  A CAT on a skateboard!! ", "",
               "Ünïcödé café 東京 1234 it's &amp; don't", "oil painting, 8k, trending on artstation"]
    for prompt in prompts:
        assert ours.encode(prompt) == theirs.encode(prompt), prompt
    assert ours.tokens_for("a horse")[:4] == [49406, 320, 4558, 49407] and len(ours.tokens_for("")) == 77


def test_too_long_prompt_is_refused():
    from sd2tflite.core.errors import UsageError
    from sd2tflite.runtime.tokenizer import ClipTokenizer

    with pytest.raises(UsageError, match="shorten it"):
        ClipTokenizer.generated().tokens_for("word " * 80)


def test_runtime_imports_no_tensorflow(tiny_sets, tmp_path):
    code = f"""
import sys
from pathlib import Path
from sd2tflite.runtime.generate import GenerateRequest, generate
from sd2tflite.runtime.pipeline import GenerateSettings
generate(GenerateRequest(Path({str(tiny_sets['dynamic'])!r}), Path({str(tmp_path / 'x.png')!r}),
                         GenerateSettings('a cat', steps=2)))
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'keras_cv'))
assert not heavy, heavy
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    assert (tmp_path / "x.png").is_file()


# ----------------------------------------------------------------------------- behaviour


def test_generate_is_deterministic_for_a_seed_and_records_settings(tiny_sets, tmp_path):
    from PIL import Image

    for name, seed in (("a.png", "1"), ("b.png", "1"), ("c.png", "2")):
        result = _generate(tiny_sets["fp16"], tmp_path / name, "--seed", seed)
        assert result.exit_code == 0, result.output
    a, b, c = (_pixels(tmp_path / n) for n in ("a.png", "b.png", "c.png"))
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    text = Image.open(tmp_path / "a.png").text
    settings = json.loads(text["parameters"])
    assert text["prompt"] == "a red bicycle"
    assert (settings["seed"], settings["steps"], settings["guidance"]) == (1, 3, 7.5)
    assert settings["model"]["quant"] == "fp16" and settings["tokenizer"] == "generated"


def test_noise_file_reproduces_the_seeded_run_and_latents_are_saved(tiny_sets, tmp_path):
    dims = load_manifest(tiny_sets["fp32"]).dims
    noise = np.random.default_rng(5).standard_normal((1, dims["img_height"] // 8, dims["img_width"] // 8, 4))
    np.save(tmp_path / "noise.npy", noise.astype(np.float32))
    assert _generate(tiny_sets["fp32"], tmp_path / "seed.png", "--seed", "5").exit_code == 0
    result = _generate(tiny_sets["fp32"], tmp_path / "noise.png", "--noise", str(tmp_path / "noise.npy"),
                       "--save-latents", str(tmp_path / "latents.npy"))
    assert result.exit_code == 0, result.output
    assert np.array_equal(_pixels(tmp_path / "seed.png"), _pixels(tmp_path / "noise.png"))
    latents = np.load(tmp_path / "latents.npy")
    assert latents.shape == noise.shape and np.isfinite(latents).all()
    assert not np.allclose(latents, noise)


def test_inpainting_keeps_the_unmasked_region(tiny_sets, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    source = (rng.uniform(0, 255, (128, 128, 3))).astype(np.uint8)
    Image.fromarray(source).save(tmp_path / "in.png")
    mask = np.zeros((128, 128), np.uint8)
    mask[32:96, 40:88] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result = _generate(tiny_sets["fp32"], tmp_path / "out.png", "--image", str(tmp_path / "in.png"),
                       "--mask", str(tmp_path / "mask.png"), "--save-latents", str(tmp_path / "z.npy"))
    assert result.exit_code == 0, result.output
    out = _pixels(tmp_path / "out.png").astype(int)
    keep = mask == 0
    assert np.abs(out[keep] - source[keep].astype(int)).max() <= 1
    assert np.abs(out[~keep] - source[~keep].astype(int)).mean() > 10  # the masked region was repainted
    # In latent space: outside the mask the final latents are the encoded input (the blend's last
    # step has alpha_prev = 1); inside they are the denoised ones.
    from sd2tflite.runtime.litert import load_component

    encoded = load_component(tiny_sets["fp32"], "image_encoder")(
        image=(source[None].astype(np.float32) / 127.5 - 1.0))["latent"]
    latents = np.load(tmp_path / "z.npy")
    kept_cells = np.ones((16, 16), bool)
    kept_cells[4:12, 5:11] = False  # every 8x8 block touching the mask is repainted
    np.testing.assert_allclose(latents[0][kept_cells], encoded[0][kept_cells], atol=1e-5)
    assert np.abs(latents[0][~kept_cells] - encoded[0][~kept_cells]).mean() > 0.1


def test_image_to_image_runs_the_share_of_steps_strength_asks(tiny_sets, tmp_path):
    from PIL import Image

    from sd2tflite.core.progress import NullProgress
    from sd2tflite.runtime.generate import GenerateRequest, generate
    from sd2tflite.runtime.pipeline import GenerateSettings

    class Recorded(NullProgress):
        def __init__(self):
            self.stages, self.done = [], 0

        def stage(self, name, total=None, unit="item"):
            self.stages.append((name, total, unit))

        def advance(self, n=1):
            self.done += n

    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(tmp_path / "small.png")
    progress = Recorded()
    result = generate(
        GenerateRequest(tiny_sets["fp32"], tmp_path / "out.png",
                        GenerateSettings("a hill", steps=10, strength=0.3), image_file=tmp_path / "small.png"),
        progress,
    )
    assert progress.stages == [("denoising", 3, "step")] and progress.done == 3
    assert any("resized" in n for n in result.notes)
    result = _generate(tiny_sets["fp32"], tmp_path / "no.png", "--image", str(tmp_path / "small.png"), "--no-resize")
    assert_one_line_error(result, 2, "64x64", "--resize")


# ----------------------------------------------------------------------------- bad input


def test_missing_and_broken_manifests(tmp_path, fp32_set):
    assert_one_line_error(_generate(tmp_path / "nowhere", tmp_path / "o.png"), 1, "no manifest.json")
    (fp32_set / "manifest.json").write_text("{not json")
    assert_one_line_error(_generate(fp32_set, tmp_path / "o.png"), 1, "not valid JSON")


def test_manifest_path_escaping_the_directory(tmp_path, fp32_set):
    data = json.loads((fp32_set / "manifest.json").read_text())
    data["artifacts"][0]["path"] = "../../etc/passwd"
    (fp32_set / "manifest.json").write_text(json.dumps(data))
    assert_one_line_error(_generate(fp32_set, tmp_path / "o.png"), 1, "outside the model directory")


@pytest.mark.parametrize("damage, fragment", [
    ("delete", "missing"),
    ("truncate", "bytes, the manifest says"),
    ("flip", "sha256"),
])
def test_damaged_files_are_refused_and_nothing_is_written(tmp_path, fp32_set, damage, fragment):
    target = fp32_set / load_manifest(fp32_set).parts_of("diffusion")[1].path
    data = target.read_bytes()
    if damage == "delete":
        target.unlink()
    elif damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    else:
        target.write_bytes(data[:-100] + bytes(b ^ 0xFF for b in data[-100:]))
    result = _generate(fp32_set, tmp_path / "o.png")
    assert_one_line_error(result, 1, target.name, fragment)
    assert not (tmp_path / "o.png").exists()


def _count_hashing(monkeypatch) -> list:
    import sd2tflite.runtime.integrity as integrity

    hashed, real = [], integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda path, *a: hashed.append(path) or real(path, *a))
    return hashed


def test_unchanged_files_are_not_hashed_again_and_a_rewrite_always_is(fp32_set, monkeypatch):
    import time

    import sd2tflite.runtime.integrity as integrity
    from sd2tflite.core.errors import ManifestError

    hashed = _count_hashing(monkeypatch)
    later = time.time_ns() + 60 * 10**9  # as if the copy were a minute old (see the next test)
    monkeypatch.setattr(integrity.time, "time_ns", lambda: later)
    files = len(integrity.ensure_intact(fp32_set, load_in_litert=False, reuse_hashes=True).artifacts)
    assert len(hashed) == files
    integrity.ensure_intact(fp32_set, load_in_litert=False, reuse_hashes=True)  # generate, bench
    assert len(hashed) == files
    integrity.ensure_intact(fp32_set, load_in_litert=False)  # verify, push-hub: every byte, always
    assert len(hashed) == 2 * files
    # Same size and the mtime put back: the write still moved ctime, so the flip is found.
    target = fp32_set / "decoder.tflite"
    before, data = target.stat(), target.read_bytes()
    time.sleep(0.05)  # past the timestamp tick of the copy
    target.write_bytes(data[:-100] + bytes(b ^ 0xFF for b in data[-100:]))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ManifestError, match="decoder.tflite sha256"):
        integrity.ensure_intact(fp32_set, load_in_litert=False, reuse_hashes=True)


def test_files_changed_in_the_last_seconds_are_never_remembered(fp32_set, monkeypatch):
    from sd2tflite.runtime.integrity import ensure_intact

    hashed = _count_hashing(monkeypatch)
    for path in fp32_set.glob("*.tflite"):
        os.utime(path)  # changed just now
    files = len(ensure_intact(fp32_set, load_in_litert=False, reuse_hashes=True).artifacts)
    ensure_intact(fp32_set, load_in_litert=False, reuse_hashes=True)
    assert len(hashed) == 2 * files


def test_existing_output_is_not_overwritten(tiny_sets, tmp_path):
    (tmp_path / "o.png").write_bytes(b"mine")
    assert_one_line_error(_generate(tiny_sets["fp32"], tmp_path / "o.png"), 2, "exists", "--force")
    assert (tmp_path / "o.png").read_bytes() == b"mine"


def test_mask_of_another_size_and_mask_without_image(tiny_sets, tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((128, 128, 3), np.uint8)).save(tmp_path / "in.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "mask.png")
    result = _generate(tiny_sets["fp32"], tmp_path / "o.png", "--image", str(tmp_path / "in.png"),
                       "--mask", str(tmp_path / "mask.png"))
    assert_one_line_error(result, 2, "64x64", "size of the image")
    result = _generate(tiny_sets["fp32"], tmp_path / "o.png", "--mask", str(tmp_path / "mask.png"))
    assert_one_line_error(result, 2, "--image")


def test_noise_of_the_wrong_shape(tiny_sets, tmp_path):
    np.save(tmp_path / "n.npy", np.zeros((3, 3), np.float32))
    result = _generate(tiny_sets["fp32"], tmp_path / "o.png", "--noise", str(tmp_path / "n.npy"))
    assert_one_line_error(result, 2, "[3, 3]", "[1, 16, 16, 4]")


def test_negative_seed_is_a_usage_error_not_a_crash(tiny_sets, tmp_path):
    result = _generate(tiny_sets["fp32"], tmp_path / "o.png", "--seed", "-1")
    assert result.exit_code == 2 and "--seed" in result.stderr and "Traceback" not in result.output, result.output
    assert not (tmp_path / "o.png").exists()


def test_each_component_is_released_after_its_stage_and_the_pixels_are_the_same(tiny_sets):
    """The UNet never shares memory with the text encoder or the decoder."""
    from sd2tflite.runtime.litert import LiteRTComponents
    from sd2tflite.runtime.pipeline import GenerateSettings, Pipeline
    from sd2tflite.runtime.tokenizer import load_tokenizer

    manifest = load_manifest(tiny_sets["fp32"])
    held_at_release = []

    class Watched(LiteRTComponents):
        def release(self, component):
            held_at_release.append((component, sorted(self.loaded)))
            super().release(component)

    images = {}
    for release in (True, False):
        components = Watched(tiny_sets["fp32"], manifest, release_unused=release)
        pipeline = Pipeline(components, manifest.model_dims, load_tokenizer("tiny"), manifest.prediction_type)
        images[release] = pipeline.generate(GenerateSettings("a red circle", steps=2)).images
        assert sorted(components.loaded) == ([] if release else ["decoder", "diffusion", "text_encoder"])
    assert held_at_release[:3] == [("text_encoder", ["text_encoder"]), ("diffusion", ["diffusion"]),
                                   ("decoder", ["decoder"])]
    np.testing.assert_array_equal(images[True], images[False])
