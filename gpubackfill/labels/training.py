"""From labels to a training set: event ends, purged k-fold, sequential bootstrap.

Triple-barrier rows overlap in time (a row's outcome is known only at its
exit), so ordinary k-fold leaks the test set's future into training, and
bootstrap samples drawn uniformly are full of near-copies.  These three tools
follow the contract in LABELS.md ("Event end and purged cross-validation"):

- ``event_end``: each row's exit time ``t1`` from the series' own ``ts``.
- ``PurgedKFold``: a scikit-learn splitter that drops from training every row
  whose ``[t0, t1]`` meets the test fold's span, and an embargo after it.
- ``sequential_bootstrap``: AFML's draw by average uniqueness, in time
  linear in the overlap of each draw (``kernels.bootstrap``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidInput

__all__ = ["PurgedKFold", "event_end", "sequential_bootstrap"]


# ----------------------------------------------------------------- helpers


def _nullable_ints(x: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, valid mask) of integer-valued data with NULLs: numpy
    (NaN or a mask), pandas (NA / NaN) or pyarrow (null)."""
    if isinstance(x, pa.ChunkedArray | pa.Array):
        if not (pa.types.is_integer(x.type) or pa.types.is_floating(x.type)):
            raise InvalidInput(f"{name} must be integers, got Arrow type {x.type}")
        f = pc.cast(x, pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN
    elif isinstance(x, np.ma.MaskedArray):
        f = _floats(np.ma.getdata(x), name)
        f[np.ma.getmaskarray(x)] = np.nan
    elif isinstance(x, pd.Series | pd.Index):
        if not pd.api.types.is_numeric_dtype(x.dtype) or pd.api.types.is_bool_dtype(x.dtype):
            raise InvalidInput(f"{name} must be integers, got dtype {x.dtype}")
        f = x.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        f = _floats(x, name)
    if f.ndim != 1:
        raise InvalidInput(f"{name} must be one-dimensional, got shape {f.shape}")
    valid = ~np.isnan(f)
    bad = np.flatnonzero(valid & (f != np.round(f)))
    if bad.size:
        raise InvalidInput(f"{name} must be whole numbers: row {bad[0]} is {float(f[bad[0]])}")
    return np.where(valid, f, 0).astype(np.int64), valid


def _floats(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iuf" and a.dtype != object:
        raise InvalidInput(f"{name} must be integers, got dtype {a.dtype}")
    try:
        return np.array(a, dtype=np.float64)  # an object array's None becomes NaN
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be integers, got values such as {a.flat[0]!r}") from None


def _has_nulls(ts: Any) -> np.ndarray:
    if isinstance(ts, pa.ChunkedArray | pa.Array):
        return ts.is_null().to_numpy(zero_copy_only=False)
    if isinstance(ts, pd.Series):
        return ts.isna().to_numpy()
    return np.isnat(ts) if ts.dtype.kind == "M" else np.zeros(len(ts), dtype=bool)


def _is_time(dtype: Any) -> bool:
    return pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype)


# --------------------------------------------------------------- event_end


def event_end(ts: Any, tb_exit_bars: Any) -> Any:
    """Each row's exit time: ``t1[t] = ts[t + tb_exit_bars[t]]``, NULL where
    ``tb_exit_bars`` is NULL.

    ``ts``: the series' timestamps, the rows the labels were computed on
    (int64 epoch milliseconds or datetimes); row ``t`` is a position, not an
    index label.  ``tb_exit_bars``: the triple barrier's output for the same rows (NULL as NaN, pandas NA, a numpy mask
    or Arrow null).  The result has ``ts``'s own type, with that type's NULL:

    ========================================  =====================================
    ``ts``                                    result
    ========================================  =====================================
    pyarrow Array / ChunkedArray              the same class and type, null
    pandas Series                             Series with ``ts``'s index; datetime
                                              dtypes kept (NaT), integers ``Int64``
    numpy ``datetime64``                      same dtype, NaT
    numpy integers (or a list)                ``numpy.ma.MaskedArray`` of int64
    ========================================  =====================================

    Raises ``InvalidInput`` for different lengths, NULL or non-time ``ts``,
    and an exit before its row or past the end of ``ts``.
    """
    if isinstance(ts, pa.ChunkedArray | pa.Array):
        ok = pa.types.is_integer(ts.type) or pa.types.is_timestamp(ts.type) or pa.types.is_date(ts.type)
        dtype_text = str(ts.type)
    else:
        if not isinstance(ts, pd.Series):
            ts = np.asarray(ts)
            if ts.ndim != 1:
                raise InvalidInput(f"ts must be one-dimensional, got shape {ts.shape}")
        ok = _is_time(ts.dtype)
        dtype_text = str(ts.dtype)
    if not ok:
        raise InvalidInput(f"ts must be int64 epoch milliseconds or timestamps, got {dtype_text}")
    n = len(ts)
    bars, valid = _nullable_ints(tb_exit_bars, "tb_exit_bars")
    if len(bars) != n:
        raise InvalidInput(f"ts has {n} rows but tb_exit_bars has {len(bars)}: pass the same rows")
    nulls = np.flatnonzero(_has_nulls(ts))
    if nulls.size:
        raise InvalidInput(f"ts is NULL at row {nulls[0]}")
    if n == 0:
        pos = np.zeros(0, np.int64)
    else:
        pos = np.arange(n, dtype=np.int64) + bars
        bad = np.flatnonzero(valid & (bars < 0))
        if bad.size:
            raise InvalidInput(f"tb_exit_bars is {bars[bad[0]]} at row {bad[0]}: an exit cannot come "
                               f"before its row")
        bad = np.flatnonzero(valid & (pos >= n))
        if bad.size:
            raise InvalidInput(f"tb_exit_bars is {bars[bad[0]]} at row {bad[0]}, past the end of ts "
                               f"({n} rows): pass the whole series the labels were computed on")
        pos[~valid] = 0

    if isinstance(ts, pa.ChunkedArray | pa.Array):
        return pc.take(ts, pa.array(pos, mask=~valid))  # a null position gives null
    if isinstance(ts, pd.Series):
        if pd.api.types.is_integer_dtype(ts.dtype):
            out = pd.array(ts.to_numpy(dtype=np.int64)[pos], dtype="Int64")
            out[~valid] = pd.NA
            return pd.Series(out, index=ts.index, name=ts.name)
        result = pd.Series(ts.array.take(pos), index=ts.index, name=ts.name)
        return result.where(valid)  # NaT where NULL, dtype (and time zone) kept
    if ts.dtype.kind == "M":
        out = ts[pos]
        out[~valid] = np.datetime64("NaT")
        return out
    return np.ma.MaskedArray(ts[pos].astype(np.int64), mask=~valid)


# ------------------------------------------------------------- PurgedKFold


def _time_values(values: Any, what: str) -> tuple[np.ndarray, str]:
    """Comparable int64/float64 numbers and their kind ('time' or 'number')."""
    dtype = values.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype):
        index = pd.DatetimeIndex(values)
        tz = "aware" if index.tz is not None else "naive"
        return index.as_unit("ns").asi8, f"time ({tz})"  # tz-aware: UTC nanoseconds
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        kind = np.int64 if pd.api.types.is_integer_dtype(dtype) else np.float64
        return np.asarray(values.to_numpy(dtype=kind)), "number"
    raise InvalidInput(f"{what} must be timestamps or numbers, got dtype {dtype}")


