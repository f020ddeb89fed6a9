"""Measurements: peak resident memory of a process tree, sampled from /proc (Linux), and the
latency benchmark behind `sd2tflite bench` (cases, worker, JSON format, table, picture).

`ru_maxrss` only covers one process at a time; a conversion spreads over worker processes, so the
honest figure for "how much RAM does this need" is the peak of the sum over the whole tree.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import SD2TFLiteError, UsageError


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            text = (task / "children").read_text().split()
            kids.extend(int(k) for k in text)
    except OSError:
        pass
    return kids


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss_bytes(root: int) -> int:
    """Current RSS of `root` and all its descendants."""
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _rss_bytes(pid)
        stack.extend(_children(pid))
    return total


class PeakTreeRSS:
    """Samples the RSS of a process tree in a background thread; `.peak` is the maximum seen."""

    def __init__(self, root: int | None = None, interval: float = 0.2):
        self.root = root or os.getpid()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.root))
            time.sleep(self.interval)

    def __enter__(self) -> "PeakTreeRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_bytes(self.root))


# ============================================================================ latency benchmark
#
# `sd2tflite bench`: one case = one set × one thread count × one backend (litert, keras,
# keras-xla), each measured in a fresh `python -m sd2tflite.bench_worker` process so its peak RSS
# is its own and LiteRT never shares a process with TensorFlow. The worker imports this module;
# only the Keras functions import TensorFlow, lazily.

BENCH_FORMAT_VERSION = 1
BACKENDS = {
    "litert": "LiteRT (ai-edge-litert interpreter, XNNPACK)",
    "keras": "Keras, keras-cv's jit_compile=False (predict_on_batch)",
    "keras-xla": "Keras, keras-cv's jit_compile=True (XLA)",
}
COMPARE = {"keras": ("keras", "keras-xla")}  # --compare NAME -> the backends it adds
PLOT_MARKER = b"sd2tflite bench"  # the plot's PNG Software text: an earlier plot may be replaced
BENCH_PROMPT = "a photograph of an astronaut riding a horse"
GUIDANCE = 7.5
TIMESTEP = 500  # the UNet's input noise level for the per-component figures


@dataclass(frozen=True)
class BenchRequest:
    model_dirs: tuple[Path, ...]
    threads: tuple[int, ...] = ()  # default: all cores
    repeats: int = 10
    warmup: int = 1
    steps: int = 3
    image_repeats: int = 1
    compare: tuple[str, ...] = ()
    seed: int = 0
    vocab: Path | None = None

    def settings(self) -> dict:
        return {"threads": list(self.threads or (os.cpu_count() or 1,)), "repeats": self.repeats,
                "warmup": self.warmup, "steps": self.steps, "image_repeats": self.image_repeats,
                "compare": list(self.compare), "seed": self.seed, "guidance": GUIDANCE,
                "prompt": BENCH_PROMPT, "timestep": TIMESTEP}


def _check_request(request: BenchRequest) -> None:
    for flag, value, minimum in (("--repeats", request.repeats, 1), ("--steps", request.steps, 1),
                                 ("--warmup", request.warmup, 0), ("--image-repeats", request.image_repeats, 1)):
        if value < minimum:
            raise UsageError(f"{flag} {value} must be at least {minimum}")
    bad = [t for t in request.threads if t < 1]
    if bad:
        raise UsageError(f"--threads {bad[0]} must be at least 1 (default: all {os.cpu_count()} cores)")
    unknown = [c for c in request.compare if c not in COMPARE]
    if unknown:
        raise UsageError(f"--compare {unknown[0]!r} is unknown: use {', '.join(COMPARE)}")
    if not request.model_dirs:
        raise UsageError("give at least one converted set's directory")


def plan_cases(request: BenchRequest, manifests: list) -> list[dict]:
    """The cases to run, as plain data. Keras cases depend only on the weights and shapes, so sets
    converted from the same weights (one per precision) share one Keras reference per thread count."""
    cases, seen = [], set()
    for directory, manifest in zip(request.model_dirs, manifests):
        for threads in request.threads or (os.cpu_count() or 1,):
            backends = ["litert"] + [b for c in request.compare for b in COMPARE[c]]
            for backend in backends:
                reference = _reference_key(manifest, threads) if backend != "litert" else None
                if reference is not None and (backend, reference) in seen:
                    continue
                seen.add((backend, reference))
                cases.append({"directory": str(directory), "backend": backend, "threads": threads,
                              "quant": manifest.quant if backend == "litert" else "fp32",
                              "family": manifest.family, "dims": manifest.dims, "reference": reference,
                              **{k: v for k, v in request.settings().items() if k not in ("threads", "compare")},
                              "vocab": str(request.vocab) if request.vocab else None})
    return cases


def _reference_key(manifest, threads: int) -> str:
    return json.dumps([manifest.family, manifest.dims, manifest.weights, threads], sort_keys=True)


def bench(request: BenchRequest, on_case: Callable[[int, int, dict], None] | None = None) -> dict:
    """Runs every case in its own process; returns the report (BENCH_SCHEMA)."""
    from .integrity import ensure_intact

    _check_request(request)
    manifests = [ensure_intact(Path(d), reuse_hashes=True) for d in request.model_dirs]
    cases = plan_cases(request, manifests)
    results, failures = [], []
    for i, case in enumerate(cases):
        if on_case:
            on_case(i, len(cases), case)
        try:
            results.append(run_case_in_subprocess(case))
        except UsageError:
            raise  # the same for every case
        except SD2TFLiteError as exc:
            # One case out of memory (Keras XLA at 512x512, say) should not cost the others' figures.
            failures.append({**{k: case[k] for k in ("directory", "backend", "threads")}, "error": str(exc)})
    if on_case:
        on_case(len(cases), len(cases), {})
    if not results:
        raise SD2TFLiteError(f"every bench case failed; the first: {failures[0]['error']}")
    report = {
        "format_version": BENCH_FORMAT_VERSION,
        "settings": request.settings(),
        "machine": machine(),
        "versions": _versions(request.compare),
        "sets": [_set_summary(d, m) for d, m in zip(request.model_dirs, manifests)],
        "cases": results,
        "failures": failures,
    }
    validate_bench_json(report)
    return report


def _set_summary(directory: Path, manifest) -> dict:
    return {"directory": str(directory), "family": manifest.family, "quant": manifest.quant,
            "dims": manifest.dims, "weights": manifest.weights,
            "files": [{"path": a.path, "component": a.component, "part": a.part, "bytes": a.bytes,
                       "conversion_seconds": a.conversion_seconds, "peak_rss_bytes": a.peak_rss_bytes}
                      for a in manifest.artifacts]}


def machine() -> dict:
    import platform

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {"cpu_count": os.cpu_count() or 1, "ram_bytes": int(ram), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version()}


def _versions(compare) -> dict:
    from importlib import metadata

    from . import __version__

    versions = {"sd2tflite": __version__}
    dists = ["ai-edge-litert", "numpy"] + (["tensorflow-cpu", "tensorflow", "keras", "keras-cv"] if compare else [])
    for dist in dists:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def run_case_in_subprocess(case: dict) -> dict:
    """One case in a fresh interpreter; its own peak RSS is the child's ru_maxrss."""
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    proc = subprocess.run([sys.executable, "-m", "sd2tflite.bench_worker"], input=json.dumps(case),
                          capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise SD2TFLiteError(f"the {case['backend']} benchmark of {case['directory']} failed "
                             f"(exit code {proc.returncode}): {tail}") from None
    if "error" in result:
        raise (UsageError if result.get("exit_code") == 2 else SD2TFLiteError)(result["error"])
    return result


# ----------------------------------------------------------------------------- inside the worker


def measure(fn: Callable[[], object], repeats: int, warmup: int) -> dict:
    """First call (tracing, XLA compilation, lazy allocation), `warmup` untimed calls, then
    `repeats` timed ones."""
    first = _seconds(fn)
    for _ in range(warmup):
        fn()
    times = [_seconds(fn) for _ in range(repeats)]
    return {"first_seconds": first, **_summary(times)}


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _summary(times: list[float]) -> dict:
    import numpy as np

    return {"median_seconds": float(np.median(times)), "p90_seconds": float(np.percentile(times, 90)),
            "times": [round(t, 6) for t in times]}


def _stage(name: str, kind: str, load: Callable[[], object], run: Callable[[object], object],
           case: dict, file_bytes: int | None = None) -> tuple[dict, object]:
    """Load (timed), measure, and the process's peak RSS meanwhile (sampled)."""
    with PeakTreeRSS(os.getpid(), interval=0.05) as rss:
        start = time.perf_counter()
        loaded = load()
        load_seconds = time.perf_counter() - start
        figures = measure(lambda: run(loaded), case["repeats"], case["warmup"])
    return {"name": name, "kind": kind, "bytes": file_bytes, "load_seconds": load_seconds, **figures,
            "peak_rss_bytes": rss.peak}, loaded


def bench_inputs(dims, seed: int) -> dict[str, dict]:
    """Seeded named inputs per component, shaped like the pipeline's (the same for every backend)."""
    from .calibration import synthetic_samples
    from .components import COMPONENTS
    from .schedule import timestep_embedding

    inputs = {c: synthetic_samples(c, dims, 1, seed)[0] for c in COMPONENTS}
    inputs["diffusion"]["timestep_embedding"] = timestep_embedding(TIMESTEP, dims.batch_size)
    return inputs


class CallLog:
    """Start times of component calls during one image, to cut it into UNet steps."""

    def __init__(self):
        self.calls: list[tuple[str, float]] = []

    def wrap(self, name: str, fn: Callable) -> Callable:
        def logged(*args, **kwargs):
            self.calls.append((name, time.perf_counter()))
            return fn(*args, **kwargs)

        return logged

    def step_seconds(self) -> list[float]:
        """A step runs from its first UNet call (of two: unconditional, conditional) to the next
        step's, the last one to the decoder call: 2 UNet calls plus the update."""
        unet = [t for name, t in self.calls if name == "diffusion"]
        decode = [t for name, t in self.calls if name == "decoder"]
        marks = unet[0::2] + decode[:1]
        return [b - a for a, b in zip(marks, marks[1:])]


def _image_stage(name: str, make_run: Callable[[CallLog], Callable[[], object]], load_seconds: float,
                 case: dict) -> list[dict]:
    """Whole images (first, then `image_repeats` timed), and the UNet steps inside the timed ones."""
    with PeakTreeRSS(os.getpid(), interval=0.05) as rss:
        first = _seconds(make_run(CallLog()))
        times, steps = [], []
        for _ in range(case["image_repeats"]):
            log = CallLog()
            times.append(_seconds(make_run(log)))
            steps += log.step_seconds()
    common = {"bytes": None, "load_seconds": load_seconds, "peak_rss_bytes": rss.peak}
    return [{"name": "unet_step", "kind": "step", **common, "first_seconds": None, **_summary(steps)},
            {"name": name, "kind": "image", **common, "first_seconds": first, **_summary(times)}]


def _noise(dims, seed: int):
    import numpy as np

    return np.random.default_rng(seed).standard_normal(dims.latent_shape).astype(np.float32)


def run_litert_case(case: dict) -> list[dict]:
    """Every part, every component (UNet chained), then whole images through sd2tflite's pipeline."""
    from .components import ModelDims
    from .manifest import load_manifest, safe_relative_path
    from .pipeline import GenerateSettings, Pipeline
    from .runtime import LiteRTComponents, interpreter, load_component

    directory, threads = Path(case["directory"]), case["threads"]
    manifest = load_manifest(directory)
    dims = ModelDims(**manifest.dims)
    inputs = bench_inputs(dims, case["seed"])
    stages = []
    for component in manifest.components:
        parts = manifest.parts_of(component)
        if len(parts) > 1:
            values = dict(inputs[component])  # each part is fed what the earlier parts produce
            for part in parts:
                feed = {s.name: values[s.name].astype(s.dtype) for s in part.inputs}
                stage, runner = _stage(
                    f"{component}_part{part.part}", "part",
                    lambda p=part: interpreter(directory / safe_relative_path(p.path), threads)
                    .get_signature_runner(p.signature_key),
                    lambda r, f=feed: r(**f), case, part.bytes)
                values.update(runner(**feed))
                stages.append(stage)
                del runner
        stage, _ = _stage(component, "component",
                          lambda c=component: load_component(directory, c, manifest, threads),
                          lambda model, c=component: model(**inputs[c]), case, sum(p.bytes for p in parts))
        stages.append(stage)
    gc.collect()

    components = LiteRTComponents(directory, manifest, threads)
    needed = ("text_encoder", "diffusion", "decoder")
    load_seconds = _seconds(lambda: [components[c] for c in needed])
    pipeline = Pipeline(components, dims, _tokenizer(manifest.family, case["vocab"]))
    settings = GenerateSettings(BENCH_PROMPT, steps=case["steps"], guidance=GUIDANCE,
                                noise=_noise(dims, case["seed"]))

    def make_run(log: CallLog):
        logged = Pipeline({c: log.wrap(c, components[c]) for c in needed}, dims, pipeline.tokenizer)
        return lambda: logged.generate(settings)

    return stages + _image_stage("image", make_run, load_seconds, case)


def _tokenizer(family: str, vocab: str | None):
    """CLIP's tokenizer when its vocabulary is at hand; else the generated one (same token count,
    so the same timings: the benchmark does not look at the image)."""
    from .tokenizer import ClipTokenizer, load_tokenizer

    try:
        return load_tokenizer(family, vocab)
    except UsageError:
        if vocab is not None:
            raise
        return ClipTokenizer.generated()


def run_keras_case(case: dict) -> list[dict]:
    """The Keras components from the weights the manifest records, called as keras-cv calls them
    (predict_on_batch, compiled with jit_compile off or on), then keras-cv's own generate_image."""
    import contextlib
    import io

    import numpy as np
    import tensorflow as tf

    from .components import FAMILIES, ModelDims
    from .manifest import load_manifest
    from .weights import build_with_weights, from_identity

    tf.config.threading.set_intra_op_parallelism_threads(case["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(case["threads"])
    jit = case["backend"] == "keras-xla"
    manifest = load_manifest(Path(case["directory"]))
    family, dims = FAMILIES[manifest.family], ModelDims(**manifest.dims)
    inputs = bench_inputs(dims, case["seed"])

    def build(component: str):
        model = build_with_weights(manifest.family, component, dims,
                                   from_identity(manifest.weights.get(component, {}), family, component))
        model.compile(jit_compile=jit)
        return model

    def keras_inputs(sample: dict):
        return next(iter(sample.values())) if len(sample) == 1 else sample

    models, stages, load_seconds = {}, [], 0.0
    for component in manifest.components:
        stage, models[component] = _stage(
            component, "component", lambda c=component: build(c),
            lambda model, c=component: model.predict_on_batch(keras_inputs(inputs[c])), case)
        stages.append(stage)
        load_seconds += stage["load_seconds"]

    from keras_cv.models import StableDiffusion, StableDiffusionV2

    with contextlib.redirect_stdout(io.StringIO()):  # keras-cv's licence note
        reference = (StableDiffusionV2 if manifest.family == "v2" else StableDiffusion)(
            img_height=dims.img_height, img_width=dims.img_width, jit_compile=jit)
    tokens = np.asarray([_tokenizer(manifest.family, case["vocab"]).tokens_for(BENCH_PROMPT)], np.int32)
    positions = np.arange(dims.max_text_length, dtype=np.int32)[None]
    noise = _noise(dims, case["seed"])

    def make_run(log: CallLog):
        reference._text_encoder = _Logged(models["text_encoder"], "text_encoder", log)
        reference._diffusion_model = _Logged(models["diffusion"], "diffusion", log)
        reference._decoder = _Logged(models["decoder"], "decoder", log)

        def run():
            with contextlib.redirect_stdout(io.StringIO()):  # keras-cv's progress bar
                context = reference.text_encoder.predict_on_batch({"tokens": tokens, "positions": positions})
                return reference.generate_image(context, batch_size=dims.batch_size, num_steps=case["steps"],
                                                unconditional_guidance_scale=GUIDANCE, diffusion_noise=noise)
        return run

    return stages + _image_stage("image", make_run, load_seconds, case)


class _Logged:
    """A Keras model whose predict_on_batch calls are logged (keras-cv calls nothing else)."""

    def __init__(self, model, name: str, log: CallLog):
        self.predict_on_batch = log.wrap(name, model.predict_on_batch)


def run_case(case: dict) -> dict:
    """Measures one case in this process (the worker's entry point)."""
    import resource

    start = time.perf_counter()
    stages = (run_litert_case if case["backend"] == "litert" else run_keras_case)(case)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    keep = ("directory", "backend", "threads", "quant", "family", "dims", "reference")
    return {**{k: case[k] for k in keep}, "wall_seconds": time.perf_counter() - start,
            "peak_rss_bytes": int(peak_kib) * 1024, "stages": stages}


# ----------------------------------------------------------------------------- the JSON format

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_STAGE_SCHEMA = {
    "type": "object",
    "required": ["name", "kind", "bytes", "load_seconds", "first_seconds", "median_seconds",
                 "p90_seconds", "times", "peak_rss_bytes"],
    "properties": {
        "name": {"type": "string"},  # component, COMPONENT_partN, unet_step, image
        "kind": {"type": "string", "enum": ["part", "component", "step", "image", "conversion"]},
        "bytes": {"type": ["integer", "null"]},  # file bytes (LiteRT, conversion); null for Keras
        "load_seconds": _NUMBER_OR_NULL,  # LiteRT: interpreter creation; Keras: build + weights
        "first_seconds": _NUMBER_OR_NULL,  # the first call (tracing, XLA compilation, allocation)
        "median_seconds": {"type": "number"},  # over `times`, after the first call and the warm-up
        "p90_seconds": {"type": "number"},
        "times": {"type": "array", "items": {"type": "number"}},
        "peak_rss_bytes": {"type": "integer"},  # process RSS peak while this stage ran (sampled)
    },
}
BENCH_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "sd2tflite bench report",
    "type": "object",
    "required": ["format_version", "settings", "machine", "versions", "sets", "cases"],
    "properties": {
        "format_version": {"type": "integer", "const": BENCH_FORMAT_VERSION},
        "settings": {
            "type": "object",
            "required": ["threads", "repeats", "warmup", "steps", "image_repeats", "compare", "seed"],
            "properties": {"threads": {"type": "array", "items": {"type": "integer"}},
                           "repeats": {"type": "integer"}, "warmup": {"type": "integer"},
                           "steps": {"type": "integer"}, "image_repeats": {"type": "integer"},
                           "compare": {"type": "array", "items": {"type": "string"}},
                           "seed": {"type": "integer"}},
        },
        "machine": {"type": "object", "required": ["cpu_count", "ram_bytes"],
                    "properties": {"cpu_count": {"type": "integer"}, "ram_bytes": {"type": "integer"}}},
        "versions": {"type": "object"},
        "sets": {"type": "array", "items": {"type": "object", "required": ["directory", "quant", "dims", "files"]}},
        "cases": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["directory", "backend", "threads", "quant", "dims", "wall_seconds",
                             "peak_rss_bytes", "stages"],
                "properties": {
                    "directory": {"type": "string"},
                    "backend": {"type": "string", "enum": [*BACKENDS, "convert"]},
                    "threads": {"type": ["integer", "null"]},
                    "quant": {"type": "string"},
                    "dims": {"type": "object"},
                    "wall_seconds": {"type": "number"},
                    "peak_rss_bytes": {"type": "integer"},  # the case's whole process (ru_maxrss)
                    "stages": {"type": "array", "items": _STAGE_SCHEMA},
                },
            },
        },
        "failures": {  # cases that did not finish (absent in reports written before it existed)
            "type": "array",
            "items": {"type": "object", "required": ["directory", "backend", "threads", "error"],
                      "properties": {"directory": {"type": "string"}, "backend": {"type": "string"},
                                     "threads": {"type": "integer"}, "error": {"type": "string"}}},
        },
    },
}

