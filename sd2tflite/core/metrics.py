"""How close two outputs are: PSNR, SNR, cosine, max / mean absolute error (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Parity:
    max_abs: float
    mean_abs: float
    psnr_db: float  # over the reference's value range unless a peak is given
    cosine: float
    snr_db: float = float("inf")  # reference power over error power

    def passes(self, min_psnr_db: float, min_cosine: float) -> bool:
        return self.psnr_db >= min_psnr_db and self.cosine >= min_cosine

    def __str__(self) -> str:
        return (f"PSNR {self.psnr_db:.1f} dB, cosine {self.cosine:.6f}, "
                f"max |err| {self.max_abs:.3g}, mean |err| {self.mean_abs:.3g}")


def parity(reference: np.ndarray, actual: np.ndarray, peak: float | None = None) -> Parity:
    ref = np.asarray(reference, dtype=np.float64).ravel()
    out = np.asarray(actual, dtype=np.float64).ravel()
    if ref.shape != out.shape:
        raise ValueError(f"shape mismatch: {np.shape(reference)} vs {np.shape(actual)}")
    err = out - ref
    rmse = float(np.sqrt(np.mean(err**2)))
    peak = peak or float(ref.max() - ref.min()) or 1.0
    psnr = float("inf") if rmse == 0 else float(20.0 * np.log10(peak / rmse))
    denom = float(np.linalg.norm(ref) * np.linalg.norm(out))
    cosine = float(ref @ out / denom) if denom else float(rmse == 0)
    signal = float(np.mean(ref**2))
    snr = float("inf") if rmse == 0 else float(10.0 * np.log10(max(signal, 1e-30) / rmse**2))
    return Parity(float(np.abs(err).max()), float(np.abs(err).mean()), psnr, cosine, snr)
