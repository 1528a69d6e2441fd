"""``enhanced_triple_barrier``: which of three barriers price reaches first.

For bar t the upper barrier is ``close_t * (1 + pt * sigma_t)``, the lower
``close_t * (1 - sl * sigma_t)``, the vertical one ``horizon`` bars later.
Gaps through a barrier exit at the open; a bar touching both is resolved by
``tie``; windows cut short by the end of the data are NULL (flag 4).  With
``side="column"`` the candles' ``side`` column says which way each row bets:
a short's profit target is the lower barrier, labels are relative to the
side, ``tb_meta`` says whether the bet made money, and rows without a
position are NULL (flag 32).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from kernels import flags as core

from ..common.granularity import GRANULARITIES
from ..errors import InvalidInput
from .base import Column, Counter, FinerCandles, LabelSpec, Param, Series
from .volatility import VOL_PARAMS, compute_sigma, sigma_key, sigma_lookback

_TIE = {"sl": core.TIE_SL, "tp": core.TIE_TP, "skip": core.TIE_SKIP}
_VERTICAL = {"zero": core.VERTICAL_ZERO, "sign": core.VERTICAL_SIGN}

PARAMS = (
    Param("horizon", "int", 24, "vertical barrier, in bars after t", minimum=1, maximum=1_000_000),
    Param("pt", "float", 1.0, "upper barrier distance, in sigmas (profit taking)", minimum=1e-12),
    Param("sl", "float", 1.0, "lower barrier distance, in sigmas (stop loss)", minimum=1e-12),
    Param("tie", "choice", "sl", "bar touching both barriers: 'sl' the stop wins (lower; a "
          "short's upper), 'tp' the profit target, 'skip' exit at that bar's close with label 0",
          choices=tuple(_TIE)),
    Param("vertical", "choice", "zero", "label at the vertical barrier: 'zero', or 'sign' of the "
          "return when |return| >= min_ret", choices=tuple(_VERTICAL)),
    Param("min_ret", "float", 0.0, "smallest |return| labelled by vertical='sign'", minimum=0.0),
) + VOL_PARAMS + (
    Param("resolve_with", "choice", "", "a finer granularity (e.g. 'M1' for an H1 series) whose "
          "candles decide bars that touch both barriers; '' uses the tie rule",
          choices=("",) + tuple(GRANULARITIES), added_later=True),
    Param("weights", "bool", False, "also output AFML sample weights: tb_uniqueness, "
          "tb_attribution", added_later=True),
    Param("side", "choice", "", "'column': each row's position from the candles' side column "
          "(+1 long, -1 short, 0/NULL none): side-relative barriers and labels, and tb_meta; "
          "'' no sides", choices=("", "column"), added_later=True),
)

OUTPUTS = [
    ("tb_label", pa.int8()),
    ("tb_barrier", pa.int8()),
    ("tb_exit_bars", pa.int32()),
    ("tb_exit_return", pa.float64()),
    ("tb_flags", pa.uint8()),
]


WEIGHT_OUTPUTS = [("tb_uniqueness", pa.float64()), ("tb_attribution", pa.float64())]
META_OUTPUTS = [("tb_meta", pa.int8())]

# Rows whose label is NULL.
NULL_FLAGS = core.FLAG_INCOMPLETE | core.FLAG_NO_VOL | core.FLAG_NO_SIDE


def _outputs(p: Mapping[str, Any]) -> list[tuple[str, pa.DataType]]:
    return (list(OUTPUTS) + (list(META_OUTPUTS) if p["side"] else [])
            + (list(WEIGHT_OUTPUTS) if p["weights"] else []))


def uses_side(p: Mapping[str, Any]) -> bool:
    return p.get("side") == "column"


def _halo(p: Mapping[str, Any]) -> tuple[int, int]:
    if p["weights"]:
        # Row i's weights count the events that overlap its span: rows back
        # to i - H (with their own sigma look-back) and up to i + H - 1, whose
        # exits lie up to H bars further.
        return sigma_lookback(p) + p["horizon"], 2 * p["horizon"]
    return sigma_lookback(p), p["horizon"]


def _compute(kernels: Any, s: Series, sigma, p: Mapping[str, Any]) -> dict[str, Column]:
    tie = _TIE[p["tie"]]
    side = s.side if uses_side(p) else None
    if uses_side(p) and side is None:
        raise InvalidInput("enhanced_triple_barrier.side='column' needs a side column beside the "
                           "candles")
    label, barrier, bars, ret, flags = kernels.triple_barrier(
        s.open, s.high, s.low, s.close, sigma, p["horizon"], p["pt"], p["sl"],
        tie, _VERTICAL[p["vertical"]], p["min_ret"], side=side)
    if p["resolve_with"] and s.finer is not None:
        resolve_ambiguous(kernels, s, sigma, p, label, barrier, bars, ret, flags)
    valid = kernels.bitmap_flags_clear(flags, NULL_FLAGS)
    out = {
        "tb_label": (label, valid),
        "tb_barrier": (barrier, valid),
        "tb_exit_bars": (bars, valid),
        "tb_exit_return": (ret, valid),
        "tb_flags": (flags, None),
    }
    if side is not None:
        out["tb_meta"] = (kernels.tb_meta(side, ret), valid)
    if p["weights"]:
        uniq, attr = kernels.sample_weights(s.close, flags, bars, p["horizon"])
        out["tb_uniqueness"] = (uniq, kernels.bitmap_not_nan(uniq))
        out["tb_attribution"] = (attr, kernels.bitmap_not_nan(attr))
    return out


def levels(kernels: Any, close: np.ndarray, p: Mapping[str, Any]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each bar's sigma, and its upper and lower barrier price for a long position (no
    sides), from the sigma and the bounds the kernel uses; NaN where sigma
    is missing or 0 (the label is NULL there).  ``close`` starts
    ``sigma_lookback(p)`` bars before the first bar wanted (or at the
    series' start) for the same sigma as a chunk's."""
    from kernels import core as kernel_core  # numba: only where levels are drawn

    close = np.ascontiguousarray(close, dtype=np.float64)
    sigma = np.asarray(kernels.to_host(compute_sigma(kernels, close, *sigma_key(p))), dtype=np.float64)
    upper, lower = kernel_core.tb_side_bounds(close, sigma, p["pt"], p["sl"], 1)
    missing = ~(sigma > 0.0)
    return sigma, np.where(missing, np.nan, upper), np.where(missing, np.nan, lower)


