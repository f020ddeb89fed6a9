"""Does a converted set match its manifest? Imports no TensorFlow (LiteRT only).

Used by `verify` (all checks reported), and by `generate`, `bench` and `push-hub` (first failure
raised).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import ManifestError, SD2TFLiteError
from ..core.fsutil import cache_root, sha256_file, write_json_atomic
from ..core.manifest import MANIFEST_NAME, Manifest, load_manifest, path_in_set, safe_relative_path
from ..core.precisions import RECIPES
from ..core.registry import COMPONENTS


@dataclass(frozen=True)
class Check:
    """One verify line: what was checked, whether it passed, and the numbers or the reason."""

    group: str  # "integrity" | "parity" | "end-to-end"
    name: str
    passed: bool
    detail: str
    figures: dict = field(default_factory=dict)
    component: str | None = None  # the component a failure makes untrustworthy, if any

    def to_json(self) -> dict:
        return {"group": self.group, "name": self.name, "passed": self.passed,
                "detail": self.detail, "figures": self.figures, "component": self.component}


HASH_CACHE_NAME = "sha256.json"
RACY_WINDOW_NS = 2_000_000_000  # files changed this recently are hashed, never remembered (as git does)


def file_sha256(path: Path, reuse: bool) -> str:
    """The file's sha256. With `reuse`, a digest computed before is taken when the file's device,
    inode, size, mtime and ctime are all unchanged: any write moves ctime, and ctime cannot be set
    back, so a modified file is always read again. `generate` re-reads no gigabytes per run."""
    if not reuse:
        return sha256_file(path)
    stat = os.stat(path)
    key = os.path.realpath(path)
    identity = [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    cache_file = cache_root() / HASH_CACHE_NAME
    known = _read_hash_cache(cache_file)
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("stat") == identity and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = sha256_file(path)
    if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) < RACY_WINDOW_NS:
        return digest  # a write in the same timestamp tick would not move ctime: do not remember
    known = {p: e for p, e in known.items() if os.path.exists(p)}  # forget deleted files
    known[key] = {"stat": identity, "sha256": digest}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache_file, known)
    except OSError:
        pass  # an unwritable cache costs time, not correctness
    return digest


def _read_hash_cache(cache_file: Path) -> dict:
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _signature_problem(path: Path, artifact) -> str | None:
    """None if LiteRT loads the file and its signature is the manifest's; else what differs."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path))
        signatures = interpreter.get_signature_list()
        if artifact.signature_key not in signatures:
            return f"has no signature {artifact.signature_key!r} (has {', '.join(signatures) or 'none'})"
        runner = interpreter.get_signature_runner(artifact.signature_key)
        found = {"input": runner.get_input_details(), "output": runner.get_output_details()}
    except (ValueError, RuntimeError) as exc:
        return f"does not load in LiteRT ({' '.join(str(exc).split())[:120]})"
    for kind, specs in (("input", artifact.inputs), ("output", artifact.outputs)):
        details = found[kind]
        if set(details) != {s.name for s in specs}:
            return f"{kind}s are {sorted(details)}, the manifest says {sorted(s.name for s in specs)}"
        for spec in specs:
            shape = tuple(int(d) for d in details[spec.name]["shape"])
            dtype = np.dtype(details[spec.name]["dtype"]).name
            if (shape, dtype) != (spec.shape, spec.dtype):
                return (f"{kind} {spec.name} is {dtype}{list(shape)}, the manifest says "
                        f"{spec.dtype}{list(spec.shape)}")
    return None


def _structure_problems(manifest: Manifest) -> dict[str, list[str]]:
    """component -> what is wrong with its parts: numbered 0..n-1 once each, wired to earlier parts."""
    problems: dict[str, list[str]] = {}
    for component in manifest.components:
        found = problems.setdefault(component, [])
        parts = manifest.parts_of(component)
        counts = {a.num_parts for a in parts}
        indices = [a.part for a in parts]
        if len(counts) != 1 or indices != list(range(parts[0].num_parts)):
            found.append(f"{component}: parts {indices} do not match num_parts {sorted(counts)}")
            continue
        for a in parts:
            for name, producer in a.wiring.items():
                if producer is None:
                    continue
                if not 0 <= producer < a.part or name not in {o.name for o in parts[producer].outputs}:
                    found.append(f"{a.path}: input {name} is wired to part {producer}, which does not produce it")
    return {c: p for c, p in problems.items() if p}


DESCRIPTION = "description"  # Check.figures marker of the checks below


def description_holds(checks: list[Check]) -> bool:
    """False when the manifest does not describe its files (nothing can be compared against them)."""
    return not any(not c.passed and c.figures.get(DESCRIPTION) for c in checks)


