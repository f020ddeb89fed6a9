"""`python -m sd2tflite.bench.worker`: measures one bench case (JSON on stdin) in this fresh
process and writes the result as one JSON line on stdout. Used by sd2tflite.bench.cases only.

A LiteRT case imports no TensorFlow; a Keras case builds the reference from the weights the manifest
records (verify/reference.py). Errors become {"error": ..., "exit_code": ...}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

from ..core.errors import SD2TFLiteError, UsageError
from ..core.registry import COMPONENTS
from ..runtime.samples import starting_noise, synthetic_samples
from ..runtime.schedule import timestep_embedding
from .cases import BENCH_PROMPT, GUIDANCE, TIMESTEP
from .measure import CallLog, PeakTreeRSS, measure, seconds, summary

NOTES: list[str] = []  # weight-cache notes, each once; the parent prints them as generate does


def note(text: str) -> None:
    if text not in NOTES:
        NOTES.append(text)


def _stage(name: str, kind: str, load: Callable[[], object], run: Callable[[object], object],
           case: dict, file_bytes: int | None = None) -> tuple[dict, object]:
    """Load (timed), measure, and the process's peak RSS meanwhile (sampled)."""
    with PeakTreeRSS(os.getpid(), interval=0.05) as rss:
        start = time.perf_counter()
        loaded = load()
        load_seconds = time.perf_counter() - start
        figures = measure(lambda: run(loaded), case["repeats"], case["warmup"])
    return {"name": name, "kind": kind, "bytes": file_bytes, "load_seconds": load_seconds, **figures,
            **_peaks(rss)}, loaded


def _peaks(rss: PeakTreeRSS) -> dict:
    """Peak RSS, and its anonymous and file-backed parts (each its own maximum): file-backed pages
    (mapped .tflite and weight-cache files) are what a phone can drop, anonymous ones are not."""
    return {"peak_rss_bytes": rss.peak, "peak_anon_bytes": rss.peak_anon, "peak_file_bytes": rss.peak_file}


def bench_inputs(dims, seed: int) -> dict[str, dict]:
    """Seeded named inputs per component, shaped like the pipeline's (the same for every backend)."""
    inputs = {c: synthetic_samples(c, dims, 1, seed)[0] for c in COMPONENTS}
    inputs["diffusion"]["timestep_embedding"] = timestep_embedding(TIMESTEP, dims.batch_size, dims.timestep_dim)
    return inputs


def _image_stage(name: str, make_run: Callable[[CallLog], Callable[[], object]], load_seconds: float,
                 case: dict) -> list[dict]:
    """Whole images (first, then `image_repeats` timed), and the UNet steps inside the timed ones."""
    with PeakTreeRSS(os.getpid(), interval=0.05) as rss:
        first = seconds(make_run(CallLog()))
        times, steps = [], []
        for _ in range(case["image_repeats"]):
            log = CallLog()
            times.append(seconds(make_run(log)))
            steps += log.step_seconds()
    common = {"bytes": None, "load_seconds": load_seconds, **_peaks(rss)}
    return [{"name": "unet_step", "kind": "step", **common, "first_seconds": None, **summary(steps)},
            {"name": name, "kind": "image", **common, "first_seconds": first, **summary(times)}]


def run_litert_case(case: dict) -> list[dict]:
    """Every part and every component (UNet chained); with `case["part"] == "images"`, only whole
    images as `generate` makes them (sd2tflite's pipeline, each component loaded when its stage
    starts and released after), in a process that has run nothing else, so their peak RSS is a
    generate run's. XNNPACK's packed weights are in cache files unless the case says otherwise."""
    from ..core.manifest import load_manifest, path_in_set
    from ..runtime.litert import load_component, signature_runner

    directory, threads = Path(case["directory"]), case["threads"]
    cache = Path(case["weight_cache"]) if case.get("weight_cache") else None
    manifest = load_manifest(directory)
    if case.get("part") == "images":
        return _litert_images(case, directory, manifest, cache)
    dims = manifest.model_dims
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
                    lambda p=part: signature_runner(path_in_set(directory, p.path), p.signature_key, threads, cache,
                                                     note),
                    lambda r, f=feed: r(**f), case, part.bytes)
                values.update(runner(**feed))
                stages.append(stage)
                del runner
        stage, _ = _stage(component, "component",
                          lambda c=component: load_component(directory, c, manifest, threads, cache, note),
                          lambda model, c=component: model(**inputs[c]), case, sum(p.bytes for p in parts))
        stages.append(stage)
    return stages


