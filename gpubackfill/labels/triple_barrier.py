"""``enhanced_triple_barrier``: which of three barriers price reaches first.

For bar t the upper barrier is ``close_t * (1 + pt * sigma_t)``, the lower
``close_t * (1 - sl * sigma_t)``, the vertical one ``horizon`` bars later.
Gaps through a barrier exit at the open; a bar touching both is resolved by
``tie``; windows cut short by the end of the data are NULL (flag 4).
"""

from __future__ import annotations

from typing import Any, Mapping

import pyarrow as pa

from kernels import core

from .base import Column, LabelSpec, Param, Series
from .volatility import VOL_PARAMS, sigma_lookback

_TIE = {"sl": core.TIE_SL, "tp": core.TIE_TP, "skip": core.TIE_SKIP}
_VERTICAL = {"zero": core.VERTICAL_ZERO, "sign": core.VERTICAL_SIGN}

PARAMS = (
    Param("horizon", "int", 24, "vertical barrier, in bars after t", minimum=1, maximum=1_000_000),
    Param("pt", "float", 1.0, "upper barrier distance, in sigmas (profit taking)", minimum=1e-12),
    Param("sl", "float", 1.0, "lower barrier distance, in sigmas (stop loss)", minimum=1e-12),
    Param("tie", "choice", "sl", "bar touching both barriers: 'sl' lower wins, 'tp' upper wins, "
          "'skip' exit at that bar's close with label 0", choices=tuple(_TIE)),
    Param("vertical", "choice", "zero", "label at the vertical barrier: 'zero', or 'sign' of the "
          "return when |return| >= min_ret", choices=tuple(_VERTICAL)),
    Param("min_ret", "float", 0.0, "smallest |return| labelled by vertical='sign'", minimum=0.0),
) + VOL_PARAMS

OUTPUTS = [
    ("tb_label", pa.int8()),
    ("tb_barrier", pa.int8()),
    ("tb_exit_bars", pa.int32()),
    ("tb_exit_return", pa.float64()),
    ("tb_flags", pa.uint8()),
]


def _halo(p: Mapping[str, Any]) -> tuple[int, int]:
    return sigma_lookback(p), p["horizon"]


def _compute(kernels: Any, s: Series, sigma, p: Mapping[str, Any]) -> dict[str, Column]:
    label, barrier, bars, ret, flags = kernels.triple_barrier(
        s.open, s.high, s.low, s.close, sigma, p["horizon"], p["pt"], p["sl"],
        _TIE[p["tie"]], _VERTICAL[p["vertical"]], p["min_ret"])
    valid = kernels.bitmap_flags_clear(flags, core.FLAG_INCOMPLETE | core.FLAG_NO_VOL)
    return {
        "tb_label": (label, valid),
        "tb_barrier": (barrier, valid),
        "tb_exit_bars": (bars, valid),
        "tb_exit_return": (ret, valid),
        "tb_flags": (flags, None),
    }


SPEC = LabelSpec(
    name="enhanced_triple_barrier",
    doc=__doc__.strip().splitlines()[0],
    params=PARAMS,
    outputs=lambda p: list(OUTPUTS),
    halo=_halo,
    compute=_compute,
    uses_sigma=True,
)
