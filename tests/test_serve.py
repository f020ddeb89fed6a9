"""The browser side: GPU placement through LiteRT.js WebGPU, and `sd2tflite serve` in real Chromium.

The browser tests need Chromium and LiteRT.js (tests/browser: `npm ci` there; CI does it and sets
SD2TFLITE_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from sd2tflite.serve.browser import find_litertjs
from sd2tflite.serve.placement import count_ops, measure_gpu_placement, parse_gpu_log

from .conftest import assert_one_line_error, run

BROWSER_DIR = Path(__file__).parent / "browser"

# A WebGPU compile's log as LiteRT.js 2.5.3 writes it (abridged from the tiny fp32 decoder's).
GPU_LOG = [
    "INFO: [compiled_model.cc:812] Flatbuffer model initialized directly from incoming litert model.",
    "E1205 00:24:06.928000  755312 model_builder.cc:2496] {\n  type: FLOAT32\n  data: {...}\n  dims: [1,1,1,32,2]\n"
    "} isn't ::ml_drift::BHWC-convertible.",
    "ERROR: Following operations are not supported by GPU delegate:\n"
    "ADD: Can't parse inputs with const tensors.\n"
    "ADD: Tensor dimensions must be less than 5. tiny_decoder_1/group_normalization_111_1/moments/variance\n"
    "ADD: Tensor dimensions must be less than 5. tiny_decoder_1/group_normalization_111_1/mul_2\n"
    "MEAN: Unknown layout.\n"
    "SUB: Max version supported: 2. Requested version 3.\n"
    "14 operations will run on the GPU, and the remaining 226 operations will run on the CPU.",
    "%c[LiteRT]%c Model not fully compiled for webgpu. Partially delegating to WASM execution. background: #FFA000",
]


def test_gpu_log_is_counted_and_grouped_by_reason():
    parsed = parse_gpu_log(GPU_LOG)
    assert (parsed["gpu_ops"], parsed["cpu_ops"]) == (14, 226)
    assert parsed["rejected"] == {"ADD: Tensor dimensions must be less than 5.": 2,
                                  "ADD: Can't parse inputs with const tensors.": 1, "MEAN: Unknown layout.": 1,
                                  "SUB: Max version supported: 2. Requested version 3.": 1}
    assert parsed["notes"] == {"constant tensor [1,1,1,32,2] isn't BHWC-convertible": 1}
    assert parsed["partial"]
    clean = parse_gpu_log(["INFO: Created TensorFlow Lite XNNPACK delegate for CPU."])
    assert clean["gpu_ops"] is None and not clean["rejected"] and not clean["partial"]


def test_gpu_log_counts_refusals_with_an_empty_reason():
    lines = ["ERROR: Following operations are not supported by GPU delegate:\n"
             "CUSTOM: \nSTABLEHLO_COMPOSITE:\nMEAN: Unknown layout.\n"
             "5 operations will run on the GPU, and the remaining 3 operations will run on the CPU."]
    parsed = parse_gpu_log(lines)
    assert parsed["rejected"] == {"CUSTOM: (no reason logged)": 1, "MEAN: Unknown layout.": 1,
                                  "STABLEHLO_COMPOSITE: (no reason logged)": 1}
    assert (parsed["gpu_ops"], parsed["cpu_ops"]) == (5, 3)


def test_gpu_placement_benchmark_takes_a_sets_own_files_not_its_npu_copies(tiny_sets, tmp_path):
    from benchmarks.gpu_placement import expand

    listed = sorted(p.name for p in tiny_sets["fp32"].glob("*.tflite"))
    assert sorted(p.name for p in expand([str(tiny_sets["fp32"])])) == listed
    loose = tmp_path / "loose"
    (loose / "npu" / "qualcomm-sm8650").mkdir(parents=True)
    (loose / "a.tflite").write_bytes(b"x")
    (loose / "npu" / "qualcomm-sm8650" / "a.tflite").write_bytes(b"x")
    assert expand([str(loose)]) == [loose / "a.tflite"]
    with_npu = Path(shutil.copytree(tiny_sets["fp32"], tmp_path / "set"))
    (with_npu / "npu" / "qualcomm-sm8650").mkdir(parents=True)
    shutil.copy(with_npu / "decoder.tflite", with_npu / "npu" / "qualcomm-sm8650" / "decoder.tflite")
    assert sorted(p.name for p in expand([str(with_npu)])) == listed
    assert all(p.parent == with_npu for p in expand([str(with_npu)]))


def test_op_count_reads_the_flatbuffer_as_litert_does(tiny_sets):
    from ai_edge_litert.interpreter import Interpreter

    for path in sorted(tiny_sets["fp32"].glob("*.tflite")):
        interpreter = Interpreter(model_path=str(path))
        assert count_ops(path) == len(interpreter._get_ops_details()), path.name


def browser_or_skip():
    """LiteRT.js and Chromium, or a skip (a failure where CI promises them)."""
    from sd2tflite.core.errors import SD2TFLiteError
    from sd2tflite.serve.browser import find_chromium

    try:
        where = os.environ.get("SD2TFLITE_LITERTJS") or BROWSER_DIR
        find_litertjs(where)
        find_chromium()
    except SD2TFLiteError as exc:
        if os.environ.get("SD2TFLITE_REQUIRE_BROWSER"):
            pytest.fail(f"the browser tests were required: {exc}")
        pytest.skip(str(exc))
    return where


def test_gpu_placement_measured_in_chromium(tiny_sets):
    litertjs = browser_or_skip()
    files = [tiny_sets["fp32"] / "decoder.tflite", tiny_sets["int8"] / "text_encoder.tflite"]
    decoder, text = measure_gpu_placement(files, litertjs=litertjs, timeout=600)
    assert decoder.measured and text.measured, (decoder.reason, text.reason)
    assert "swiftshader" in decoder.adapter.lower()
    for result, path in ((decoder, files[0]), (text, files[1])):
        assert result.total_ops == count_ops(path)
        assert 0 < result.gpu_ops <= result.total_ops
        # every op the accelerator left on the CPU comes with its reason
        assert (result.gpu_ops < result.total_ops) == bool(result.rejected), result.rejected


def test_gpu_placement_not_measured_without_a_browser(tiny_sets, tmp_path):
    decoder = tiny_sets["fp32"] / "decoder.tflite"
    [result] = measure_gpu_placement([decoder], chromium=tmp_path / "no-chromium")
    assert not result.measured and "not an executable" in result.reason
    assert result.summary.startswith("not measured: ")
    [result] = measure_gpu_placement([decoder], litertjs=tmp_path)
    assert not result.measured and "npm install" in result.reason
    with pytest.raises(Exception, match="is not a file"):
        measure_gpu_placement([tmp_path / "missing.tflite"])


# ----------------------------------------------------------------- sd2tflite serve in Chromium

PROMPT = "a red circle on a blue background"
SCREENSHOT = Path(__file__).parents[1] / "docs" / "images" / "serve-tiny.png"


@contextlib.contextmanager
def served(set_dir, litertjs, **options):
    from sd2tflite.serve.app import ServeRequest, make_server

    server = make_server(ServeRequest(set_dir, port=0, litertjs=litertjs, **options))
    with server:
        yield server.url


def page(url, query: str, webgpu: bool = False, screenshot: Path | None = None, timeout: int = 300) -> dict:
    """The page after it finished (or stopped), as tests/browser/run_page.mjs reads it."""
    command = ["node", str(BROWSER_DIR / "run_page.mjs"), f"{url}?{query}", "--timeout", str(timeout)]
    command += ["--webgpu"] if webgpu else []
    command += ["--screenshot", str(screenshot)] if screenshot else []
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 60)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["status"] != "harness-error", result
    return result


def pixels(result) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(result["pixels"]), np.uint8)
    return raw.reshape(result["height"], result["width"], 4)[..., :3].astype(int)


def generated(set_dir, tmp_path, steps: int, seed: int, sampler: str = "ddim") -> np.ndarray:
    from PIL import Image

    out = tmp_path / f"generate-{sampler}.png"
    result = run(["generate", str(set_dir), PROMPT, "--steps", str(steps), "--seed", str(seed), "--sampler", sampler,
                  "-o", str(out), "-q", "--force"])
    assert result.exit_code == 0, result.output
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def query(steps=4, seed=3, sampler="ddim", prompt=PROMPT, **extra) -> str:
    items = {"run": 1, "steps": steps, "seed": seed, "sampler": sampler, "prompt": prompt, **extra}
    return "&".join(f"{k}={quote(str(v))}" for k, v in items.items())


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_page_draws_what_generate_draws_fp32_wasm(tiny_sets, tmp_path, sampler):
    litertjs = browser_or_skip()
    shot = tmp_path / "page.png"
    with served(tiny_sets["fp32"], litertjs) as url:
        result = page(url, query(sampler=sampler, accelerator="wasm"), screenshot=shot)
    assert result["status"] == "done", result
    difference = np.abs(pixels(result) - generated(tiny_sets["fp32"], tmp_path, 4, 3, sampler))
    assert difference.max() <= 1, (difference.max(), (difference > 1).sum())
    assert difference.mean() < 0.01
    # progress: every step was shown, the stages were timed
    shown = [p["stage"] for p in result["progress"]]
    assert any("denoising: step" in s for s in shown) and shown[-1].startswith(f"done: 4 {sampler} steps")
    assert result["step"] == result["steps"] == 4
    assert {"text encoder", "UNet", "decoder"} <= set(result["timings"])
    assert set(result["accelerators"].values()) == {"wasm"}
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unet_parts_run_in_their_own_workers_and_heaps(tiny_sets, tmp_path, monkeypatch):
    from sd2tflite.core.manifest import load_manifest
    from sd2tflite.serve import app

    litertjs = browser_or_skip()
    manifest = load_manifest(tiny_sets["fp32"])
    fit = app.browser_fit(manifest)
    # a heap limit every file fits alone but the UNet's parts do not together: the page still runs
    limit = max(f["heap_bytes"] for f in fit["files"])
    assert fit["stages"]["diffusion"]["heaps_bytes"] > limit
    monkeypatch.setattr(app, "WASM_HEAP_BYTES", limit)
    with served(tiny_sets["fp32"], litertjs) as url:
        result = page(url, query(steps=2, accelerator="wasm"))
    assert result["status"] == "done", result
    difference = np.abs(pixels(result) - generated(tiny_sets["fp32"], tmp_path, 2, 3))
    assert difference.max() <= 1, (difference.max(), (difference > 1).sum())
    # one row per file the page ran, each from its own worker, each with its own heap's size
    rows = result["placement"]
    ran = [a for a in manifest.artifacts if a.component != "image_encoder"]
    assert sorted(r["file"] for r in rows) == sorted(a.path for a in ran)
    assert len({r["worker"] for r in rows}) == len(rows)
    assert len([r for r in rows if r["component"] == "diffusion"]) == len(manifest.parts_of("diffusion")) >= 2
    for artifact in ran:
        [row] = [r for r in rows if r["file"] == artifact.path]
        assert artifact.bytes <= row["heapBytes"] < app.WASM_HEAP_BYTES, row  # the file is copied into its heap


def test_page_on_webgpu_shows_placement(tiny_sets, tmp_path):
    litertjs = browser_or_skip()
    # the README's screenshot is this page (SD2TFLITE_UPDATE_SCREENSHOT=1 writes it)
    shot = SCREENSHOT if os.environ.get("SD2TFLITE_UPDATE_SCREENSHOT") else tmp_path / "page.png"
    with served(tiny_sets["fp32"], litertjs) as url:
        fp32 = page(url, query(steps=4), webgpu=True, screenshot=shot)
    assert fp32["status"] == "done", fp32
    assert set(fp32["accelerators"].values()) == {"webgpu"}
    # SwiftShader's WebGPU computes in float32 here: the same picture as generate
    assert np.abs(pixels(fp32) - generated(tiny_sets["fp32"], tmp_path, 4, 3)).max() <= 1
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in fp32["placement"]:
        assert row["accelerator"] == "webgpu" and 0 < row["gpuOps"] <= row["totalOps"], row


# What the page draws against `sd2tflite generate` with the same seed (4 ddim steps), per precision
# and accelerator: (largest level difference, mean level difference). Measured (docs/browser.md):
# fp16 1 / 0.0002 (wasm), 1 / 0.0006 (WebGPU); dynamic 19 / 2.60, 17 / 2.15; int8 20 / 2.37 (every
# component of an int8 set runs on wasm, WebGPU too). The bounds leave room above those figures.
PAGE_TOLERANCE = {
    ("fp16", "wasm"): (1, 0.01), ("fp16", "webgpu"): (1, 0.01),
    ("dynamic", "wasm"): (32, 4.0), ("dynamic", "webgpu"): (32, 4.0),
    ("int8", "wasm"): (32, 4.0), ("int8", "webgpu"): (32, 4.0),
}


@pytest.mark.parametrize("quant,accelerator", sorted(PAGE_TOLERANCE))
def test_page_draws_what_generate_draws_in_every_precision(tiny_sets, tmp_path, quant, accelerator):
    litertjs = browser_or_skip()
    with served(tiny_sets[quant], litertjs) as url:
        result = page(url, query(accelerator=accelerator), webgpu=accelerator == "webgpu")
    assert result["status"] == "done", result
    # every component of an int8 set runs on wasm (LiteRT.js's WebGPU computes them wrongly)
    expected = {c: "wasm" if quant == "int8" else accelerator for c in result["accelerators"]}
    assert result["accelerators"] == expected
    difference = np.abs(pixels(result) - generated(tiny_sets[quant], tmp_path, 4, 3))
    largest, mean = PAGE_TOLERANCE[quant, accelerator]
    assert difference.max() <= largest and difference.mean() <= mean, (difference.max(), difference.mean())


def test_page_surfaces_errors(fp32_set, tmp_path):
    litertjs = browser_or_skip()
    long_prompt = " ".join(["red circle"] * 60)
    with served(fp32_set, litertjs) as url:
        result = page(url, query(prompt=long_prompt, accelerator="wasm"))
        assert result["status"] == "error" and result["errorShown"], result
        assert "tokens, the text encoder takes 77" in result["errorText"]
        with open(fp32_set / "decoder.tflite", "r+b") as f:  # modified after the server started
            f.seek(-1, 2)
            last = f.read(1)
            f.seek(-1, 2)
            f.write(bytes([last[0] ^ 1]))
        result = page(url, query(accelerator="wasm"))
    assert result["status"] == "error" and result["errorShown"], result
    assert "decoder.tflite: sha256 differs" in result["errorText"]


def test_page_refuses_a_set_too_large_for_the_wasm_heap(tiny_sets, monkeypatch):
    from sd2tflite.serve import app

    litertjs = browser_or_skip()
    monkeypatch.setattr(app, "WASM_HEAP_BYTES", app.HEAP_RESERVE_BYTES + 1000)
    with served(tiny_sets["fp32"], litertjs) as url:
        result = page(url, query(accelerator="wasm"))
    assert result["status"] == "error" and "GiB wasm heap" in result["errorText"], result
    assert result["step"] == 0 and not result["width"]  # nothing was generated


def test_browser_fit_estimates_each_workers_heap(tiny_sets):
    from sd2tflite.core.manifest import load_manifest
    from sd2tflite.serve.app import HEAP_RESERVE_BYTES, browser_fit

    manifest = load_manifest(tiny_sets["fp16"])
    fit = browser_fit(manifest)
    parts = manifest.parts_of("diffusion")
    assert len(parts) >= 2
    assert fit["fits"] and fit["stages"]["diffusion"]["file_bytes"] == sum(a.bytes for a in parts)
    # one worker (one wasm heap) per file: the largest part, not the UNet, has to fit a heap
    heaps = [int(5.5 * a.bytes) + HEAP_RESERVE_BYTES + 512 * 128 * 128 for a in parts]  # fp16: + float32 copies
    assert fit["stages"]["diffusion"]["heap_bytes"] == max(heaps)
    assert fit["stages"]["diffusion"]["heaps_bytes"] == sum(heaps)
    assert [f["heap_bytes"] for f in fit["files"] if f["component"] == "diffusion"] == heaps
    assert len(fit["files"]) == len(manifest.artifacts)
    # activations come on top, per output pixel: the autoencoder's at full image size most (measured on v1)
    [decoder] = manifest.parts_of("decoder")
    assert fit["stages"]["decoder"]["heap_bytes"] == int(5.5 * decoder.bytes) + HEAP_RESERVE_BYTES + 6144 * 128 * 128


def test_browser_fit_refuses_the_file_that_does_not_fit_its_heap(tiny_sets, monkeypatch):
    from sd2tflite.core.manifest import load_manifest
    from sd2tflite.serve import app

    manifest = load_manifest(tiny_sets["fp32"])
    by_file = {f["file"]: f for f in app.browser_fit(manifest)["files"]}
    unet = [by_file[a.path]["heap_bytes"] for a in manifest.parts_of("diffusion")]
    others = [f["heap_bytes"] for f in by_file.values() if f["component"] != "diffusion"]
    # a limit every file fits although the UNet's parts together do not: the set fits
    limit = max(unet + others)
    assert sum(unet) > limit
    monkeypatch.setattr(app, "WASM_HEAP_BYTES", limit)
    assert app.browser_fit(manifest)["fits"]
    # one byte less: the largest file is named, with the fix for its component
    monkeypatch.setattr(app, "WASM_HEAP_BYTES", limit - 1)
    fit = app.browser_fit(manifest)
    worst = max(by_file.values(), key=lambda f: f["heap_bytes"])
    assert not fit["fits"] and fit["reason"].startswith(f"{worst['file']} ({worst['component']}) needs about")
    assert ("--max-part-bytes" in fit["reason"]) == (worst["component"] == "diffusion")


def test_server_points_litertjs_bare_import_at_the_served_helper(tmp_path):
    from urllib.request import urlopen

    from sd2tflite.serve.server import PageServer

    litertjs = find_litertjs(browser_or_skip())
    on_disk = (litertjs.core / "dist" / "index.js").read_text()
    assert 'from "@litertjs/wasm-utils"' in on_disk  # what makes workers need the rewrite
    with PageServer(litertjs, port=0) as server:
        served = urlopen(server.url + "litertjs/core/dist/index.js").read().decode()
        helper = urlopen(server.url + "litertjs/wasm-utils/dist/index.js").read()
    assert "@litertjs/wasm-utils" not in served
    assert served.count('from "/litertjs/wasm-utils/dist/index.js"') == on_disk.count('from "@litertjs/wasm-utils"')
    assert len(served) == len(on_disk) + on_disk.count('"@litertjs/wasm-utils"') * (
        len("/litertjs/wasm-utils/dist/index.js") - len("@litertjs/wasm-utils"))
    assert b"createWasmLib" in helper


def test_serve_refuses_bad_sets_and_ports_in_one_line(fp32_set, tmp_path):
    litertjs = str(BROWSER_DIR)
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run(["serve", str(tmp_path / "empty"), "--litertjs", litertjs, "--port", "0"]), 1,
                          "no manifest.json")
    assert_one_line_error(run(["serve", str(fp32_set), "--litertjs", str(tmp_path), "--port", "0"]), 2,
                          "LiteRT.js is not installed", "npm install")
    with open(fp32_set / "text_encoder.tflite", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    assert_one_line_error(run(["serve", str(fp32_set), "--litertjs", litertjs, "--port", "0"]), 1,
                          "text_encoder.tflite", "sha256")


def test_serve_port_in_use_is_one_line(tiny_sets):
    import socket

    litertjs = browser_or_skip()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["serve", str(tiny_sets["fp32"]), "--litertjs", str(litertjs), "--port", str(port)])
    assert_one_line_error(result, 2, f"port {port}", "in use")
