"""The bench report: its JSON format (schema and validation), conversion results as cases, and
the Markdown table with ratios against Keras."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import SD2TFLiteError
from ..core.schema import schema_problems

BACKENDS = {
    "litert": "LiteRT (ai-edge-litert, XNNPACK; as `generate` runs it unless --no-weight-cache)",
    "keras": "Keras, keras-cv's jit_compile=False (predict_on_batch)",
    "keras-xla": "Keras, keras-cv's jit_compile=True (XLA)",
}

BENCH_FORMAT_VERSION = 1


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
        # Its anonymous and file-backed parts, each its own maximum (absent in older reports).
        "peak_anon_bytes": {"type": "integer"},
        "peak_file_bytes": {"type": "integer"},
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


def validate_bench_json(data) -> None:
    problems = schema_problems(data, BENCH_SCHEMA, "report")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SD2TFLiteError(f"not an sd2tflite bench report: {problems[0]}{more}")


@dataclass(frozen=True)
class BenchReport:
    """What `bench` returns: the figures of every case that finished, and the ones that did not."""

    settings: dict
    machine: dict
    versions: dict
    sets: list[dict]  # each set's files, sizes and conversion figures
    cases: list[dict]  # one per finished case, with its stages
    failures: list[dict]  # cases that did not finish: directory, backend, threads, error

    def to_json(self) -> dict:
        """The JSON report (BENCH_SCHEMA)."""
        return {"format_version": BENCH_FORMAT_VERSION, "settings": self.settings, "machine": self.machine,
                "versions": self.versions, "sets": self.sets, "cases": self.cases, "failures": self.failures}

    def validate(self) -> None:
        validate_bench_json(self.to_json())

    def table(self) -> str:
        return markdown(self.cases)


def conversion_case(result: dict) -> dict:
    """A benchmarks/convert.py result as a case, so it prints in the same table."""
    stages = [{"name": f["file"].removesuffix(".tflite"), "kind": "conversion", "bytes": f["bytes"],
               "load_seconds": None, "first_seconds": None, "median_seconds": f["seconds"],
               "p90_seconds": f["seconds"], "times": [f["seconds"]], "peak_rss_bytes": f["peak_rss_bytes"]}
              for f in result["files"]]
    return {"directory": result.get("command", ""), "backend": "convert", "threads": None,
            "quant": result["quant"], "dims": {"img_height": result["img"], "img_width": result["img"]},
            "wall_seconds": result["total_seconds"], "peak_rss_bytes": result["peak_tree_rss_bytes"],
            "stages": stages}


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
              "peak RSS GB", "anon GB", "file GB"] + [f"{b} / this" for b in ratio_backends]
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
                fmt(s["peak_rss_bytes"] / 1e9, ".2f"), *(fmt(_gb(s.get(k)), ".2f") for k in _SPLIT),
                *ratios]) + " |")
    return "\n".join(lines)


_SPLIT = ("peak_anon_bytes", "peak_file_bytes")


def _gb(value: int | None) -> float | None:
    return None if value is None else value / 1e9


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