def _intervals(t1: Any) -> tuple[np.ndarray, np.ndarray]:
    """(t0, t1) as comparable numbers, checked against the contract."""
    if not isinstance(t1, pd.Series):
        raise InvalidInput("t1 must be a pandas Series of event ends indexed by each row's start "
                           f"time t0, got {type(t1).__name__}")
    null_t0 = np.flatnonzero(pd.isna(t1.index))
    if null_t0.size:
        raise InvalidInput(f"t1's index (t0) is NULL at row {null_t0[0]}")
    null_t1 = np.flatnonzero(t1.isna().to_numpy())
    if null_t1.size:
        raise InvalidInput(f"t1 is NULL at row {null_t1[0]} (t0 = {t1.index[null_t1[0]]}): drop the rows "
                           f"without an exit first")
    t0, kind0 = _time_values(t1.index, "t1's index (t0)")
    end, kind1 = _time_values(t1, "t1")
    if kind0 != kind1:
        raise InvalidInput(f"t1 and its index t0 must be of one kind: t0 is a {kind0}, t1 a {kind1}")
    back = np.flatnonzero(np.diff(t0) < 0)
    if back.size:
        raise InvalidInput(f"t1's index (t0) must be sorted: row {back[0] + 1} ({t1.index[back[0] + 1]}) "
                           f"comes before row {back[0]} ({t1.index[back[0]]})")
    early = np.flatnonzero(end < t0)
    if early.size:
        i = early[0]
        raise InvalidInput(f"t1 is before its t0 at row {i}: t0 = {t1.index[i]}, t1 = {t1.iloc[i]}")
    return t0, end


