"""``trend_scanning``: the sign and strength of the clearest trend ahead.

For each window length L in ``min_window .. max_window``, ordinary least
squares of ``ln close_{t+x}`` on ``x = 0 .. L-1``; the window with the
largest |t-value| wins (the shortest on ties).  Windows whose closes are all
equal have no t-value.  NULL unless ``t + max_window - 1`` exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from ..errors import InvalidLabelSpec
from .base import Column, LabelSpec, Param, Series

PARAMS = (
    Param("min_window", "int", 5, "shortest window, in bars from t (t included)",
          minimum=3, maximum=100_000),
    Param("max_window", "int", 20, "longest window (>= min_window)", minimum=3, maximum=100_000),
)

OUTPUTS = [("trend_label", pa.int8()), ("trend_tvalue", pa.float64()),
           ("trend_window", pa.int32())]


def _outputs(p: Mapping[str, Any]) -> list[tuple[str, pa.DataType]]:
    if p["max_window"] < p["min_window"]:
        raise InvalidLabelSpec(f"trend_scanning.max_window ({p['max_window']}) must be >= "
                               f"min_window ({p['min_window']})")
    return list(OUTPUTS)


def _compute(kernels: Any, s: Series, sigma, p: Mapping[str, Any]) -> dict[str, Column]:
    label, tvalue, window = kernels.trend_scanning(s.close, p["min_window"], p["max_window"])
    valid = kernels.bitmap_not_nan(tvalue)
    return {"trend_label": (label, valid), "trend_tvalue": (tvalue, valid),
            "trend_window": (window, valid)}


SPEC = LabelSpec.of(__doc__, "trend_scanning", PARAMS, _outputs, lambda p: (0, p["max_window"] - 1),
                    _compute)
