"""``barrier_grid``: the triple barrier for every (pt, sl, horizon) at once.

Lists with one element per combination, pts outer, sls, horizons inner
(element ``(i_pt * len(sls) + i_sl) * len(horizons) + i_h``); each element
is exactly what ``enhanced_triple_barrier`` with that pt, sl and horizon
(and the same tie, vertical, min_ret and volatility) gives for the row.
One search per row finds the first touch of every barrier level, and every
combination is read off those.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from kernels import flags as core

from ..errors import InvalidLabelSpec
from .base import Column, LabelSpec, Param, Series
from .triple_barrier import _TIE, _VERTICAL
from .triple_barrier import PARAMS as TB_PARAMS
from .volatility import VOL_PARAMS, sigma_lookback

_SHARED = {p.name: p for p in TB_PARAMS}

PARAMS = (
    Param("pts", "float_list", [1.0, 2.0], "upper barrier distances, in sigmas (the order of "
          "the combinations: pts outer)", minimum=1e-12, keep_order=True),
    Param("sls", "float_list", [1.0, 2.0], "lower barrier distances, in sigmas", minimum=1e-12,
          keep_order=True),
    Param("horizons", "int_list", [12, 24, 48], "vertical barriers, in bars after t (inner)",
          minimum=1, maximum=1_000_000, keep_order=True),
    _SHARED["tie"], _SHARED["vertical"], _SHARED["min_ret"],
) + VOL_PARAMS

OUTPUTS = [
    ("grid_label", pa.list_(pa.int8())),
    ("grid_exit_bars", pa.list_(pa.int32())),
    ("grid_exit_return", pa.list_(pa.float64())),
    ("grid_flags", pa.list_(pa.uint8())),
]


def combinations(p: Mapping[str, Any]) -> int:
    return len(p["pts"]) * len(p["sls"]) * len(p["horizons"])


def _outputs(p: Mapping[str, Any]) -> list[tuple[str, pa.DataType]]:
    g = combinations(p)
    if g > core.MAX_COMBINATIONS:
        raise InvalidLabelSpec(
            f"barrier_grid has {len(p['pts'])} pts x {len(p['sls'])} sls x {len(p['horizons'])} "
            f"horizons = {g} combinations; at most {core.MAX_COMBINATIONS}")
    return list(OUTPUTS)


def _halo(p: Mapping[str, Any]) -> tuple[int, int]:
    return sigma_lookback(p), max(p["horizons"])


def _compute(kernels: Any, s: Series, sigma, p: Mapping[str, Any]) -> dict[str, Column]:
    label, bars, ret, flags = kernels.barrier_grid(
        s.open, s.high, s.low, s.close, sigma, np.asarray(p["pts"], dtype=np.float64),
        np.asarray(p["sls"], dtype=np.float64), np.asarray(p["horizons"], dtype=np.int64),
        _TIE[p["tie"]], _VERTICAL[p["vertical"]], p["min_ret"])
    # Element validity over the flat (row-major) elements: the list values.
    valid = kernels.bitmap_flags_clear(kernels.to_host(flags).reshape(-1),
                                       core.FLAG_INCOMPLETE | core.FLAG_NO_VOL)
    return {
        "grid_label": (label, valid),
        "grid_exit_bars": (bars, valid),
        "grid_exit_return": (ret, valid),
        "grid_flags": (flags, None),
    }


SPEC = LabelSpec.of(__doc__, "barrier_grid", PARAMS, _outputs, _halo, _compute,
                    uses_sigma=True, inputs=("open", "high", "low", "close"))
