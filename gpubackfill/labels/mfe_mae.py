"""``mfe_mae``: maximum favourable and adverse excursion over the next bars.

Over bars t+1..t+horizon: ``mfe = max(high) / close_t - 1``, ``mae =
min(low) / close_t - 1``, and the offset of the first bar reaching each.
NULL unless the whole window exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from .base import Column, LabelSpec, Param, Series

PARAMS = (
    Param("horizon", "int", 24, "window length in bars after t", minimum=1, maximum=1_000_000),
)

OUTPUTS = [
    ("mfe", pa.float64()),
    ("mae", pa.float64()),
    ("mfe_bars", pa.int32()),
    ("mae_bars", pa.int32()),
]


def _compute(kernels: Any, s: Series, sigma, p: Mapping[str, Any]) -> dict[str, Column]:
    mfe, mae, mfe_bars, mae_bars = kernels.mfe_mae(s.high, s.low, s.close, p["horizon"])
    n = len(s)
    valid = kernels.bitmap_prefix(n, n - p["horizon"])
    return {
        "mfe": (mfe, valid),
        "mae": (mae, valid),
        "mfe_bars": (mfe_bars, valid),
        "mae_bars": (mae_bars, valid),
    }


SPEC = LabelSpec.of(__doc__, "mfe_mae", PARAMS, lambda p: list(OUTPUTS), lambda p: (0, p["horizon"]),
                    _compute, inputs=("high", "low", "close"))
