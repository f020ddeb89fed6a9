"""Representative datasets for int8 calibration. Imports no TensorFlow.

A calibration source is any callable `(component, dims, count, seed) -> list[dict[name, array]]`
giving samples for a component's pipeline-facing inputs. The built-in one is synthetic: the seeded
sample inputs every part of sd2tflite shares (runtime/samples.py). UNet parts after the first are
calibrated on what the float parts before them compute from these samples (convert/export.py does
that).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ...core.registry import ModelDims
from ...runtime.samples import synthetic_samples

CalibrationSource = Callable[[str, ModelDims, int, int], list[dict[str, np.ndarray]]]

__all__ = ["CalibrationSource", "synthetic_samples"]
