"""`sd2tflite compile`: a converted set's files compiled ahead of time for NPUs, beside the set.

For each target (vendor:SoC) and each file of the manifest, LiteRT's AOT compiler plugin partitions the
graph (which ops the NPU takes, and the compiler's reason for every op it refuses) and compiles the NPU
partitions into bytecode embedded in a new .tflite: npu/<vendor>-<soc>/<file name>. The set's own files
are not touched, so the set stays runnable on the CPU; the manifest gains one `compiled` record per
file and target (sha256, bytes, target, optimisation level, partition statistics).

Compiled files run only on the device (the NPU bytecode needs the SoC's NPU, not present on an x86
host). What is checked here: each compiled file is a flatbuffer whose signature has the source's inputs
and outputs, bound by name (the compiler may reorder them), with the same shapes and dtypes.

A file that fails to compile is named with the compiler's reason; the others are kept and recorded,
and the run fails (CompileError). Re-runs reuse a compiled file whose source, target and optimisation
level are unchanged and whose bytes still match its record.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ManifestError, OutputError, UsageError
from ..core.fsutil import DiscardWrite, atomic_write, folder_lock, is_temp_name, sha256_file, write_json_atomic
from ..core.manifest import COMPILED_FOLDER, Artifact, load_manifest, path_in_set, save_manifest
from ..core.progress import NO_PROGRESS, Progress
from ..core.registry import TensorSpec
from .plugin import DEFAULT_OPTIMIZATION_LEVEL, OPTIMIZATION_LEVELS, Partition, check_sdk, run_plugin
from .targets import Target



@dataclass(frozen=True)
class CompileRequest:
    model_dir: Path
    targets: tuple[Target, ...]
    optimization_level: str = DEFAULT_OPTIMIZATION_LEVEL
    components: tuple[str, ...] | None = None  # None: every file of the set
    force: bool = False  # compile again even where a matching compiled file is recorded
    json_path: Path | None = None


@dataclass
class FileResult:
    """One (target, file): compiled, reused, or failed (then `failure` is the compiler's reason)."""

    target: Target
    source: str
    status: str  # "compiled", "reused" or "failed"
    path: str | None = None
    bytes: int = 0
    seconds: float = 0.0
    partition: Partition | None = None
    failure: str = ""

    def to_json(self) -> dict:
        return {"target": self.target.spec, "source": self.source, "status": self.status, "path": self.path,
                "bytes": self.bytes, "seconds": round(self.seconds, 2),
                "partition": self.partition.to_json() if self.partition else None, "failure": self.failure or None}

    def describe(self) -> str:
        where = self.partition.describe() if self.partition else "not partitioned"
        if self.status == "failed":
            return f"{self.source}: FAILED: {self.failure}" + (f" ({where})" if self.partition else "")
        return f"{self.source} -> {self.path}: {where} ({self.status}, {self.seconds:.1f} s)"


@dataclass
class CompileResult:
    model_dir: Path
    optimization_level: str
    files: list[FileResult] = field(default_factory=list)
    sdk: dict[str, str] = field(default_factory=dict)  # target -> the compiler libraries used

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "failed"]

    @property
    def passed(self) -> bool:
        return not self.failed

    def failure_message(self) -> str:
        """One line for a run with failed files ("" when none failed)."""
        if not self.failed:
            return ""
        first = self.failed[0]
        more = f" (and {len(self.failed) - 1} more)" if len(self.failed) > 1 else ""
        kept = sum(f.status != "failed" for f in self.files)
        return (f"{first.target.spec} {first.source} did not compile{more}: {first.failure}; the {kept} other "
                "compiled files are kept and recorded in the manifest")

    def to_json(self) -> dict:
        return {"model_dir": str(self.model_dir), "optimization_level": self.optimization_level,
                "passed": self.passed, "sdk": self.sdk, "files": [f.to_json() for f in self.files]}

    def lines(self) -> list[str]:
        out = []
        for target in dict.fromkeys(f.target for f in self.files):
            mine = [f for f in self.files if f.target == target]
            whole = sum(bool(f.partition and f.partition.whole) for f in mine)
            out.append(f"{target.spec} ({self.sdk.get(target.spec, '')}, {self.optimization_level}): "
                       f"{sum(f.status != 'failed' for f in mine)} of {len(mine)} files compiled, "
                       f"{whole} entirely on the NPU")
            out += [f"  {f.describe()}" for f in mine]
        return out


