"""NPU targets: `qualcomm:SM8650,SM8750`, `mediatek:MT6989`, `google_tensor:Tensor_G4`.

The SoC lists are ai-edge-litert's own (`ai_edge_litert.aot.vendors.*.target.SocModel`), so a newer
ai-edge-litert brings its new SoCs without a change here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..core.errors import UsageError


@dataclass(frozen=True)
class Vendor:
    name: str  # how targets spell it: qualcomm, mediatek, google_tensor
    manufacturer: str  # what LiteRT's plugin tool calls it (--soc_manufacturer)
    module: str  # ai_edge_litert.aot.vendors.<module>.target
    sdk_package: str  # the pip package that provides the vendor's compiler libraries


VENDORS: dict[str, Vendor] = {
    "qualcomm": Vendor("qualcomm", "Qualcomm", "qualcomm", "onnxruntime-qnn==2.6.0"),
    "mediatek": Vendor("mediatek", "MediaTek", "mediatek", "ai-edge-litert-sdk-mediatek"),
    "google_tensor": Vendor("google_tensor", "Google", "google_tensor", "ai-edge-litert-sdk-google-tensor"),
}
_ALIASES = {"qcom": "qualcomm", "google-tensor": "google_tensor", "tensor": "google_tensor", "mtk": "mediatek"}


@dataclass(frozen=True, order=True)
class Target:
    vendor: str
    soc: str

    @property
    def spec(self) -> str:
        """`vendor:SOC`, as the manifest records it."""
        return f"{self.vendor}:{self.soc}"

    @property
    def folder(self) -> str:
        """The set's sub-folder for this target's compiled files, e.g. npu/qualcomm-sm8650."""
        return f"npu/{self.vendor.replace('_', '-')}-{self.soc.lower()}"

    @property
    def manufacturer(self) -> str:
        return VENDORS[self.vendor].manufacturer


def known_socs(vendor: str) -> list[str]:
    """The SoC models ai-edge-litert's AOT tooling knows for `vendor`, in its order."""
    module = importlib.import_module(f"ai_edge_litert.aot.vendors.{VENDORS[vendor].module}.target")
    return [m.value for m in module.SocModel if m.value != "ALL"]


def _shown(text: str, limit: int = 60) -> str:
    """A user's text quoted in a message, cut so that a 10 kB --target still gives a short line."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text):,} characters)"


def parse_targets(text: str) -> list[Target]:
    """`VENDOR:SOC[,SOC...]`, several joined by `;` or repeated by the caller. SoC names are matched
    without regard to case. Unknown vendor or SoC: one UsageError listing the known ones."""
    targets: list[Target] = []
    for chunk in (c.strip() for c in text.split(";")):
        if not chunk:
            continue
        vendor_text, sep, socs_text = chunk.partition(":")
        vendor = _ALIASES.get(vendor_text.strip().lower(), vendor_text.strip().lower())
        if vendor not in VENDORS:
            raise UsageError(f"unknown NPU vendor {_shown(vendor_text.strip())} in --target {_shown(text)}: use one of "
                             f"{', '.join(VENDORS)} (e.g. qualcomm:SM8650)")
        known = known_socs(vendor)
        if not sep or not socs_text.strip():
            raise UsageError(f"--target {_shown(chunk)} names no SoC: write {vendor}:SOC[,SOC...], "
                             f"SOC one of {', '.join(known)}")
        by_upper = {s.upper(): s for s in known}
        for soc_text in (s.strip() for s in socs_text.split(",")):
            soc = by_upper.get(soc_text.upper())
            if soc is None:
                raise UsageError(f"unknown {vendor} SoC {_shown(soc_text)}: use one of {', '.join(known)}")
            target = Target(vendor, soc)
            if target not in targets:
                targets.append(target)
    if not targets:
        raise UsageError("--target is empty: write VENDOR:SOC, e.g. qualcomm:SM8650")
    return targets