class PurgedKFold:
    """K-fold cross-validation for rows that span time (AFML ch. 7).

    ``t1``: a pandas Series of each row's end time (e.g. ``event_end``),
    indexed by its start time ``t0``, sorted by ``t0``, one entry per row of
    ``X``.  The test folds are ``numpy.array_split(arange(N), n_splits)``,
    in order.  For the fold ``[a, b)``, with ``T0 = t0[a]`` and
    ``T1 = max(t1[a:b])``, a row outside it trains unless ``[t0_i, t1_i]``
    meets ``[T0, T1]`` (purged) or ``b <= i < b + floor(embargo * N)``
    (embargoed).

    A scikit-learn splitter: pass it as ``cv=`` to ``cross_val_score``,
    ``GridSearchCV`` and the like.  Raises ``InvalidInput`` for a NULL ``t1``,
    ``t1 < t0``, an unsorted index, ``embargo`` outside ``[0, 1)``,
    ``n_splits`` below 2 or above the number of rows, and an ``X`` of another
    length than ``t1``.
    """

    def __init__(self, n_splits: int = 5, t1: pd.Series | None = None, embargo: float = 0.0):
        if isinstance(n_splits, bool) or not isinstance(n_splits, int | np.integer):
            raise InvalidInput(f"n_splits must be an integer, got {n_splits!r}")
        if n_splits < 2:
            raise InvalidInput(f"n_splits must be at least 2, got {n_splits}")
        if isinstance(embargo, bool) or not isinstance(embargo, int | float | np.integer | np.floating) \
                or not 0.0 <= float(embargo) < 1.0:
            raise InvalidInput(f"embargo must be a fraction of the rows in [0, 1), got {embargo!r}")
        if t1 is None:
            raise InvalidInput("PurgedKFold needs t1=: a pandas Series of event ends indexed by t0")
        self.n_splits = int(n_splits)
        self.t1 = t1
        self.embargo = float(embargo)
        self._t0, self._t1 = _intervals(t1)

    def __repr__(self) -> str:
        return f"PurgedKFold(n_splits={self.n_splits}, embargo={self.embargo}, rows={len(self._t0)})"

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """The number of (train, test) pairs ``split`` yields."""
        return self.n_splits

    def split(self, X: Any, y: Any = None, groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train, test)`` row positions (int64, ascending), one pair a fold."""
        n = len(self._t0)
        rows = X.shape[0] if hasattr(X, "shape") else len(X)
        if rows != n:
            raise InvalidInput(f"X has {rows} rows but t1 has {n}: give t1 one entry per row of X")
        if self.n_splits > n:
            raise InvalidInput(f"n_splits={self.n_splits} is more than the {n} rows")
        return self._folds(n)

    def _folds(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        t0, t1 = self._t0, self._t1
        embargo = int(np.floor(self.embargo * n))
        for test in np.array_split(np.arange(n, dtype=np.int64), self.n_splits):
            a, b = int(test[0]), int(test[-1]) + 1
            first, last = t0[a], t1[a:b].max()
            # t0 is sorted and t1 >= t0, so a row before the fold starts no
            # later than T0 (it meets the fold iff t1_i >= T0), and a row
            # after it ends no earlier than T0 (it meets it iff t0_i <= T1):
            # the purged rows after the fold are one run.
            before = np.flatnonzero(t1[:a] < first)
            after_from = max(b + embargo, int(np.searchsorted(t0, last, side="right")))
            train = np.concatenate([before, np.arange(after_from, n, dtype=np.int64)])
            yield train.astype(np.int64, copy=False), test


# ---------------------------------------------------- sequential_bootstrap


def _bar_positions(values: Any, name: str) -> np.ndarray:
    ints, valid = _nullable_ints(values, name)
    if not valid.all():
        raise InvalidInput(f"{name} is NULL at row {np.flatnonzero(~valid)[0]}: drop the rows without "
                           f"an event first")
    return ints


def _close_gaps(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Renumber the bars so that those no event covers vanish.  Exact: an
    uncovered bar is in no event's mean, and each event keeps its length."""
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    reach = np.maximum.accumulate(e)
    new_block = np.ones(len(s), dtype=bool)
    new_block[1:] = s[1:] > reach[:-1] + 1
    block = np.cumsum(new_block) - 1
    block_start = s[new_block]
    block_end = reach[np.r_[np.flatnonzero(new_block)[1:] - 1, len(s) - 1]]
    block_len = block_end - block_start + 1
    block_origin = np.concatenate([[0], np.cumsum(block_len)[:-1]])
    shift = np.empty(len(s), np.int64)
    shift[order] = block_start[block] - block_origin[block]
    return starts - shift, ends - shift, int(block_len.sum())