_JSON_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
               "null": type(None)}


def schema_problems(value, schema: dict, where: str = "report") -> list[str]:
    """Every place `value` breaks the subset of JSON Schema that BENCH_SCHEMA uses."""
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    ok = any(isinstance(value, _JSON_TYPES[k]) and not (k in ("integer", "number") and isinstance(value, bool))
             for k in kinds)
    if not ok:
        return [f"{where} should be {' or '.join(kinds)}"]
    problems = []
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where} is {value!r}, expected {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where} is {value!r}, expected one of {schema['enum']}")
    if isinstance(value, dict):
        problems += [f"{where}.{key} is missing" for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                problems += schema_problems(value[key], sub, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += schema_problems(item, schema["items"], f"{where}[{i}]")
    return problems


def validate_bench_json(data) -> None:
    problems = schema_problems(data, BENCH_SCHEMA)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SD2TFLiteError(f"not an sd2tflite bench report: {problems[0]}{more}")


def conversion_case(result: dict) -> dict:
    """A scripts/bench_convert.py result as a case, so it prints in the same table."""
    stages = [{"name": f["file"].removesuffix(".tflite"), "kind": "conversion", "bytes": f["bytes"],
               "load_seconds": None, "first_seconds": None, "median_seconds": f["seconds"],
               "p90_seconds": f["seconds"], "times": [f["seconds"]], "peak_rss_bytes": f["peak_rss_bytes"]}
              for f in result["files"]]
    return {"directory": result.get("command", ""), "backend": "convert", "threads": None,
            "quant": result["quant"], "dims": {"img_height": result["img"], "img_width": result["img"]},
            "wall_seconds": result["total_seconds"], "peak_rss_bytes": result["peak_tree_rss_bytes"],
            "stages": stages}


# ----------------------------------------------------------------------------- table and picture


def case_label(case: dict) -> str:
    dims = case["dims"]
    size = f"{dims['img_width']}x{dims['img_height']}"
    what = case["quant"] if case["backend"] in ("litert", "convert") else case["backend"]
    threads = f", threads={case['threads']}" if case.get("threads") else ""
    return f"{what} {size}{threads}"


def _reference_medians(cases: list[dict]) -> dict:
    """(backend, reference key, stage) -> median, for the ratio columns."""
    return {(c["backend"], c.get("reference"), s["name"]): s["median_seconds"]
            for c in cases if c["backend"] in ("keras", "keras-xla") for s in c["stages"]}


def markdown(cases: list[dict]) -> str:
    """One Markdown table: a row per case and stage; ratio columns (Keras median / this median,
    > 1 means faster than Keras) when the report has Keras cases."""
    references = _reference_medians(cases)
    ratio_backends = [b for b in ("keras", "keras-xla") if any(c["backend"] == b for c in cases)]
    header = ["case", "backend", "stage", "file MiB", "load s", "first s", "median s", "p90 s",
              "peak RSS GB"] + [f"{b} / this" for b in ratio_backends]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    fmt = lambda v, spec=".3f": "–" if v is None else format(v, spec)  # noqa: E731
    for case in cases:
        reference = case.get("reference") or _litert_reference(case, cases)
        for s in case["stages"] + [_process_row(case)]:
            ratios = []
            for b in ratio_backends:
                base = references.get((b, reference, s["name"]))
                ratios.append("–" if base is None or s["kind"] in ("conversion", "process")
                              else f"{base / s['median_seconds']:.2f}×")
            mib = None if s["bytes"] is None else s["bytes"] / 2**20
            lines.append("| " + " | ".join([
                case_label(case), case["backend"], s["name"], fmt(mib, ",.1f"), fmt(s["load_seconds"]),
                fmt(s["first_seconds"]), fmt(s["median_seconds"]), fmt(s["p90_seconds"]),
                fmt(s["peak_rss_bytes"] / 1e9, ".2f"), *ratios]) + " |")
    return "\n".join(lines)


def _litert_reference(case: dict, cases: list[dict]) -> str | None:
    """The Keras reference key a LiteRT case is compared with: same family, shapes, threads."""
    for c in cases:
        if c["backend"] in ("keras", "keras-xla") and c["threads"] == case["threads"] \
                and c["dims"] == case["dims"] and c.get("family") == case.get("family"):
            return c["reference"]
    return None


def _process_row(case: dict) -> dict:
    return {"name": "(whole process)", "kind": "process", "bytes": None, "load_seconds": None,
            "first_seconds": None, "median_seconds": case["wall_seconds"], "p90_seconds": None,
            "peak_rss_bytes": case["peak_rss_bytes"]}


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'sd2tflite[plot]'") from None


def plot(cases: list[dict], path: Path) -> Path:
    """Bar charts: median latency per stage (log scale) and file size per component, one bar per case."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    timed = [c for c in cases if c["backend"] != "convert"]
    stages = list(dict.fromkeys(s["name"] for c in timed for s in c["stages"]))
    sized = list({c["directory"]: c for c in timed if c["backend"] == "litert"}.values())  # one per set
    files = list(dict.fromkeys(s["name"] for c in sized for s in c["stages"] if s["bytes"] is not None))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 1.2 * len(stages)), 9))
    for axis, names, group, value, unit in (
            (top, stages, timed, lambda s: s["median_seconds"], "median seconds (log)"),
            (bottom, files, sized, lambda s: s["bytes"] and s["bytes"] / 2**20, "file MiB")):
        width = 0.8 / max(1, len(group))
        for i, case in enumerate(group):
            by_name = {s["name"]: s for s in case["stages"]}
            heights = [value(by_name[n]) if n in by_name and value(by_name[n]) else 0 for n in names]
            axis.bar(np.arange(len(names)) + i * width, heights, width, label=case_label(case))
        axis.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=20, ha="right")
        axis.set_ylabel(unit)
    top.set_yscale("log")
    top.legend(fontsize="small")
    bottom.legend([case_label(c).split(",")[0] for c in sized], fontsize="small")
    top.set_title("sd2tflite bench")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix or '.png'}")
    try:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": PLOT_MARKER.decode()})
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
