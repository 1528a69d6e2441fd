"""The shared volatility estimate sigma_t and its parameters.

sigma_t is the per-bar standard deviation of log returns using data up to
and including bar t.  Labels that scale by volatility declare ``VOL_PARAMS``
and receive sigma from the engine, which computes it once per distinct
(vol, vol_span) for all labels of a request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import Param

VOL_PARAMS = (
    Param("vol", "choice", "ewm", "volatility estimator: 'ewm' (pandas ewm std, adjust=True) "
          "or 'rolling' (sample std of the last vol_span returns)", choices=("ewm", "rolling")),
    Param("vol_span", "int", 100, "span of the ewm, or window of the rolling std, in returns",
          minimum=2, maximum=100_000),
)

# The ewm has infinite memory.  A chunk starts it this many bars early so
# the weight of everything it cannot see is below 1e-18 of the total: the
# truncated std then differs from the whole-series one by about 1e-9 of the
# variance scale inside the look-back (see docs/labels.md, "Chunking and halos").
_EWM_NEGLIGIBLE_WEIGHT = 1e-18


def sigma_key(params: Mapping[str, Any]) -> tuple[str, int]:
    return params["vol"], params["vol_span"]


def sigma_lookback(params: Mapping[str, Any]) -> int:
    """Bars before a row that its sigma depends on (to 1e-18 weight for ewm)."""
    span = params["vol_span"]
    if params["vol"] == "rolling":
        return span
    alpha = 2.0 / (span + 1.0)
    return span + math.ceil(math.log(_EWM_NEGLIGIBLE_WEIGHT) / math.log1p(-alpha))


def compute_sigma(kernels: Any, close: np.ndarray, vol: str, vol_span: int) -> np.ndarray:
    if vol == "rolling":
        return kernels.rolling_sigma(close, vol_span)
    return kernels.ewm_sigma(close, vol_span)