def _description_checks(manifest: Manifest) -> list[Check]:
    """What the manifest says beyond its schema: a precision and components this sd2tflite knows,
    complete dims, and pipeline-facing signatures that are the ones those dims give (a wrong
    img_height would otherwise make generate allocate for another size)."""
    checks = []
    if manifest.quant not in RECIPES:
        checks.append(Check("integrity", "precision", False, f"precision {manifest.quant!r} is unknown to this "
                            f"sd2tflite ({', '.join(RECIPES)}): convert again or use a matching sd2tflite",
                            {DESCRIPTION: True}))
    try:
        dims = manifest.model_dims
    except ManifestError as exc:
        return checks + [Check("integrity", "dims", False, str(exc), {DESCRIPTION: True})]
    for component in manifest.components:
        if component not in COMPONENTS:
            checks.append(Check("integrity", "components", False, f"component {component!r} is unknown to this "
                                f"sd2tflite ({', '.join(COMPONENTS)}): convert again", {DESCRIPTION: True},
                                component=component))
            continue
        spec = COMPONENTS[component]
        expected = {s.name: s for s in spec.input_specs(dims)}
        expected_output = spec.output_spec(dims)
        parts = manifest.parts_of(component)
        found = [s for a in parts for s in a.inputs if a.wiring.get(s.name) is None]
        found += [s for s in parts[-1].outputs if s.name == expected_output.name]
        wrong = [f"{s.name} is {s.dtype}{list(s.shape)}, dims give {e.dtype}{list(e.shape)}"
                 for s in found for e in [expected.get(s.name, expected_output if s.name == expected_output.name
                                                       else None)] if e is None or s != e]
        if wrong or expected_output.name not in {s.name for s in parts[-1].outputs}:
            checks.append(Check("integrity", f"{component} signature", False,
                                ("; ".join(wrong) or f"no {expected_output.name} output")
                                + ": the manifest's dims do not describe its files; convert again",
                                {DESCRIPTION: True}, component=component))
    if not any(not c.passed for c in checks):
        checks.append(Check("integrity", "dims and signatures", True,
                            f"{dims.img_width}x{dims.img_height}, batch {dims.batch_size}, as the files say"))
    return checks


def check_integrity(directory: Path, manifest: Manifest | None = None, load_in_litert: bool = True,
                    reuse_hashes: bool = False) -> tuple[Manifest | None, list[Check]]:
    """Every check, none skipped after a failure (except when the manifest itself is unreadable)."""
    directory = Path(directory)
    checks: list[Check] = []
    if manifest is None:
        try:
            manifest = load_manifest(directory)
        except SD2TFLiteError as exc:
            return None, [Check("integrity", MANIFEST_NAME, False, str(exc))]
    checks.append(Check("integrity", MANIFEST_NAME, True,
                        f"{manifest.family} {manifest.quant}, {len(manifest.artifacts)} files"))
    problems = _structure_problems(manifest)
    checks += [Check("integrity", "parts and wiring", False, "; ".join(found), component=component)
               for component, found in problems.items()]
    if not problems:
        checks.append(Check("integrity", "parts and wiring", True, "complete, wired to earlier parts"))
    checks += _description_checks(manifest)
    listed = set()
    for artifact in manifest.artifacts:
        listed.add(str(safe_relative_path(artifact.path)))
        try:
            path = path_in_set(directory, artifact.path)
        except ManifestError as exc:
            checks.append(Check("integrity", artifact.path, False, str(exc), component=artifact.component))
            continue
        checks.append(_file_check(path, artifact, load_in_litert, reuse_hashes))
    for record in manifest.compiled:  # `sd2tflite compile`'s NPU files: size and sha256 (they run on the device only)
        listed.add(str(safe_relative_path(record["path"])))
        checks.append(_compiled_check(directory, record, reuse_hashes))
    extra = sorted(
        str(p.relative_to(directory)) for p in directory.rglob("*.tflite")
        if str(p.relative_to(directory).as_posix()) not in listed
    )
    checks.append(Check("integrity", "no unlisted .tflite files", not extra,
                        f"not in the manifest: {', '.join(extra)}" if extra else "none"))
    return manifest, checks


def _compiled_check(directory: Path, record: dict, reuse_hashes: bool) -> Check:
    name = f"{record['path']} ({record['target']})"
    try:
        path = path_in_set(directory, record["path"])
    except ManifestError as exc:
        return Check("integrity", name, False, str(exc))
    if not path.is_file() or os.path.getsize(path) != record["bytes"] \
            or file_sha256(path, reuse_hashes) != record["sha256"]:
        return Check("integrity", name, False, "missing or differs from the manifest's record: run sd2tflite "
                     "compile again")
    return Check("integrity", name, True, f"{record['bytes']:,} bytes, sha256 ok (NPU file: runs on the device only)")


def _file_check(path: Path, artifact, load_in_litert: bool, reuse_hashes: bool) -> Check:
    def failed(detail: str) -> Check:
        return Check("integrity", artifact.path, False, detail, component=artifact.component)

    if not path.is_file():
        return failed("missing: copy the whole set or convert again")
    size = os.path.getsize(path)
    if size != artifact.bytes:
        return failed(f"{size:,} bytes, the manifest says {artifact.bytes:,} (truncated or replaced): "
                      "copy it again or convert again")
    digest = file_sha256(path, reuse_hashes)
    if digest != artifact.sha256:
        return failed(f"sha256 {digest[:12]}… differs from the manifest's {artifact.sha256[:12]}… "
                      "(modified): copy it again or convert again")
    if load_in_litert:
        problem = _signature_problem(path, artifact)
        if problem:
            return failed(f"{problem}: convert again")
    return Check("integrity", artifact.path, True, f"{size:,} bytes, sha256 ok"
                 + (", signature ok" if load_in_litert else ""))


def ensure_intact(directory: Path, load_in_litert: bool = True, reuse_hashes: bool = False) -> Manifest:
    """The manifest of an intact set, or ManifestError naming the first problem. `reuse_hashes`:
    see file_sha256 (generate and bench; verify and push-hub always read every byte)."""
    manifest, checks = check_integrity(directory, load_in_litert=load_in_litert, reuse_hashes=reuse_hashes)
    failed = [c for c in checks if not c.passed]
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more problems; run sd2tflite verify)" if len(failed) > 1 else ""
        subject = first.name if first.name != MANIFEST_NAME else ""
        raise ManifestError(f"{directory}: {subject + ' ' if subject else ''}{first.detail}{more}")
    assert manifest is not None
    return manifest
