"""`sd2tflite serve SET`: a local page that generates with the set's files in the browser.

The page (assets/index.html, app.js) loads the files the manifest lists, wires the UNet parts by
name as runtime/litert.py does, and runs the text encoder, the denoising loop (both guidance
branches, combined in float32 as the Python pipeline does) and the decoder on LiteRT.js: WebGPU
where the browser has it, wasm otherwise. The server gives what must equal `sd2tflite generate`
exactly: the prompt's tokens (runtime/tokenizer.py), the starting noise (runtime/samples.py, or
--noise) and each sampler step (runtime/samplers.py: the page posts the guided model output, the
server answers the next UNet input), so every sampler of `generate` works and the same noise gives
the same picture. Every file is checked against the manifest's sha256 before it is served.
"""

from __future__ import annotations

import base64
import itertools
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..core.errors import SD2TFLiteError, UsageError
from ..core.manifest import Manifest, path_in_set
from ..core.precisions import RECIPES
from ..runtime.hub import resolve_model_dir
from ..runtime.integrity import ensure_intact, file_sha256
from ..runtime.pipeline import GenerateSettings, Pipeline
from ..runtime.samplers import SAMPLERS, seeded_noise
from ..runtime.schedule import guidance_scale_embedding, timestep_embedding
from ..runtime.tokenizer import load_tokenizer
from .browser import LITERTJS_VERSION, find_litertjs
from .placement import count_ops
from .server import PageServer, Reply

# The wasm heap is 2 GiB (32-bit wasm): a model that does not fit logs "Failed to allocate
# tensors" and returns garbage without throwing. The page runs every model file in its own Web
# Worker, with its own LiteRT.js and heap, so what must fit one heap is the largest FILE (a UNet cut
# by --max-part-bytes has one heap per part); what a file needs is estimated from its size,
# conservatively (docs/browser.md).
WASM_HEAP_BYTES = 2 << 30
# heap bytes per file byte: the file itself in the heap, plus XNNPACK's packed float32 weights
# (int8 weights packed as int8). fp16: measured 5.2 on the v1 UNet (a 333 MiB part's heap was 1,734 MiB
# after loading, and its first call failed to allocate): the file, its weights dequantized to float32,
# and XNNPACK's packed float32 copy.
HEAP_PER_FILE_BYTE = {"fp32": 2.0, "fp16": 5.5}
# dynamic and int8: measured, an 824 MiB v1 UNet (512x512) does not fit 2 GiB, so at least
# (2 GiB - reserve) / 824 MiB = 2.17 per file byte
DEFAULT_HEAP_PER_FILE_BYTE = 2.5
HEAP_RESERVE_BYTES = 256 << 20  # per worker: LiteRT.js itself, activations, the inputs and outputs
# Activations on top, per output pixel (batch x height x width), measured on v1 dynamic sets (random
# weights): the decoder works at full image size, so its activations, not its 47 MiB file, fill its
# heap: 544 MiB at 256x256, 1,815 MiB at 512x512 (5.6 KiB per pixel above file x 2.5 + reserve); the
# first UNet part (64x64x320 activations at 512x512) grew to 723 MiB for a 182 MiB file.
ACTIVATION_BYTES_PER_PIXEL = {"decoder": 6144, "image_encoder": 6144, "taesd_decoder": 6144, "taesd_encoder": 6144,
                              "diffusion": 512}
PAGE_COMPONENTS = ("text_encoder", "diffusion", "decoder")  # what the page runs (text to image)
# Components of integer sets LiteRT.js computes wrongly on WebGPU (measured on the tiny int8 set: the
# text encoder and the UNet have relative error 1.0; see docs/browser.md): the page runs them on wasm,
# and the decoder too (not measured apart, not trusted).
_INTEGER = ("int8", "int8-strict", "int16x8")
WEBGPU_WRONG = {"text_encoder": _INTEGER, "diffusion": _INTEGER, "decoder": _INTEGER}


@dataclass(frozen=True)
class ServeRequest:
    model_dir: Path | str  # a set folder or hf://OWNER/REPO[@REV]
    host: str = "127.0.0.1"
    port: int = 8765
    litertjs: Path | str | None = None  # folder holding node_modules/@litertjs (default: sd2tflite's cache)
    noise_file: Path | None = None  # the starting noise for every run (as generate --noise)
    vocab: Path | None = None


