"""Does a converted set match its manifest? Imports no TensorFlow (LiteRT only).

Used by `verify` (all checks reported), and by `generate` and `push-hub` (first failure raised).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ManifestError, SD2TFLiteError
from .manifest import MANIFEST_NAME, Manifest, load_manifest, safe_relative_path

@dataclass(frozen=True)
class Check:
    """One verify line: what was checked, whether it passed, and the numbers or the reason."""

    group: str  # "integrity" | "parity" | "end-to-end"
    name: str
    passed: bool
    detail: str
    figures: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"group": self.group, "name": self.name, "passed": self.passed,
                "detail": self.detail, "figures": self.figures}


def _sha256(path: Path) -> str:
    from .weights import sha256_file  # hashlib only; weights.py imports no TensorFlow

    return sha256_file(path)


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


def _structure_problems(manifest: Manifest) -> list[str]:
    """Parts numbered 0..n-1 once each, and wiring that points at earlier parts."""
    problems = []
    for component in manifest.components:
        parts = manifest.parts_of(component)
        counts = {a.num_parts for a in parts}
        indices = [a.part for a in parts]
        if len(counts) != 1 or indices != list(range(parts[0].num_parts)):
            problems.append(
                f"{component}: parts {indices} do not match num_parts {sorted(counts)}"
            )
            continue
        for a in parts:
            for name, producer in a.wiring.items():
                if producer is None:
                    continue
                if not 0 <= producer < a.part or name not in {o.name for o in parts[producer].outputs}:
                    problems.append(f"{a.path}: input {name} is wired to part {producer}, which does not produce it")
    return problems


def check_integrity(directory: Path, manifest: Manifest | None = None,
                    load_in_litert: bool = True) -> tuple[Manifest | None, list[Check]]:
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
    checks.append(Check("integrity", "parts and wiring", not problems,
                        "; ".join(problems) or "complete, wired to earlier parts"))
    listed = set()
    for artifact in manifest.artifacts:
        path = directory / safe_relative_path(artifact.path)
        listed.add(str(safe_relative_path(artifact.path)))
        checks.append(_file_check(path, artifact, load_in_litert))
    extra = sorted(
        str(p.relative_to(directory)) for p in directory.rglob("*.tflite")
        if str(p.relative_to(directory).as_posix()) not in listed
    )
    checks.append(Check("integrity", "no unlisted .tflite files", not extra,
                        f"not in the manifest: {', '.join(extra)}" if extra else "none"))
    return manifest, checks


def _file_check(path: Path, artifact, load_in_litert: bool) -> Check:
    name = artifact.path
    if not path.is_file():
        return Check("integrity", name, False, "missing: copy the whole set or convert again")
    size = os.path.getsize(path)
    if size != artifact.bytes:
        return Check("integrity", name, False,
                     f"{size:,} bytes, the manifest says {artifact.bytes:,} (truncated or replaced): "
                     "copy it again or convert again")
    digest = _sha256(path)
    if digest != artifact.sha256:
        return Check("integrity", name, False,
                     f"sha256 {digest[:12]}… differs from the manifest's {artifact.sha256[:12]}… "
                     "(modified): copy it again or convert again")
    if load_in_litert:
        problem = _signature_problem(path, artifact)
        if problem:
            return Check("integrity", name, False, f"{problem}: convert again")
    return Check("integrity", name, True, f"{size:,} bytes, sha256 ok"
                 + (", signature ok" if load_in_litert else ""))


def ensure_intact(directory: Path, load_in_litert: bool = True) -> Manifest:
    """The manifest of an intact set, or ManifestError naming the first problem."""
    manifest, checks = check_integrity(directory, load_in_litert=load_in_litert)
    failed = [c for c in checks if not c.passed]
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more problems; run sd2tflite verify)" if len(failed) > 1 else ""
        subject = first.name if first.name != MANIFEST_NAME else ""
        raise ManifestError(f"{directory}: {subject + ' ' if subject else ''}{first.detail}{more}")
    assert manifest is not None
    return manifest
