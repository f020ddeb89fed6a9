"""`sd2tflite bench`: the cases (set x thread count x backend), each run in its own worker
process so its peak RSS is its own and LiteRT never shares a process with TensorFlow.

One case = one set × one thread count × one backend (litert, keras, keras-xla); the worker
(bench/worker.py) measures it. Keras cases depend only on the weights and shapes, so sets converted
from the same weights share one Keras reference per thread count.

`bench(BenchRequest, progress) -> BenchReport`, the shape of every command's entry point.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import SD2TFLiteError, UsageError
from ..core.fsutil import write_json_atomic
from ..core.outputs import NewFile, check_new_files, json_with_keys, png_with_text
from ..core.progress import NO_PROGRESS, Progress
from ..core.versions import CONVERTER_LIBRARIES, RUNTIME_LIBRARIES, library_versions
from ..runtime.hub import resolve_model_dir
from ..runtime.integrity import ensure_intact
from .measure import machine
from .plot import PLOT_MARKER, plot, require_matplotlib
from .report import BenchReport

COMPARE = {"keras": ("keras", "keras-xla")}  # --compare NAME -> the backends it adds


BENCH_PROMPT = "a photograph of an astronaut riding a horse"


GUIDANCE = 7.5


TIMESTEP = 500  # the UNet's input noise level for the per-component figures


@dataclass(frozen=True)
class BenchRequest:
    model_dirs: tuple[Path | str, ...]  # converted sets' folders, or hf://OWNER/REPO[@REVISION]
    threads: tuple[int, ...] = ()  # default: all cores
    repeats: int = 10
    warmup: int = 1
    steps: int = 3
    image_repeats: int = 1
    compare: tuple[str, ...] = ()
    seed: int = 0
    vocab: Path | None = None
    weight_cache: bool = True  # LiteRT as `generate` runs it: XNNPACK's packed weights in cache files
    json_path: Path | None = None  # also write the report here (BENCH_SCHEMA)
    plot_path: Path | None = None  # also draw it here (PNG; needs matplotlib)
    force: bool = False  # replace existing json_path / plot_path files that are not ours

    def settings(self) -> dict:
        return {"threads": list(self.threads or (os.cpu_count() or 1,)), "repeats": self.repeats,
                "warmup": self.warmup, "steps": self.steps, "image_repeats": self.image_repeats,
                "compare": list(self.compare), "seed": self.seed, "guidance": GUIDANCE,
                "prompt": BENCH_PROMPT, "timestep": TIMESTEP, "weight_cache": self.weight_cache}


def _check_request(request: BenchRequest) -> None:
    if request.plot_path is not None:
        require_matplotlib()
    check_new_files([
        NewFile("--json", request.json_path, json_with_keys("format_version", "cases"), "a bench report"),
        NewFile("--plot", request.plot_path, png_with_text(PLOT_MARKER), "a bench plot"),
    ], request.force)
    # Limits before anything is allocated (a step count sizes the schedule's arrays): at most the
    # schedule's 1000 training timesteps, and repeat counts a run can finish.
    for flag, value, minimum, maximum in (("--repeats", request.repeats, 1, 10_000),
                                          ("--steps", request.steps, 1, 1000),
                                          ("--warmup", request.warmup, 0, 10_000),
                                          ("--image-repeats", request.image_repeats, 1, 10_000)):
        if value < minimum:
            raise UsageError(f"{flag} {value} must be at least {minimum}")
        if value > maximum:
            raise UsageError(f"{flag} {value} is more than {maximum:,}: pass at most {maximum:,}")
    bad = [t for t in request.threads if t < 1]
    if bad:
        raise UsageError(f"--threads {bad[0]} must be at least 1 (default: all {os.cpu_count()} cores)")
    unknown = [c for c in request.compare if c not in COMPARE]
    if unknown:
        raise UsageError(f"--compare {unknown[0]!r} is unknown: use {', '.join(COMPARE)}")
    if not request.model_dirs:
        raise UsageError("give at least one converted set's directory")


def plan_cases(request: BenchRequest, directories: list[Path], manifests: list) -> list[dict]:
    """The cases to run, as plain data. Keras cases depend only on the weights and shapes, so sets
    converted from the same weights (one per precision) share one Keras reference per thread count."""
    cases, seen = [], set()
    for directory, manifest in zip(directories, manifests):
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
                              **{k: v for k, v in request.settings().items()
                                 if k not in ("threads", "compare", "weight_cache")},
                              "weight_cache": _weight_cache_dir(request) if backend == "litert" else None,
                              "vocab": str(request.vocab) if request.vocab else None})
    return cases


def _weight_cache_dir(request: BenchRequest) -> str | None:
    from ..runtime.weight_cache import default_cache_dir

    return str(default_cache_dir()) if request.weight_cache else None


def _reference_key(manifest, threads: int) -> str:
    return json.dumps([manifest.family, manifest.dims, manifest.weights, threads], sort_keys=True)


def bench(request: BenchRequest, progress: Progress | None = None) -> BenchReport:
    """Runs every case in its own process and returns the report, written to json_path and drawn
    to plot_path when asked; progress: one stage counting the cases. A failed case is in the
    report's failures; only every case failing raises."""
    progress = progress or NO_PROGRESS
    _check_request(request)
    directories = [resolve_model_dir(str(d)) for d in request.model_dirs]
    manifests = [ensure_intact(d, reuse_hashes=True) for d in directories]
    cases = plan_cases(request, directories, manifests)
    results, failures, said = [], [], set()
    progress.stage("bench", len(cases), unit="case")
    for case in cases:
        progress.status(f"bench {case['backend']} {case['directory']}")
        try:
            result = measure_case(case)
            for text in result.pop("notes", []):  # the workers' weight-cache notes, each once, as generate says them
                if text not in said:
                    said.add(text)
                    progress.note(f"note: {text}")
            results.append(result)
        except UsageError:
            raise  # the same for every case
        except SD2TFLiteError as exc:
            # One case out of memory (Keras XLA at 512x512, say) should not cost the others' figures.
            failures.append({**{k: case[k] for k in ("directory", "backend", "threads")}, "error": str(exc)})
        progress.advance()
    progress.status("bench done")
    if not results:
        raise SD2TFLiteError(f"every bench case failed; the first: {failures[0]['error']}")
    report = BenchReport(
        settings=request.settings(),
        machine=machine(),
        versions=library_versions({**RUNTIME_LIBRARIES, **(CONVERTER_LIBRARIES if request.compare else {})}),
        sets=[_set_summary(d, m) for d, m in zip(directories, manifests)],
        cases=results,
        failures=failures,
    )
    report.validate()
    if request.json_path is not None:
        write_json_atomic(request.json_path, report.to_json())
    if request.plot_path is not None:
        plot(report.cases, request.plot_path)
    return report