def compiled_path(target: Target, artifact: Artifact) -> str:
    return f"{COMPILED_FOLDER}/{target.folder.split('/', 1)[1]}/{Path(artifact.path).name}"


def signature_problems(path: Path, artifact: Artifact) -> list[str]:
    """What differs between the compiled file's signature and the source's manifest entry, matched by
    tensor name (order is free): missing or extra names, shapes, dtypes. Empty: it matches."""
    from ai_edge_litert import schema_py_generated as fb

    names = {v: k.lower() for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    data = path.read_bytes()
    model = fb.Model.GetRootAs(data, 0)
    signatures = [model.SignatureDefs(i) for i in range(model.SignatureDefsLength())]
    chosen = next((s for s in signatures if (s.SignatureKey() or b"").decode() == artifact.signature_key), None)
    if chosen is None:
        return [f"no signature {artifact.signature_key!r}"]
    graph = model.Subgraphs(chosen.SubgraphIndex())

    def specs(count, get) -> dict[str, TensorSpec]:
        found = {}
        for i in range(count):
            entry = get(i)
            tensor = graph.Tensors(entry.TensorIndex())
            name = entry.Name().decode()
            found[name] = TensorSpec(name, tuple(int(d) for d in tensor.ShapeAsNumpy()),
                                     names.get(tensor.Type(), str(tensor.Type())))
        return found

    problems = []
    for kind, expected, found in (("input", artifact.inputs, specs(chosen.InputsLength(), chosen.Inputs)),
                                  ("output", artifact.outputs, specs(chosen.OutputsLength(), chosen.Outputs))):
        for spec in expected:
            got = found.pop(spec.name, None)
            if got is None:
                problems.append(f"{kind} {spec.name} is missing")
            elif tuple(got.shape) != tuple(spec.shape) or got.dtype != spec.dtype:
                problems.append(f"{kind} {spec.name} is {got.dtype}{list(got.shape)}, the source's "
                                f"{spec.dtype}{list(spec.shape)}")
        problems += [f"extra {kind} {name}" for name in found]
    return problems


def signature_names(path: Path) -> dict:
    """The compiled file's inputs and outputs in its own order (the order a device app sees)."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(path.read_bytes(), 0)
    if not model.SignatureDefsLength():
        return {}
    sig = model.SignatureDefs(0)
    return {"inputs": [sig.Inputs(i).Name().decode() for i in range(sig.InputsLength())],
            "outputs": [sig.Outputs(i).Name().decode() for i in range(sig.OutputsLength())]}


def _record(target: Target, artifact: Artifact, rel: str, path: Path, level: str, partition: Partition | None,
            sdk: str, seconds: float) -> dict:
    from importlib.metadata import version

    return {"target": target.spec, "source": artifact.path, "source_sha256": artifact.sha256, "path": rel,
            "sha256": sha256_file(path), "bytes": path.stat().st_size, "optimization_level": level,
            "partition": partition.to_json() if partition else {}, "signature": signature_names(path),
            "sdk": sdk, "ai_edge_litert": version("ai-edge-litert"), "compile_seconds": round(seconds, 2)}


def _reusable(record: dict | None, directory: Path, artifact: Artifact, level: str) -> bool:
    if not record or record.get("source_sha256") != artifact.sha256 or record.get("optimization_level") != level:
        return False
    try:
        path = path_in_set(directory, record["path"])
    except ManifestError:
        return False
    return path.is_file() and path.stat().st_size == record["bytes"] and sha256_file(path) == record["sha256"]


def compile_set(request: CompileRequest, progress: Progress | None = None) -> CompileResult:
    """Compiles every file of the set for every target (see the module docstring). Raises UsageError,
    ManifestError, DeviceSdkError before anything is written. Files that fail are in the result
    (`failed`, `failure_message()`), the others compiled and recorded in the manifest."""
    progress = progress or NO_PROGRESS
    if request.optimization_level not in OPTIMIZATION_LEVELS:
        raise UsageError(f"unknown optimisation level {request.optimization_level!r}: use one of "
                         f"{', '.join(OPTIMIZATION_LEVELS)} (O2 compiles fastest, O3 makes the fastest code)")
    directory = Path(request.model_dir)
    manifest = load_manifest(directory)
    artifacts = [a for a in manifest.artifacts if request.components is None or a.component in request.components]
    if request.components is not None:
        unknown = sorted(set(request.components) - set(manifest.components))
        if unknown:
            raise UsageError(f"the set has no {unknown[0]}: choose from {', '.join(manifest.components)}")
    result = CompileResult(directory, request.optimization_level)
    for target in request.targets:  # every SDK is checked before the first file is compiled
        result.sdk[target.spec] = check_sdk(target)

    with folder_lock(directory, "process", "compile a copy of the set you can write to"):
        manifest = load_manifest(directory)  # as it is now, under the lock
        records = {(r["target"], r["source"]): r for r in manifest.compiled}
        progress.stage("compiling for the NPU", total=len(artifacts) * len(request.targets), unit="file")
        for target in request.targets:
            for artifact in artifacts:
                progress.status(f"{target.spec} {artifact.path}")
                key = (target.spec, artifact.path)
                outcome, record = _compile_one(directory, target, artifact, request, records.get(key), result.sdk)
                result.files.append(outcome)
                if record is not None:
                    records[key] = record
                elif outcome.status == "failed" and key in records \
                        and records[key].get("source_sha256") != artifact.sha256:
                    records.pop(key)  # a record of an older source file: its compiled file is stale
                progress.advance()
        order = {(t.spec, a.path): i for i, (t, a) in
                 enumerate((t, a) for t in request.targets for a in manifest.artifacts)}
        kept = sorted(records.values(), key=lambda r: order.get((r["target"], r["source"]), len(order)))
        save_manifest(dataclasses.replace(manifest, compiled=kept), directory)
    if request.json_path is not None:
        write_json_atomic(request.json_path, result.to_json())
    return result


def _compile_one(directory: Path, target: Target, artifact: Artifact, request: CompileRequest, earlier: dict | None,
                 sdk: dict[str, str]) -> tuple[FileResult, dict | None]:
    level = request.optimization_level
    rel = compiled_path(target, artifact)
    if not request.force and _reusable(earlier, directory, artifact, level):
        partition = Partition(earlier["partition"].get("npu_ops", 0), earlier["partition"].get("total_ops", 0),
                              earlier["partition"].get("partitions", 0)) if earlier.get("partition") else None
        return FileResult(target, artifact.path, "reused", rel, earlier["bytes"], 0.0, partition), None
    source = path_in_set(directory, artifact.path)
    if not source.is_file() or source.stat().st_size != artifact.bytes or sha256_file(source) != artifact.sha256:
        return FileResult(target, artifact.path, "failed",
                          failure="the file differs from the manifest (missing, truncated or modified): "
                                  "run sd2tflite verify, copy or convert it again"), None
    final = directory / rel
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {final.parent} ({exc.strerror}): compile a copy of the set you can "
                          "write to") from exc
    for leftover in final.parent.iterdir():  # temp files of interrupted runs
        if is_temp_name(leftover.name) and leftover.name.startswith(f".{final.name}"):
            leftover.unlink(missing_ok=True)
    start = time.perf_counter()
    failed: FileResult | None = None
    with atomic_write(final, ".tflite") as tmp:  # the plugin tool insists on .tflite
        done = run_plugin("apply", source, tmp, target, level)
        problems = [] if done.failure else signature_problems(tmp, artifact)
        if done.failure or problems:
            failed = FileResult(target, artifact.path, "failed", seconds=done.seconds, partition=done.partition,
                                failure=done.failure or "the compiled file's signature differs from the source's: "
                                + "; ".join(problems[:3]))
            raise DiscardWrite
    if failed is not None:
        return failed, None
    seconds = time.perf_counter() - start
    record = _record(target, artifact, rel, final, level, done.partition, sdk[target.spec], seconds)
    return FileResult(target, artifact.path, "compiled", rel, record["bytes"], seconds, done.partition), record
