"""What real accelerators accept, per file of a set: information that never fails verify (a file an
accelerator takes only in part still runs, the rest on the CPU, more slowly).

- NPU: LiteRT's AOT compiler plugin partitions the file for one SoC (default Qualcomm SM8650), asking
  the vendor's op validator about every op (device/plugin.py; seconds a file). Reported: ops on the
  NPU, partitions (1 = no CPU fallback in between) and each rejected op with the validator's reason.
  Nothing is compiled; `sd2tflite compile` does that.
- GPU: LiteRT's GPU accelerator (WebGPU) through LiteRT.js in headless Chromium, its own placement
  counted (sd2tflite/serve/placement.py); SwiftShader in a headless browser, so placement is the
  accelerator's decision and speed is not a GPU's.

Where a measurement cannot run (no vendor compiler libraries, no Chromium or LiteRT.js, a damaged
file) the file is "not measured: <why>". Nothing here guesses from a static analyzer: TFLite's model
analyzer approves any model since TensorFlow 2.18 (tensorflow/tensorflow#77042), and TensorFlow
2.17's verdicts disagreed with the GPU accelerator itself (it called the tiny UNet fine, which the
accelerator places 109 of 1,620 ops of).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ManifestError, SD2TFLiteError
from ..core.manifest import Manifest, path_in_set

ACCELERATORS = ("npu", "gpu")
DEFAULT_NPU_TARGET = "qualcomm:SM8650"
GPU_NAME = "GPU: LiteRT's WebGPU accelerator (LiteRT.js, headless Chromium)"


@dataclass(frozen=True)
class Placement:
    """One file on one accelerator: `placed` of `total` ops in `partitions` partitions, the rejected ops
    as (op, count, reason); or not measured, with `reason` saying why."""

    path: str
    measured: bool
    placed: int = 0
    total: int = 0
    partitions: int = 0
    rejected: tuple[tuple[str, int, str], ...] = ()
    reason: str = ""

    @property
    def share(self) -> float:
        return self.placed / self.total if self.total else 0.0

    @property
    def whole(self) -> bool:
        return self.measured and self.total > 0 and self.placed == self.total and self.partitions == 1

    def describe(self) -> str:
        if not self.measured:
            return f"not measured: {self.reason}"
        text = (f"{self.placed:,}/{self.total:,} ops ({100 * self.share:.1f} %), {self.partitions} partition"
                f"{'' if self.partitions == 1 else 's'}")
        if self.rejected:
            text += "; rejected: " + "; ".join(f"{op} ×{n} ({reason})" for op, n, reason in self.rejected)
        return text

    def to_json(self) -> dict:
        return {"path": self.path, "measured": self.measured, "ops_placed": self.placed, "ops_total": self.total,
                "partitions": self.partitions, "whole": self.whole,
                "rejected": [{"op": op, "count": n, "reason": reason} for op, n, reason in self.rejected],
                "reason": self.reason or None}


@dataclass
class AcceleratorReport:
    """Per accelerator (its title -> one Placement per file of the manifest, in its order)."""

    results: dict[str, list[Placement]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = []
        for title, placements in self.results.items():
            if not placements:
                continue
            reasons = {p.reason for p in placements if not p.measured}
            if all(not p.measured for p in placements) and len(reasons) == 1:
                out.append(f"  {title} (information, not a check): not measured: {reasons.pop()}")
                continue
            whole = sum(p.whole for p in placements)
            out.append(f"  {title} (information, not a check): {whole} of {len(placements)} files whole")
            width = max(len(p.path) for p in placements)
            out += [f"    {p.path:{width}s}  {p.describe()}" for p in placements]
        return out

    def to_json(self) -> dict:
        return {"note": "what real accelerators accept per file (information; verify does not fail on it)",
                "accelerators": [{"accelerator": title, "files": [p.to_json() for p in placements]}
                                 for title, placements in self.results.items()]}


def _files(directory: Path, manifest: Manifest, skip: dict[str, str]) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """(manifest path, file) of the files that can be read; the others -> why not."""
    readable, unread = [], dict(skip)
    for artifact in manifest.artifacts:
        if artifact.path in unread:
            continue
        try:
            readable.append((artifact.path, path_in_set(directory, artifact.path)))
        except ManifestError as exc:
            unread[artifact.path] = str(exc)
    return readable, unread


def npu_placements(directory: Path, manifest: Manifest, target_text: str = DEFAULT_NPU_TARGET,
                   skip: dict[str, str] | None = None) -> tuple[str, list[Placement]]:
    """(title, one Placement per file) from the AOT compiler's partition step for `target_text`."""
    from ..device.plugin import check_sdk, run_plugin
    from ..device.targets import parse_targets

    target = parse_targets(target_text)[0]
    title = f"NPU: {target.spec} (LiteRT AOT partition)"
    readable, unread = _files(directory, manifest, skip or {})
    try:
        sdk = check_sdk(target)
        title = f"NPU: {target.spec} (LiteRT AOT partition, {sdk})"
    except SD2TFLiteError as exc:
        return title, [Placement(a.path, False, reason=unread.get(a.path, str(exc))) for a in manifest.artifacts]
    found: dict[str, Placement] = {path: Placement(path, False, reason=why) for path, why in unread.items()}
    with tempfile.TemporaryDirectory(prefix="sd2tflite-npu-") as tmp:
        for name, path in readable:
            run = run_plugin("partition", path, Path(tmp) / "partitioned.tflite", target)
            if run.partition is None:
                found[name] = Placement(name, False, reason=f"the partition step failed: {run.failure}")
            else:
                p = run.partition
                found[name] = Placement(name, True, p.npu_ops, p.total_ops, p.partitions, tuple(p.grouped()))
    return title, [found[a.path] for a in manifest.artifacts]


def gpu_placements(directory: Path, manifest: Manifest,
                   skip: dict[str, str] | None = None) -> tuple[str, list[Placement]]:
    """(title, one Placement per file) from LiteRT.js's GPU accelerator in headless Chromium."""
    readable, unread = _files(directory, manifest, skip or {})
    try:
        from ..serve.placement import measure_gpu_placement
    except ImportError:
        why = "this sd2tflite has no GPU placement measurement (sd2tflite.serve.placement)"
        return GPU_NAME, [Placement(a.path, False, reason=why) for a in manifest.artifacts]
    found: dict[str, Placement] = {path: Placement(path, False, reason=why) for path, why in unread.items()}
    measured = measure_gpu_placement([path for _, path in readable]) if readable else []
    for (name, _), result in zip(readable, measured):
        if not result.measured:
            found[name] = Placement(name, False, reason=result.reason)
            continue
        rejected = []
        for text, count in result.rejected.items():
            op, _, reason = text.partition(": ")
            rejected.append((op, count, reason))
        found[name] = Placement(name, True, result.gpu_ops, result.total_ops, result.partitions, tuple(rejected))
    return GPU_NAME, [found[a.path] for a in manifest.artifacts]


def measure(directory: Path, manifest: Manifest, accelerators: tuple[str, ...] = ACCELERATORS,
            npu_target: str = DEFAULT_NPU_TARGET, skip: dict[str, str] | None = None) -> AcceleratorReport:
    """The report for the chosen accelerators ("npu", "gpu"); `skip`: manifest path -> why it is not read
    (verify passes the files that failed integrity)."""
    report = AcceleratorReport()
    if "npu" in accelerators:
        title, placements = npu_placements(Path(directory), manifest, npu_target, skip)
        report.results[title] = placements
    if "gpu" in accelerators:
        title, placements = gpu_placements(Path(directory), manifest, skip)
        report.results[title] = placements
    return report