def _set_summary(directory: Path, manifest) -> dict:
    return {"directory": str(directory), "family": manifest.family, "quant": manifest.quant,
            "dims": manifest.dims, "weights": manifest.weights,
            "files": [{"path": a.path, "component": a.component, "part": a.part, "bytes": a.bytes,
                       "conversion_seconds": a.conversion_seconds, "peak_rss_bytes": a.peak_rss_bytes}
                      for a in manifest.artifacts]}


def measure_case(case: dict) -> dict:
    """A LiteRT case runs in two fresh processes: parts and components, then whole images, so the
    images' peak RSS is what a `generate` run needs, not that plus what the component stages left
    in the process. A Keras case is one process (keras-cv's models stay built, as keras-cv keeps them)."""
    if case["backend"] != "litert":
        return run_case_in_subprocess(case)
    components = run_case_in_subprocess(case)
    images = run_case_in_subprocess({**case, "part": "images"})
    return {**components, "wall_seconds": components["wall_seconds"] + images["wall_seconds"],
            "peak_rss_bytes": max(components["peak_rss_bytes"], images["peak_rss_bytes"]),
            "stages": components["stages"] + images["stages"],
            "notes": components.get("notes", []) + images.get("notes", [])}


def run_case_in_subprocess(case: dict) -> dict:
    """One case in a fresh interpreter; its own peak RSS is the child's ru_maxrss."""
    import sys

    from ..core.signals import run_child

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    # Stopped with SIGTERM (not killed) when bench is interrupted: its weight-cache builds clean up.
    returncode, stdout, stderr = run_child([sys.executable, "-m", "sd2tflite.bench.worker"], json.dumps(case),
                                           env=env)
    lines = stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise SD2TFLiteError(f"the {case['backend']} benchmark of {case['directory']} failed "
                             f"(exit code {returncode}): {tail}") from None
    if "error" in result:
        raise (UsageError if result.get("exit_code") == 2 else SD2TFLiteError)(result["error"])
    return result
