"""Golden files made in a torch venv (tests/fixtures/make_*_fixtures.py) and the one comparison the
checkpoint and few-step tests hold our outputs to."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TIGHT = 1e-4  # max abs error / max(1, output scale): the mapping itself
EXACT = 1e-2  # vs unpatched diffusers: keras-cv's eps 1e-5 and tanh-GELU deviations


def load_golden(path: Path) -> dict[str, np.ndarray]:
    """`k_exact` is stored as its fp16 difference to `k` (to a thousandth of the EXACT tolerance)."""
    with np.load(path) as z:
        g = {k: z[k] for k in z.files}
    for k in [k for k in g if k.endswith("_exact_delta")]:
        base = k[: -len("_exact_delta")]
        g[f"{base}_exact"] = g[base] + g.pop(k).astype(np.float32)
    return g


def check(label: str, out: np.ndarray, ref: np.ndarray, tol: float = TIGHT, exact: np.ndarray | None = None,
          log: list[str] | None = None) -> None:
    """out vs the golden within tol x max(1, |ref|); with `exact`, vs diffusers as it is within EXACT."""
    assert out.shape == ref.shape, (label, out.shape, ref.shape)
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(out - ref).max())
    line = f"{label}: max abs err {err:.2e} (output scale {scale:.2f})"
    if exact is not None:
        err_x = float(np.abs(out - exact).max())
        line += f"; vs unpatched diffusers {err_x:.2e}"
        assert err_x < EXACT * scale, line
    if log is not None:
        log.append(line)
    print(line)
    assert err < tol * scale, line