def browser_fit(manifest: Manifest) -> dict:
    """What the page's workers need: one wasm heap per file (`files`), per component the largest
    worker's heap and all its workers' together (`stages`); `fits` False with `reason` when a file
    the page runs would not fit its heap."""
    factor = HEAP_PER_FILE_BYTE.get(manifest.quant, DEFAULT_HEAP_PER_FILE_BYTE)
    dims = manifest.model_dims
    pixels = dims.batch_size * dims.img_height * dims.img_width
    files, stages = [], {}
    for component in manifest.components:
        parts = manifest.parts_of(component)
        activations = ACTIVATION_BYTES_PER_PIXEL.get(component, 0) * pixels
        heaps = [int(a.bytes * factor) + HEAP_RESERVE_BYTES + activations for a in parts]
        files += [{"file": a.path, "component": component, "file_bytes": a.bytes, "heap_bytes": h}
                  for a, h in zip(parts, heaps)]
        stages[component] = {"file_bytes": sum(a.bytes for a in parts), "files": len(parts),
                             "heap_bytes": max(heaps, default=0), "heaps_bytes": sum(heaps)}
    used = [f for f in files if f["component"] in PAGE_COMPONENTS]
    worst = max(used, key=lambda f: f["heap_bytes"]) if used else None
    fits = worst is None or worst["heap_bytes"] <= WASM_HEAP_BYTES
    reason = ""
    if not fits:
        fix = ("convert it with a smaller --max-part-bytes (each UNet part runs in its own heap), "
               "--img-height/--img-width 256, or --quant dynamic or int8"
               if worst["component"] == "diffusion" else
               "convert a smaller set (--img-height/--img-width 256, --quant dynamic or int8)")
        reason = (f"{worst['file']} ({worst['component']}) needs about {worst['heap_bytes'] / 2**30:.2f} GiB of its "
                  f"worker's 2 GiB wasm heap ({worst['file_bytes'] / 2**20:,.0f} MiB of {manifest.quant} file): {fix}")
    return {"fits": fits, "reason": reason, "files": files, "stages": stages, "heap_limit_bytes": WASM_HEAP_BYTES,
            "heap_per_file_byte": factor}


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.float32).tobytes()).decode()


