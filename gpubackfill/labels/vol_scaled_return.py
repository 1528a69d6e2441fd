"""``vol_scaled_return``: forward log returns in units of expected move.

``vsr_h = ln(close_{t+h} / close_t) / (sigma_t * sqrt(h))`` for every h in
``horizons``; NULL past the end of the data or where sigma_t is missing or 0.
Also outputs ``sigma``, the sigma_t used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from .base import Column, LabelSpec, Param, Series
from .volatility import VOL_PARAMS, sigma_lookback

PARAMS = (
    Param("horizons", "int_list", [1, 5, 20], "forward horizons in bars (one column each)",
          minimum=1, maximum=1_000_000),
) + VOL_PARAMS


def _outputs(p: Mapping[str, Any]) -> list[tuple[str, pa.DataType]]:
    return [(f"vsr_{h}", pa.float64()) for h in p["horizons"]] + [("sigma", pa.float64())]


def _halo(p: Mapping[str, Any]) -> tuple[int, int]:
    return sigma_lookback(p), max(p["horizons"])


def _compute(kernels: Any, s: Series, sigma, p: Mapping[str, Any]) -> dict[str, Column]:
    horizons = np.asarray(p["horizons"], dtype=np.int64)
    values = kernels.vol_scaled_return(s.close, sigma, horizons)
    out: dict[str, Column] = {}
    for k, h in enumerate(p["horizons"]):
        col = values[k]
        out[f"vsr_{h}"] = (col, kernels.bitmap_not_nan(col))
    out["sigma"] = (sigma, kernels.bitmap_not_nan(sigma))
    return out


SPEC = LabelSpec.of(__doc__, "vol_scaled_return", PARAMS, _outputs, _halo, _compute, uses_sigma=True)
