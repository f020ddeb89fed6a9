"""manifest.json: what a converted set is, file by file. Imports no TensorFlow.

The manifest is the only source of file names, signatures and the wiring between UNet parts.
It is written last and atomically; `load_manifest` validates it against MANIFEST_SCHEMA and
refuses paths that leave the set's directory.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from .components import TensorSpec
from .errors import ManifestError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
VERIFY_REPORT_NAME = "verify.json"  # where `verify --json` reports go when kept with the set


@dataclass(frozen=True)
class Artifact:
    """One .tflite file."""

    component: str
    part: int
    num_parts: int
    path: str  # relative to the manifest's directory, POSIX separators
    sha256: str
    bytes: int
    params: int
    signature_key: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # input name -> index of the part that produces it (None: fed by the pipeline)
    wiring: dict[str, int | None]
    conversion_seconds: float
    peak_rss_bytes: int
    build_key: str  # hash of everything that determines the file; re-runs reuse on a match
    # int8: where the calibration data came from (source, cache key, prompts, steps, samples, seed)
    calibration: dict | None = None
    # {"ops": operators (without QUANTIZE / DEQUANTIZE), "quantized_ops": those with integer activations}
    op_stats: dict | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        data["inputs"] = [s.to_json() for s in self.inputs]
        data["outputs"] = [s.to_json() for s in self.outputs]
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Artifact":
        data = dict(data)
        data["inputs"] = tuple(TensorSpec.from_json(s) for s in data["inputs"])
        data["outputs"] = tuple(TensorSpec.from_json(s) for s in data["outputs"])
        data["wiring"] = {k: (None if v is None else int(v)) for k, v in data["wiring"].items()}
        return cls(**data)


@dataclass(frozen=True)
class Manifest:
    family: str
    quant: str
    dims: dict
    weights: dict[str, dict]  # component -> identity (hub / file / random)
    artifacts: tuple[Artifact, ...]
    versions: dict[str, str]
    command: str = ""
    created: str = ""
    split: dict = field(default_factory=dict)  # the UNet plan: cap, parts, params
    format_version: int = FORMAT_VERSION

    def parts_of(self, component: str) -> list[Artifact]:
        return sorted((a for a in self.artifacts if a.component == component), key=lambda a: a.part)

    @property
    def components(self) -> list[str]:
        seen: list[str] = []
        for a in self.artifacts:
            if a.component not in seen:
                seen.append(a.component)
        return seen

    def to_json(self) -> dict:
        data = asdict(self)
        data["artifacts"] = [a.to_json() for a in self.artifacts]
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        validate_manifest_json(data)
        data = dict(data)
        data["artifacts"] = tuple(Artifact.from_json(a) for a in data["artifacts"])
        return cls(**data)


_SPEC_SCHEMA = {
    "type": "object",
    "required": ["name", "shape", "dtype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "dtype": {"type": "string"},
    },
}

MANIFEST_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "sd2tflite manifest",
    "type": "object",
    "required": ["format_version", "family", "quant", "dims", "weights", "artifacts", "versions"],
    "properties": {
        "format_version": {"type": "integer", "const": FORMAT_VERSION},
        "family": {"type": "string"},
        "quant": {"type": "string"},
        "dims": {"type": "object"},
        "weights": {"type": "object"},
        "versions": {"type": "object"},
        "command": {"type": "string"},
        "created": {"type": "string"},
        "split": {"type": "object"},
        "artifacts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "component", "part", "num_parts", "path", "sha256", "bytes", "params",
                    "signature_key", "inputs", "outputs", "wiring", "conversion_seconds",
                    "peak_rss_bytes", "build_key",
                ],
                "properties": {
                    "component": {"type": "string"},
                    "part": {"type": "integer"},
                    "num_parts": {"type": "integer"},
                    "path": {"type": "string"},
                    "sha256": {"type": "string"},
                    "bytes": {"type": "integer"},
                    "params": {"type": "integer"},
                    "signature_key": {"type": "string"},
                    "inputs": {"type": "array", "items": _SPEC_SCHEMA},
                    "outputs": {"type": "array", "items": _SPEC_SCHEMA},
                    "wiring": {"type": "object"},
                    "conversion_seconds": {"type": "number"},
                    "peak_rss_bytes": {"type": "integer"},
                    "build_key": {"type": "string"},
                    "calibration": {"type": "object", "nullable": True},
                    "op_stats": {"type": "object", "nullable": True},
                },
            },
        },
    },
}

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
}


def _check(value, schema: dict, where: str) -> None:
    """A small validator for the subset of JSON Schema that MANIFEST_SCHEMA uses."""
    if value is None and schema.get("nullable"):
        return
    expected = _TYPES[schema["type"]]
    if not isinstance(value, expected) or (schema["type"] in ("integer", "number") and isinstance(value, bool)):
        raise ManifestError(f"manifest field {where} should be {schema['type']}: regenerate the set with sd2tflite convert")
    if "const" in schema and value != schema["const"]:
        raise ManifestError(
            f"manifest {where} is {value!r}, this sd2tflite reads {schema['const']!r}: convert again "
            "or use a matching sd2tflite"
        )
    if schema["type"] == "object":
        for key in schema.get("required", []):
            if key not in value:
                raise ManifestError(f"manifest is missing {where}.{key}: regenerate the set with sd2tflite convert")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                _check(value[key], sub, f"{where}.{key}")
    if schema["type"] == "array" and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{i}]")


def validate_manifest_json(data) -> None:
    _check(data, MANIFEST_SCHEMA, "manifest")
    for i, artifact in enumerate(data["artifacts"]):
        safe_relative_path(artifact["path"], f"artifacts[{i}].path")


def safe_relative_path(text: str, where: str = "path") -> PurePosixPath:
    """A manifest path must stay inside the set's directory."""
    path = PurePosixPath(text)
    if not text or path.is_absolute() or ".." in path.parts or "\\" in text:
        raise ManifestError(
            f"manifest {where} {text!r} points outside the model directory: the manifest is "
            "corrupt or hostile, convert again"
        )
    return path


def _finite(value):
    """JSON has no Infinity / NaN (strict parsers reject them): write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(_finite(data), f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_manifest(manifest: Manifest, directory: Path) -> Path:
    path = directory / MANIFEST_NAME
    write_json_atomic(path, manifest.to_json())
    return path


def load_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {directory}: point at a folder written by sd2tflite convert")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}): convert again") from exc
    try:
        return Manifest.from_json(data)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # unknown keys, bad wiring
        raise ManifestError(
            f"{path} does not describe a converted set ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:120]}): convert again"
        ) from exc
