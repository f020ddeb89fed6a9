"""The verify report: every check with its figures, the int8 quality report, and the table and
JSON it prints as. Plain data (no TensorFlow)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.manifest import Manifest
from ..runtime.integrity import Check
from .accelerators import AcceleratorReport


@dataclass
class VerifyReport:
    directory: str
    manifest: Manifest | None
    checks: list[Check] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)  # calibrated precisions: quality.quality_report
    manifest_sha256: str | None = None  # ties the report to the exact files it checked
    accelerators: AcceleratorReport | None = None  # per file and accelerator; information, not part of `passed`

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_json(self) -> dict:
        m = self.manifest
        return {
            "directory": self.directory,
            "family": m.family if m else None,
            "quant": m.quant if m else None,
            "dims": m.dims if m else None,
            "passed": self.passed,
            "manifest_sha256": self.manifest_sha256,
            "settings": self.settings,
            "checks": [c.to_json() for c in self.checks],
            "quality": self.quality,
            "accelerators": self.accelerators.to_json() if self.accelerators else None,
        }

    def table(self) -> str:
        m = self.manifest
        title = f"{m.family} {m.quant}, {m.dims.get('img_width')}x{m.dims.get('img_height')}" if m else "no manifest"
        lines = [f"verify {self.directory} ({title})"]
        for c in self.checks:
            lines.append(f"  {'✓' if c.passed else '✗'} {c.group:10s} {c.name:26s} {c.detail}")
        if self.quality:
            from .quality import describe

            lines.append("  int8 quality against float Keras on held-out pipeline inputs (report):")
            lines.extend(describe(self.quality))
        if self.accelerators:
            lines.extend(self.accelerators.lines())
        failed = sum(not c.passed for c in self.checks)
        lines.append("PASSED" if self.passed else f"FAILED: {failed} of {len(self.checks)} checks")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- inputs
