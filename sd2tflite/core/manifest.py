"""manifest.json: what a converted set is, file by file. Imports no TensorFlow.

The manifest is the only source of file names, signatures and the wiring between UNet parts.
It is written last and atomically; `load_manifest` validates it against MANIFEST_SCHEMA and
refuses paths that leave the set's directory.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from .errors import ManifestError
from .fsutil import write_json_atomic
from .registry import PREDICTION_TYPES, ModelDims, TensorSpec
from .schema import schema_problems

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
VERIFY_REPORT_NAME = "verify.json"  # where `verify --json` reports go when kept with the set
COMPILED_FOLDER = "npu"  # `sd2tflite compile` writes npu/<vendor>-<soc>/<file> beside the set's own files


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
    # A UNet joined from parts (convert/join.py): the build keys of the parts it was joined from
    joined_from: list[str] | None = None

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
    # The precision's converter settings (optimizations, types, op sets), as the recipe table has them.
    converter: dict = field(default_factory=dict)
    # What the UNet predicts: "epsilon" (SD 1.x, SD 2.x 512-base) or "v_prediction" (SD 2.x 768-v).
    prediction_type: str = "epsilon"
    format_version: int = FORMAT_VERSION
    # The model's own scheduler (runtime/schedule.py Schedule.to_json): betas, spacing, offset, the
    # recommended sampler / steps / guidance, and the convention ("keras-cv" | "diffusers"). Empty:
    # keras-cv's (sets made before it was recorded).
    scheduler: dict = field(default_factory=dict)
    # How prompts are tokenized: {"pad_token", "pad_id", "source"}. Empty: keras-cv's (end-of-text padding).
    tokenizer: dict = field(default_factory=dict)
    # How decoded pixels become 8-bit: "truncate" (keras-cv's astype) or "round" (diffusers' pipelines).
    pixels: str = "truncate"
    # `sd2tflite compile`: one record per (target, file) compiled for an NPU (device/compile.py: target,
    # source, path, sha256, bytes, optimization level, partition, signature; docs/manifest.md).
    compiled: list[dict] = field(default_factory=list)

    @property
    def model_dims(self) -> ModelDims:
        """The static shapes the files are built for; every field must be present and positive."""
        defaults = {"timestep_dim": ModelDims.timestep_dim,  # sets made before it was recorded
                    "guidance_embedding_dim": 0}  # recorded only for LCM UNets
        dims = {**defaults, **self.dims}
        names = list(ModelDims.__dataclass_fields__)
        bad = [n for n in names if not isinstance(dims.get(n), int) or isinstance(dims.get(n), bool)
               or dims[n] < (0 if n == "guidance_embedding_dim" else 1)]
        if bad:
            raise ManifestError(f"manifest dims.{bad[0]} is {dims.get(bad[0])!r}, not a positive integer: "
                                "convert the set again")
        return ModelDims(**{n: dims[n] for n in names})

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
        if not self.compiled:
            del data["compiled"]  # a set never compiled keeps the manifest it always had
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        validate_manifest_json(data)
        data = dict(data)
        data["artifacts"] = tuple(Artifact.from_json(a) for a in data["artifacts"])
        return cls(**data)


def _optional(kind: str, **bounds) -> dict:
    return {"type": [kind, "null"], **bounds}


# The records generate reads to sample and tokenize: typed and bounded here, so a hostile or damaged
# record is one line naming its field before anything is allocated from it (runtime/schedule.py
# Schedule holds the meaning of each field).
_SCHEDULER_SCHEMA = {
    "type": "object",
    "properties": {
        "convention": {"type": "string", "enum": ["keras-cv", "diffusers"]},
        "beta_start": {"type": "number", "minimum": 0, "maximum": 1},
        "beta_end": {"type": "number", "minimum": 0, "maximum": 1},
        "beta_schedule": {"type": "string"},
        "num_train_timesteps": {"type": "integer", "minimum": 2, "maximum": 100_000},
        "timestep_spacing": _optional("string"),
        "steps_offset": {"type": "integer", "minimum": 0, "maximum": 100_000},
        "set_alpha_to_one": _optional("boolean"),
        "clip_sample": {"type": "boolean"},
        "clip_sample_range": {"type": "number", "minimum": 0, "maximum": 1e6},
        "original_inference_steps": {"type": "integer", "minimum": 1, "maximum": 100_000},
        "timestep_scaling": {"type": "number", "minimum": 0, "maximum": 1e6},
        "sampler": _optional("string"),
        "steps": _optional("integer", minimum=1, maximum=100_000),
        "guidance": _optional("number", minimum=0, maximum=100),
        "eta": _optional("number", minimum=0, maximum=1),
        "scheduler_class": _optional("string"),
        "source": {"type": "string"},
    },
}

_TOKENIZER_SCHEMA = {
    "type": "object",
    "properties": {"pad_token": {"type": "string"}, "pad_id": {"type": "integer", "minimum": 0},
                   "source": {"type": "string"}},
}

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
        "converter": {"type": "object"},
        "prediction_type": {"type": "string", "enum": list(PREDICTION_TYPES)},
        "scheduler": _SCHEDULER_SCHEMA,
        "tokenizer": _TOKENIZER_SCHEMA,
        "pixels": {"type": "string", "enum": ["truncate", "round"]},
        "compiled": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["target", "source", "source_sha256", "path", "sha256", "bytes", "optimization_level"],
                "properties": {
                    "target": {"type": "string"}, "source": {"type": "string"}, "source_sha256": {"type": "string"},
                    "path": {"type": "string"}, "sha256": {"type": "string"}, "bytes": {"type": "integer"},
                    "optimization_level": {"type": "string"}, "partition": {"type": "object"},
                },
            },
        },
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
                    "calibration": {"type": ["object", "null"]},
                    "op_stats": {"type": ["object", "null"]},
                    "joined_from": {"type": ["array", "null"], "items": {"type": "string"}},
                },
            },
        },
    },
}

def validate_manifest_json(data) -> None:
    problems = schema_problems(data, MANIFEST_SCHEMA, "manifest")
    if problems:
        version = data.get("format_version") if isinstance(data, dict) else None
        if isinstance(version, int) and version != FORMAT_VERSION:
            raise ManifestError(f"manifest format_version is {version}, this sd2tflite reads {FORMAT_VERSION}: "
                                "convert again or use a matching sd2tflite")
        raise ManifestError(f"{problems[0]}: regenerate the set with sd2tflite convert")
    _check_records(data)
    for i, artifact in enumerate(data["artifacts"]):
        safe_relative_path(artifact["path"], f"artifacts[{i}].path")
    for i, record in enumerate(data.get("compiled", [])):
        safe_relative_path(record["path"], f"compiled[{i}].path")


def _check_records(data: dict) -> None:
    """What the schema cannot say: the scheduler's counts within its training timesteps, the pad id
    within the vocabulary."""
    scheduler, n = data.get("scheduler") or {}, (data.get("scheduler") or {}).get("num_train_timesteps", 1000)
    for key in ("steps", "steps_offset", "original_inference_steps"):
        value = scheduler.get(key)
        if value is not None and value > (n - 1 if key == "steps_offset" else n):
            raise ManifestError(f"manifest scheduler.{key} is {value}, more than the {n} training timesteps: "
                                "regenerate the set with sd2tflite convert")
    sources = {a["path"] for a in data["artifacts"]}
    for i, record in enumerate(data.get("compiled", [])):  # `sd2tflite compile`'s records
        where = f"manifest compiled[{i}]"
        if not re.fullmatch(r"[a-z_]{1,32}:[A-Za-z0-9_]{1,32}", record["target"]):
            raise ManifestError(f"{where}.target {record['target'][:60]!r} is not a VENDOR:SOC target: "
                                "run sd2tflite compile again")
        if record["source"] not in sources:
            raise ManifestError(f"{where}.source {record['source'][:60]!r} is not a file of this set: "
                                "run sd2tflite compile again")
        if not record["path"].startswith(f"{COMPILED_FOLDER}/") or record["path"] in sources:
            raise ManifestError(f"{where}.path {record['path'][:60]!r} is not under {COMPILED_FOLDER}/: "
                                "run sd2tflite compile again")
    pad, vocab = (data.get("tokenizer") or {}).get("pad_id"), data["dims"].get("vocab_size")
    # 49407 is CLIP's end-of-text id, which means "pad with the end token" for every vocabulary
    if pad is not None and pad != 49407 and isinstance(vocab, int) and pad >= vocab:
        raise ManifestError(f"manifest tokenizer.pad_id is {pad}, not a token of the {vocab}-token vocabulary: "
                            "regenerate the set with sd2tflite convert")


def safe_relative_path(text: str, where: str = "path") -> PurePosixPath:
    """A manifest path must stay inside the set's directory."""
    path = PurePosixPath(text)
    if not text or path.is_absolute() or ".." in path.parts or "\\" in text:
        raise ManifestError(
            f"manifest {where} {text!r} points outside the model directory: the manifest is "
            "corrupt or hostile, convert again"
        )
    return path