def bar_length(ts: np.ndarray) -> int:
    """The most frequent step between bars (the shortest on ties)."""
    steps = np.diff(np.asarray(ts, dtype=np.int64))
    if steps.size == 0:
        return 0
    values, counts = np.unique(steps, return_counts=True)
    return int(values[np.flatnonzero(counts == counts.max())[0]])


def resolve_ambiguous(kernels: Any, s: Series, sigma, p: Mapping[str, Any],
                      label, barrier, bars, ret, flags) -> tuple[int, int]:
    """Replay each ambiguous exit bar on the finer candles inside it, in
    place; (bars decided, bars left to the tie rule).  Only the bars that
    need it are asked of ``s.finer`` when it is a loader."""
    host_flags = kernels.to_host(flags)
    rows = np.flatnonzero((host_flags & core.FLAG_AMBIGUOUS) != 0).astype(np.int64)
    if rows.size == 0:
        return 0, 0
    host_bars = kernels.to_host(bars)
    ts = np.asarray(s.ts, dtype=np.int64)
    starts = ts[rows + host_bars[rows]]
    bar_ms = s.bar_ms or bar_length(ts)
    finer = s.finer(np.unique(starts), bar_ms) if callable(s.finer) else s.finer
    f_ts = np.asarray(finer.ts, dtype=np.int64)
    f_start = np.searchsorted(f_ts, starts, side="left").astype(np.int64)
    f_end = np.searchsorted(f_ts, starts + bar_ms, side="left").astype(np.int64)
    decided = int(kernels.tb_resolve(rows, bars, f_start, f_end, finer.open, finer.high,
                                     finer.low, s.close, sigma, p["pt"], p["sl"],
                                     label, barrier, ret, flags,
                                     side=s.side if uses_side(p) else None))
    return decided, int(rows.size) - decided


def _finer(p: Mapping[str, Any]) -> tuple[FinerCandles, ...]:
    if not p["resolve_with"]:
        return ()
    return (FinerCandles(p["resolve_with"], "resolve_with",
                         "ambiguous bars fall back to the tie rule"),)


def _flag_count(bit: int):
    """Rows with ``bit`` in tb_flags, counted only where finer candles were
    asked for (without them every ambiguous bar is the tie rule's, by design)."""
    def count(labels: pa.Table, p: Mapping[str, Any]) -> int:
        if not p["resolve_with"]:
            return 0
        return int(np.count_nonzero(labels.column("tb_flags").to_numpy() & bit))
    return count


# Bars decided by the finer candles, and bars left to the tie rule (no
# finer candles there, or still ambiguous at the finer level).
COUNTERS = (
    Counter("tb_resolved", "bars_resolved", _flag_count(core.FLAG_RESOLVED)),
    Counter("tb_ambiguous", "bars_ambiguous", _flag_count(core.FLAG_AMBIGUOUS)),
)


SPEC = LabelSpec.of(__doc__, "enhanced_triple_barrier", PARAMS, _outputs, _halo, _compute,
                    uses_sigma=True, inputs=("open", "high", "low", "close"), extra_inputs=_finer,
                    counters=COUNTERS)
