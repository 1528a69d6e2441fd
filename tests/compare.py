"""Comparison of computed label tables with the oracle, at the contract's
tolerances: integers equal, floats within 1e-9 relative, NULLs in the same
places, except rows where a barrier comparison sits within 1e-9 relative of
the barrier (there the two sides may legitimately round differently)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

RTOL = 1e-9
BARRIER_RTOL = 1e-9
TB_COLUMNS = ("tb_label", "tb_barrier", "tb_exit_bars", "tb_exit_return", "tb_flags")


def column(table: pa.Table, name: str) -> np.ndarray:
    """A column as float64 with NaN for NULL (flags as they are)."""
    col = table.column(name)
    if name == "tb_flags":
        return col.to_numpy().astype(np.int64)
    return col.cast(pa.float64()).fill_null(np.nan).to_numpy()


def near_barrier_rows(c: dict, sig: np.ndarray, horizon: int, pt: float, sl: float,
                      sig_alt: np.ndarray | None = None) -> np.ndarray:
    """Rows t where some price in t's window is within BARRIER_RTOL of U or L
    (computed from ``sig`` and, when given, from ``sig_alt`` too)."""
    n = len(c["close"])
    out = np.zeros(n, bool)
    sigs = [sig] if sig_alt is None else [sig, sig_alt]
    for t in range(n):
        for s in sigs:
            if not (s[t] > 0):
                continue
            up = c["close"][t] * (1 + pt * s[t])
            lo = c["close"][t] * (1 - sl * s[t])
            w = slice(t + 1, min(t + horizon, n - 1) + 1)
            prices = np.concatenate([c["open"][w], c["high"][w], c["low"][w]])
            for b in (up, lo):
                if np.any(np.abs(prices - b) <= BARRIER_RTOL * abs(b)):
                    out[t] = True
    return out


def assert_float_close(name: str, got: np.ndarray, want: np.ndarray,
                       atol: float | np.ndarray = 0.0, skip: np.ndarray | None = None) -> None:
    keep = np.ones(len(got), bool) if skip is None else ~skip
    g, w = got[keep], want[keep]
    if np.ndim(atol):
        atol = np.asarray(atol)[keep]
    nulls_differ = np.isnan(g) != np.isnan(w)
    assert not nulls_differ.any(), (
        f"{name}: NULL mismatch at rows {np.flatnonzero(keep)[nulls_differ][:10]}"
    )
    ok = np.isclose(g, w, rtol=RTOL, atol=atol, equal_nan=True)
    assert ok.all(), (
        f"{name}: rows {np.flatnonzero(keep)[~ok][:10]} got {g[~ok][:5]} want {w[~ok][:5]}"
    )


def assert_exact(name: str, got: np.ndarray, want: np.ndarray, skip: np.ndarray | None = None) -> None:
    keep = np.ones(len(got), bool) if skip is None else ~skip
    g, w = got[keep], want[keep]
    same = (g == w) | (np.isnan(g) & np.isnan(w)) if g.dtype.kind == "f" else g == w
    assert same.all(), (
        f"{name}: rows {np.flatnonzero(keep)[~same][:10]} got {g[~same][:5]} want {w[~same][:5]}"
    )


def assert_tb(table: pa.Table, want: dict, near: np.ndarray, return_atol: float = 0.0) -> None:
    """``return_atol``: a barrier exit returns about +-pt*sigma, so it carries
    sigma's own absolute tolerance scaled by the barrier width."""
    for name in TB_COLUMNS:
        got = column(table, name)
        exp = np.asarray(want[name])
        if name == "tb_exit_return":
            assert_float_close(name, got, exp, atol=return_atol, skip=near)
        else:
            assert_exact(name, got, exp.astype(got.dtype) if name == "tb_flags" else exp, skip=near)


EXACT_COLUMNS = (*TB_COLUMNS[:4], "tb_flags", "mfe_bars", "mae_bars")


def assert_label_columns(got: pa.Table, want: pa.Table) -> None:
    """Every label column of ``want`` (rows aligned) in ``got``: integer
    outputs exactly, floats within the contract's tolerance."""
    for name in want.column_names[1:]:
        g, w = column(got, name), column(want, name)
        if name in EXACT_COLUMNS:
            assert_exact(name, g, w)
        else:
            assert_float_close(name, g, w)


def assert_weights(out: pa.Table, tb: dict, c: dict, near: np.ndarray, horizon: int) -> None:
    """Sample weights against the oracle's, from the oracle's triple barrier
    ``tb``.  A row's weights depend on other rows' exits: every row whose
    span meets a row sitting on a barrier (``near``) is skipped."""
    import oracle

    affected = near.copy()
    for i in np.flatnonzero(near):
        affected[max(0, i - horizon):i + 2 * horizon + 1] = True
    want = oracle.sample_weights(tb, c["close"], horizon)
    assert_float_close("tb_uniqueness", column(out, "tb_uniqueness"), want["tb_uniqueness"],
                       skip=affected)
    scale = np.nan_to_num(oracle.attribution_scale(tb, c["close"]))
    assert_float_close("tb_attribution", column(out, "tb_attribution"), want["tb_attribution"],
                       atol=1e-9 * scale, skip=affected)