def _set_roots(directory: Path) -> tuple[Path, ...]:
    """Where a set's files may resolve. A set downloaded from the Hub is a snapshot folder of the
    Hugging Face cache, whose files link into the same repo's blobs/: its whole cache entry."""
    root = directory.resolve()
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        return root, root.parent.parent
    return (root,)


def path_in_set(directory: Path, text: str, where: str = "path") -> Path:
    """A file of the set: its manifest path, which must still be inside the set's folder once
    symlinks are followed (a link to a file elsewhere is refused, not read or published)."""
    path = Path(directory) / safe_relative_path(text, where)
    if not any(path.resolve().is_relative_to(root) for root in _set_roots(Path(directory))):
        raise ManifestError(f"{text} in {directory} resolves outside the set (to {path.resolve()}): copy the "
                            "real file into the folder instead of linking it")
    return path


def save_manifest(manifest: Manifest, directory: Path) -> Path:
    path = directory / MANIFEST_NAME
    write_json_atomic(path, manifest.to_json())
    return path


MAX_MANIFEST_BYTES = 16 << 20


def load_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_NAME} in {directory}: point at a folder written by sd2tflite convert")
    path = path_in_set(directory, MANIFEST_NAME)
    if path.stat().st_size > MAX_MANIFEST_BYTES:  # a limit before reading: sets list a few dozen files
        raise ManifestError(f"{path} is {path.stat().st_size:,} bytes, more than a manifest's "
                            f"{MAX_MANIFEST_BYTES:,}: convert again")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({' '.join(str(exc).split())[:120]}): convert again") from exc
    except RecursionError:
        raise ManifestError(f"{path} is nested deeper than any manifest: convert again") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path} holds a JSON {type(data).__name__}, not a manifest object: convert again")
    try:
        return Manifest.from_json(data)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # unknown keys, bad wiring
        raise ManifestError(
            f"{path} does not describe a converted set ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:120]}): convert again"
        ) from exc
