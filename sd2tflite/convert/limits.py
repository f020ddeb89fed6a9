"""The converter's limits and memory model: how large one file may be, and how much RAM converting a
file of a given size takes. Plain numbers and arithmetic: the option checks (request.py) and the
planner (plan.py) both read them, and neither imports the other for them.
"""

from __future__ import annotations

import os

from ..core.precisions import RECIPES

GIB = 1 << 30
# The flatbuffer limit is 2 GiB; above ~1.5 GiB the converter silently switches to the
# buffer-offset format (needs TFLite >= 2.14, breaks plain flatbuffer tools). Stay below that.
DEFAULT_MAX_PART_BYTES = 1400 * (1 << 20)
HARD_FLATBUFFER_LIMIT = 2 * GIB
# Converter memory: the process tree's peak ~ base + factor x the part's float32 weight bytes, the
# factor per precision (QuantRecipe.converter_rss_per_float_byte: the converter holds the float
# graph whatever the precision, calibration an instrumented copy and activations besides). The base
# is a TensorFlow worker's own (~0.6 GB) plus the parent process. Fitted to v1 at 256 and 512
# (tests/data/converter-peak-rss.json): the old single factor (5.3) planned a one-part dynamic UNet
# whose tree peaked at 20.8 GB against a 19.3 GB budget on one machine (17.1 GB on another).
CONVERTER_RSS_BASE = 700 * 10**6
# Calibrating holds the float part plus an instrumented copy (~8 bytes per parameter); past ~1.5 GiB
# the converter writes it in the buffer-offset format. Measured: a 282.8M-parameter int8 part of the
# v1 UNet came out in that format. Keep calibrated parts under ~1.5 GiB / 8 bytes.
CALIBRATED_MAX_PART_PARAMS = 190_000_000


def estimate_converter_rss(params: int, quant: str) -> int:
    """Peak RSS of the process tree while one file of `params` parameters converts."""
    return int(CONVERTER_RSS_BASE + RECIPES[quant].converter_rss_per_float_byte * 4 * params)


def default_memory_budget() -> int | None:
    """80 % of this machine's physical RAM: a default plan never needs more than the machine has."""
    try:
        return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def params_within_memory(budget: int, quant: str) -> int:
    """The most parameters one part may have for its conversion to fit `budget` bytes of RAM."""
    return int((budget - CONVERTER_RSS_BASE) / (RECIPES[quant].converter_rss_per_float_byte * 4))


def max_part_params(quant: str, memory_budget: int | None) -> int | None:
    """The most parameters one part may have (memory budget, calibration), or None for no bound."""
    limits = []
    if memory_budget:
        limits.append(params_within_memory(memory_budget, quant))
    if RECIPES[quant].needs_calibration:
        limits.append(CALIBRATED_MAX_PART_PARAMS)
    return min(limits) if limits else None