def _litert_images(case: dict, directory: Path, manifest, cache: Path | None) -> list[dict]:
    from ..runtime.litert import LiteRTComponents
    from ..runtime.pipeline import GenerateSettings, Pipeline

    dims = manifest.model_dims
    components = LiteRTComponents(directory, manifest, case["threads"], weight_cache=cache, note=note)
    pipeline = Pipeline(components, dims, bench_tokenizer(manifest.family, case["vocab"]), manifest.prediction_type)
    settings = GenerateSettings(BENCH_PROMPT, steps=case["steps"], guidance=GUIDANCE,
                                noise=starting_noise(dims, case["seed"]))

    def make_run(log: CallLog):
        logged = Pipeline(LoggedComponents(components, log), dims, pipeline.tokenizer, manifest.prediction_type)
        return lambda: logged.generate(settings)

    # Loading is inside each image, as in `generate`: no separate load figure.
    return _image_stage("image", make_run, None, case)


class LoggedComponents(Mapping):
    """LiteRTComponents whose calls are logged; looked up per call and released when the pipeline
    says so, so an image holds one stage's components at a time, as in `generate`."""

    def __init__(self, components, log: CallLog):
        self.components, self.log = components, log

    def __getitem__(self, component: str):
        return self.log.wrap(component, self.components[component])

    def release(self, component: str) -> None:
        self.components.release(component)

    def __iter__(self):
        return iter(self.components)

    def __len__(self) -> int:
        return len(self.components)


def bench_tokenizer(family: str, vocab: str | None):
    """CLIP's tokenizer when its vocabulary is at hand; else the generated one (same token count,
    so the same timings: the benchmark does not look at the image)."""
    from ..runtime.tokenizer import ClipTokenizer, load_tokenizer

    try:
        return load_tokenizer(family, vocab)
    except UsageError:
        if vocab is not None:
            raise
        return ClipTokenizer.generated()


def run_keras_case(case: dict) -> list[dict]:
    """The Keras components from the weights the manifest records, called as keras-cv calls them
    (predict_on_batch, compiled with jit_compile off or on), then keras-cv's own generate_image."""
    import numpy as np
    import tensorflow as tf

    from ..convert.keras_models import call_keras
    from ..core.manifest import load_manifest
    from ..verify.reference import KerasCVPipeline, reference_models

    tf.config.threading.set_intra_op_parallelism_threads(case["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(case["threads"])
    jit = case["backend"] == "keras-xla"
    manifest = load_manifest(Path(case["directory"]))
    dims = manifest.model_dims
    inputs = bench_inputs(dims, case["seed"])

    def build(component: str):
        model = reference_models(manifest, components=[component])[component]
        model.compile(jit_compile=jit)
        return model

    models, stages, load_seconds = {}, [], 0.0
    for component in manifest.components:
        stage, models[component] = _stage(
            component, "component", lambda c=component: build(c),
            lambda model, c=component: call_keras(model, inputs[c], compiled=True), case)
        stages.append(stage)
        load_seconds += stage["load_seconds"]

    reference = KerasCVPipeline(manifest.family, dims, models, jit_compile=jit)
    tokens = np.asarray([bench_tokenizer(manifest.family, case["vocab"]).tokens_for(BENCH_PROMPT)], np.int32)
    noise = starting_noise(dims, case["seed"])

    def make_run(log: CallLog):
        reference.use({c: _Logged(models[c], c, log) for c in ("text_encoder", "diffusion", "decoder")})
        return lambda: reference.generate(tokens, case["steps"], GUIDANCE, noise)

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
            "peak_rss_bytes": int(peak_kib) * 1024, "stages": stages, "notes": NOTES}


def main() -> None:
    from ..core.signals import terminate_as_interrupt

    try:
        with terminate_as_interrupt():  # the parent stops a case with SIGTERM: cleanups run (cache builds)
            case = json.loads(sys.stdin.read())
            try:
                result = run_case(case)
            except SD2TFLiteError as exc:
                result = {"error": str(exc), "exit_code": exc.exit_code}
    except KeyboardInterrupt as exc:
        sys.exit(getattr(exc, "exit_code", 130))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
