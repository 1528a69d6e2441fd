"""``fixed_horizon``: the sign of the return ``horizon`` bars ahead, beyond a
volatility band.

``r = ln(close_{t+h} / close_t)``; ``fh_label`` is +1 above
``threshold * sigma_t * sqrt(h)``, -1 below its negative, else 0.  NULL past
the end of the data, and (with a threshold) where sigma_t is missing or 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from .base import Column, LabelSpec, Param, Series
from .volatility import VOL_PARAMS, sigma_lookback

PARAMS = (
    Param("horizon", "int", 24, "bars ahead", minimum=1, maximum=1_000_000),
    Param("threshold", "float", 0.0, "band half-width in units of sigma_t * sqrt(horizon); "
          "0 labels the plain sign and needs no sigma", minimum=0.0),
) + VOL_PARAMS

OUTPUTS = [("fh_label", pa.int8()), ("fh_return", pa.float64())]


def _halo(p: Mapping[str, Any]) -> tuple[int, int]:
    return (sigma_lookback(p) if p["threshold"] > 0 else 0), p["horizon"]


def _compute(kernels: Any, s: Series, sigma, p: Mapping[str, Any]) -> dict[str, Column]:
    label, ret = kernels.fixed_horizon(s.close, sigma, p["horizon"], p["threshold"])
    valid = kernels.bitmap_not_nan(ret)
    return {"fh_label": (label, valid), "fh_return": (ret, valid)}


SPEC = LabelSpec.of(__doc__, "fixed_horizon", PARAMS, lambda p: list(OUTPUTS), _halo, _compute,
                    uses_sigma=True)
