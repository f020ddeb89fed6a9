"""The bench picture: median latency per stage and file size per component, one bar per case."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import UsageError
from ..core.fsutil import atomic_write
from .report import case_label

PLOT_MARKER = b"sd2tflite bench"  # the plot's PNG Software text: an earlier plot may be replaced


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'sd2tflite[plot]'") from None


def plot(cases: list[dict], path: Path) -> Path:
    """Bar charts: median latency per stage (log scale) and file size per component, one bar per case."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    timed = [c for c in cases if c["backend"] != "convert"]
    stages = list(dict.fromkeys(s["name"] for c in timed for s in c["stages"]))
    sized = list({c["directory"]: c for c in timed if c["backend"] == "litert"}.values())  # one per set
    files = list(dict.fromkeys(s["name"] for c in sized for s in c["stages"] if s["bytes"] is not None))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 1.2 * len(stages)), 9))
    for axis, names, group, value, unit in (
            (top, stages, timed, lambda s: s["median_seconds"], "median seconds (log)"),
            (bottom, files, sized, lambda s: s["bytes"] and s["bytes"] / 2**20, "file MiB")):
        width = 0.8 / max(1, len(group))
        for i, case in enumerate(group):
            by_name = {s["name"]: s for s in case["stages"]}
            heights = [value(by_name[n]) if n in by_name and value(by_name[n]) else 0 for n in names]
            axis.bar(np.arange(len(names)) + i * width, heights, width, label=case_label(case))
        axis.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=20, ha="right")
        axis.set_ylabel(unit)
    top.set_yscale("log")
    top.legend(fontsize="small")
    bottom.legend([case_label(c).split(",")[0] for c in sized], fontsize="small")
    top.set_title("sd2tflite bench")
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_write(path, suffix=path.suffix or ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=110, metadata={"Software": PLOT_MARKER.decode()})
    finally:
        plt.close(fig)
    return path