class ServeApp:
    """The routes of one served set, on a PageServer."""

    def __init__(self, request: ServeRequest):
        self.request = request
        self.model_dir = resolve_model_dir(str(request.model_dir))
        self.manifest = ensure_intact(self.model_dir, load_in_litert=False, reuse_hashes=True)
        self.dims = self.manifest.model_dims
        self.tokenizer = load_tokenizer(self.manifest.family, request.vocab, self.manifest.tokenizer)
        self.pipeline = Pipeline.for_manifest({}, self.manifest, self.tokenizer)
        self.noise = self._load_noise(request.noise_file) if request.noise_file else None
        self.litertjs = find_litertjs(request.litertjs)
        self.fit = browser_fit(self.manifest)
        self.runs: dict[str, dict] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.server = PageServer(self.litertjs, request.host, request.port)
        for artifact in self.manifest.artifacts:
            self.server.gets[f"/set/{artifact.path}"] = (lambda a: lambda q: self._file(a))(artifact)
        self.server.gets["/api/config"] = self._config
        self.server.posts["/api/start"] = self._start
        self.server.posts["/api/step"] = self._step

    def _load_noise(self, path: Path) -> np.ndarray:
        from ..runtime.generate import _load_noise

        noise = _load_noise(Path(path))
        return self.pipeline.starting_noise(GenerateSettings("", noise=noise, seed=None))  # checks the shape

    # ----------------------------------------------------------------- routes

    def _file(self, artifact) -> Reply:
        path = path_in_set(self.model_dir, artifact.path)
        if not path.is_file():
            return Reply.error(f"{artifact.path} is missing from the set: copy the whole set again", 410)
        if file_sha256(path, reuse=True) != artifact.sha256:
            return Reply.error(f"{artifact.path}: sha256 differs from the manifest's (modified since the server "
                               "started): copy it again or convert again", 409)
        return Reply(file=path, content_type="application/octet-stream")

    def _config(self, query) -> Reply:
        m = self.manifest
        components = {}
        for component in m.components:
            components[component] = [{
                "url": f"/set/{a.path}", "path": a.path, "bytes": a.bytes, "sha256": a.sha256,
                "signature": a.signature_key, "wiring": a.wiring,
                "ops": count_ops(path_in_set(self.model_dir, a.path)),
                "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in a.inputs],
                "outputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in a.outputs],
            } for a in m.parts_of(component)]
        defaults = self.pipeline.resolve(GenerateSettings(""))
        return Reply.json({
            "set": str(self.model_dir), "family": m.family, "quant": m.quant, "recipe": RECIPES[m.quant].description,
            "dims": {"img_height": self.dims.img_height, "img_width": self.dims.img_width,
                     "batch_size": self.dims.batch_size, "max_text_length": self.dims.max_text_length,
                     "latent_shape": list(self.dims.latent_shape)},
            "pixels": m.pixels, "components": components,
            "samplers": list(SAMPLERS), "defaults": {"sampler": defaults.sampler, "steps": defaults.steps,
                                                     "guidance": defaults.guidance},
            "noise": "the --noise file" if self.noise is not None else "seeded (as generate --seed)",
            "browser": self.fit, "litertjs": self.litertjs.version, "litertjs_tested": LITERTJS_VERSION,
            "webgpu_wrong": {c: m.quant in quants for c, quants in WEBGPU_WRONG.items()},
        })

    def _start(self, query, body: bytes) -> Reply:
        import json

        try:
            asked = json.loads(body or b"{}")
        except (ValueError, RecursionError):
            return Reply.error("the request is not JSON")
        if not isinstance(asked, dict):
            return Reply.error("the request is not a JSON object of settings")
        if not self.fit["fits"]:
            return Reply.error(self.fit["reason"], 413)
        try:
            settings = GenerateSettings(
                str(asked.get("prompt", "")), steps=_int(asked.get("steps"), "steps"),
                guidance=_float(asked.get("guidance"), "guidance"), seed=_int(asked.get("seed"), "seed") or 0,
                negative_prompt=asked.get("negative_prompt") or None, sampler=asked.get("sampler") or None)
            if self.noise is not None:
                settings = replace(settings, noise=self.noise, seed=None)
            settings = self.pipeline.resolve(settings)
            p = self.pipeline
            embedded = p.guidance_embedding_dim > 0
            guided = settings.guidance > 1.0 and not embedded
            length = self.dims.max_text_length
            tokens = p.tokenizer.tokens_for(settings.prompt, length)
            unconditional = p.tokenizer.tokens_for(settings.negative_prompt or "", length) if guided else None
            sampler = p.make_sampler(settings)
            noise = p.starting_noise(settings)
        except SD2TFLiteError as exc:
            return Reply.error(str(exc))
        latent = sampler.initial_latent(noise).astype(np.float32)
        current = {"sampler": sampler, "latent": latent, "index": 0, "noise_source": seeded_noise(noise),
                   "steps": len(sampler.timesteps)}
        with self._lock:
            sid = str(next(self._ids))
            self.runs = {sid: current}  # one run at a time: a new run replaces the last
        w_emb = guidance_scale_embedding(settings.guidance, self.dims.batch_size, p.guidance_embedding_dim) \
            if embedded else None
        return Reply.json({"run_id": sid, "tokens": tokens, "unconditional_tokens": unconditional,
                           "guided": guided, "guidance": settings.guidance, "sampler": settings.sampler,
                           "steps": current["steps"], "seed": settings.seed,
                           "notes": p.sampler_notes(settings),
                           "guidance_embedding": _b64(w_emb) if w_emb is not None else None,
                           **self._next_input(current)})

    def _next_input(self, current: dict) -> dict:
        index = current["index"]
        if index >= current["steps"]:
            return {"done": True, "latent": _b64(current["latent"])}
        sampler = current["sampler"]
        model_input = sampler.scale_input(current["latent"], index)
        t_emb = timestep_embedding(sampler.timesteps[index], self.dims.batch_size, self.dims.timestep_dim)
        return {"done": False, "index": index, "model_input": _b64(model_input), "timestep_embedding": _b64(t_emb)}

    def _step(self, query, body: bytes) -> Reply:
        current = self.runs.get(query.get("run", ""))
        if current is None:
            return Reply.error("this run was replaced by a newer one (one run at a time): start again", 409)
        shape = self.dims.latent_shape
        if len(body) != 4 * int(np.prod(shape)):
            return Reply.error(f"the step needs {int(np.prod(shape))} float32 values, got {len(body)} bytes")
        output = np.frombuffer(body, dtype=np.float32)
        if not np.isfinite(output).all():
            return Reply.error(f"the diffusion output holds NaN/Inf values at step {current['index'] + 1}: the set is "
                               "broken, overflows, or the browser computed it wrongly (try ?accelerator=wasm)")
        index = current["index"]
        latent = current["sampler"].step(output.reshape(shape), index, current["latent"], current["noise_source"])
        current["latent"] = np.asarray(latent, dtype=np.float32)
        current["index"] = index + 1
        return Reply.json(self._next_input(current))


def _int(value, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} {value!r} is not a whole number") from None


def _float(value, name: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} {value!r} is not a number") from None


def make_server(request: ServeRequest) -> PageServer:
    """The page server for a set, not yet started: every refusal (no manifest, a modified file, no
    LiteRT.js, the port in use) is raised here, before anything listens."""
    return ServeApp(request).server