def sequential_bootstrap(starts: Any, ends: Any, n_draws: int | None = None,
                         random_state: Any = None) -> np.ndarray:
    """Draw events by average uniqueness (AFML 4.5); returns their positions (int64).

    Event ``i`` covers the bars ``starts[i] .. ends[i]`` (inclusive bar
    positions; for triple-barrier rows ``t + 1 .. t + tb_exit_bars``).  With
    the draws so far covering bar ``j`` ``d_j`` times, an event's weight is
    the mean of ``1 / (1 + d_j)`` over its bars; each draw takes
    ``u = rng.random()`` from ``numpy.random.default_rng(random_state)`` and
    picks the first event whose cumulative share of the total weight exceeds
    ``u``.  ``n_draws`` defaults to the number of events.

    Cost: O(log n) a draw plus the events overlapping the one drawn; memory
    the sum of the events' lengths.  Each event's sum is kept up to date by
    adding each draw's change, and the cumulative weights sit in a sum tree
    (pairwise sums) rather than a running sum, so they round differently
    from a plain implementation that recomputes means and takes ``cumsum``:
    the two can pick different events only when ``u`` falls within a few
    units of rounding (~1e-16 relative) of a boundary between two events.

    Raises ``InvalidInput`` for NULL or non-integer bars, ``ends < starts``,
    different lengths, no events, or a bad ``n_draws`` / ``random_state``.
    """
    from kernels import bootstrap

    s = _bar_positions(starts, "starts")
    e = _bar_positions(ends, "ends")
    if len(s) != len(e):
        raise InvalidInput(f"starts has {len(s)} events but ends has {len(e)}")
    if len(s) == 0:
        raise InvalidInput("sequential_bootstrap needs at least one event")
    early = np.flatnonzero(e < s)
    if early.size:
        raise InvalidInput(f"event {early[0]} ends before it starts: starts = {s[early[0]]}, "
                           f"ends = {e[early[0]]}")
    if n_draws is None:
        n_draws = len(s)
    if isinstance(n_draws, bool) or not isinstance(n_draws, int | np.integer) or n_draws < 0:
        raise InvalidInput(f"n_draws must be a whole number >= 0, got {n_draws!r}")
    try:
        rng = np.random.default_rng(random_state)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"random_state must be what numpy.random.default_rng takes: {exc}") from None
    # One double per draw, the same stream as n_draws calls of rng.random().
    uniforms = rng.random(int(n_draws))
    s, e, n_bars = _close_gaps(s, e)
    ptr, idx = bootstrap.cover_index(s, e, n_bars)
    out = np.empty(int(n_draws), np.int64)
    return bootstrap.sequential_bootstrap(s, e, ptr, idx, uniforms, out)
