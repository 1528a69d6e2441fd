"""Test oracle: a plain, slow, obviously-correct reference for every label.

Written straight from /work/shared/LABELS.md with simple ``for`` loops.  It is
deliberately independent of the fast kernels (no numba, no clever algorithms)
so that property tests can compare the real backends against it.

Conventions: inputs are float64 numpy arrays of one series, index t = 0..n-1.
NULL outputs are NaN in float arrays (integer-valued columns are returned as
float64 so that they can hold NaN); ``tb_flags`` is uint8 and never NULL.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

GAP = 1
AMBIGUOUS = 2
INCOMPLETE = 4
NO_VOL = 8


def _has_vol(s: float) -> bool:
    """A label that needs sigma_t is NULL where sigma_t is missing or 0."""
    return not math.isnan(s) and s != 0.0


def log_returns(close) -> np.ndarray:
    """r_t = ln(close_t / close_{t-1}) for t >= 1; r_0 is missing (NaN)."""
    close = np.asarray(close, dtype=np.float64)
    n = len(close)
    r = np.full(n, np.nan)
    for t in range(1, n):
        r[t] = math.log(close[t] / close[t - 1])
    return r


def sigma(close, vol: str = "ewm", vol_span: int = 100) -> np.ndarray:
    """Test oracle for sigma_t, written from the contract.

    "ewm": exactly pandas ``ewm(span, adjust=True, min_periods=span).std()`` of
    the log returns (pandas is the contract here).
    "rolling": sample std (ddof=1) of r_{t-span+1..t}; NaN until ``vol_span``
    returns exist, i.e. the first valid index is t = vol_span.
    """
    r = log_returns(close)
    n = len(r)
    if vol == "ewm":
        s = pd.Series(r, dtype=np.float64)
        return s.ewm(span=vol_span, adjust=True, min_periods=vol_span).std().to_numpy(
            dtype=np.float64
        )
    if vol == "rolling":
        out = np.full(n, np.nan)
        for t in range(n):
            if t < vol_span or vol_span < 2:  # r_0 is missing; ddof=1 needs >= 2
                continue
            window = r[t - vol_span + 1 : t + 1]
            out[t] = np.std(window, ddof=1)
        return out
    raise ValueError(f"unknown vol {vol!r}")


def triple_barrier(
    open,
    high,
    low,
    close,
    sig,
    horizon: int = 24,
    pt: float = 1.0,
    sl: float = 1.0,
    tie: str = "sl",
    vertical: str = "zero",
    min_ret: float = 0.0,
) -> dict:
    """Test oracle for ``enhanced_triple_barrier``, written from the contract.

    Walks j = t+1 .. min(t+H, n-1) bar by bar: gap check on open_j first, then
    high/low against U/L (both -> AMBIGUOUS, resolved by ``tie``), then the
    vertical exit at close_{t+H}; if the data ends first it is INCOMPLETE.
    """
    o = np.asarray(open, dtype=np.float64)
    h = np.asarray(high, dtype=np.float64)
    lo = np.asarray(low, dtype=np.float64)
    c = np.asarray(close, dtype=np.float64)
    sig = np.asarray(sig, dtype=np.float64)
    n = len(c)
    H = int(horizon)

    label = np.full(n, np.nan)
    barrier = np.full(n, np.nan)
    exit_bars = np.full(n, np.nan)
    exit_ret = np.full(n, np.nan)
    flags = np.zeros(n, dtype=np.uint8)

    for t in range(n):
        s = float(sig[t])
        if not _has_vol(s):
            flags[t] = NO_VOL
            continue
        ct = float(c[t])
        U = ct * (1 + pt * s)
        L = ct * (1 - sl * s)

        result = None  # (label, barrier, j, exit_price, flag)
        for j in range(t + 1, min(t + H, n - 1) + 1):
            oj, hj, lj, cj = float(o[j]), float(h[j]), float(lo[j]), float(c[j])
            # 1. gap through a barrier at the open
            if oj >= U:
                result = (1, 1, j, oj, GAP)
                break
            if oj <= L:
                result = (-1, -1, j, oj, GAP)
                break
            # 2. intrabar touches
            up = hj >= U
            dn = lj <= L
            if up and dn:
                if tie == "sl":
                    result = (-1, -1, j, L, AMBIGUOUS)
                elif tie == "tp":
                    result = (1, 1, j, U, AMBIGUOUS)
                elif tie == "skip":
                    result = (0, 0, j, cj, AMBIGUOUS)
                else:
                    raise ValueError(f"unknown tie {tie!r}")
                break
            if up:
                result = (1, 1, j, U, 0)
                break
            if dn:
                result = (-1, -1, j, L, 0)
                break

        if result is None:
            if t + H > n - 1:
                # 4. data ends before t+H with no exit: incomplete
                flags[t] = INCOMPLETE
                continue
            # 3. vertical exit at close_{t+H}
            cv = float(c[t + H])
            ret = cv / ct - 1
            if vertical == "zero":
                lab = 0
            elif vertical == "sign":
                lab = (1 if ret > 0 else (-1 if ret < 0 else 0)) if abs(ret) >= min_ret else 0
            else:
                raise ValueError(f"unknown vertical {vertical!r}")
            result = (lab, 0, t + H, cv, 0)

        lab, bar, j, price, flag = result
        label[t] = lab
        barrier[t] = bar
        exit_bars[t] = j - t
        exit_ret[t] = price / ct - 1
        flags[t] = flag

    return {
        "tb_label": label,
        "tb_barrier": barrier,
        "tb_exit_bars": exit_bars,
        "tb_exit_return": exit_ret,
        "tb_flags": flags,
    }


def vol_scaled_return(close, sig, horizons=(1, 5, 20)) -> dict:
    """Test oracle for ``vol_scaled_return``, written from the contract.

    vsr_h = ln(close_{t+h}/close_t) / (sigma_t * sqrt(h)); NaN when t+h > n-1 or
    sigma_t is missing or 0.  ``sigma`` is sig as given (0 stays 0.0).
    """
    c = np.asarray(close, dtype=np.float64)
    sig = np.asarray(sig, dtype=np.float64)
    n = len(c)
    out = {}
    for hz in horizons:
        hz = int(hz)
        col = np.full(n, np.nan)
        for t in range(n):
            s = float(sig[t])
            if t + hz > n - 1 or not _has_vol(s):
                continue
            col[t] = math.log(c[t + hz] / c[t]) / (s * math.sqrt(hz))
        out[f"vsr_{hz}"] = col
    out["sigma"] = sig.astype(np.float64, copy=True)
    return out


def mfe_mae(high, low, close, horizon: int = 24) -> dict:
    """Test oracle for ``mfe_mae``, written from the contract.

    Over W(t) = t+1..t+H, only when t+H <= n-1 (else NaN): max(high)/close_t - 1,
    min(low)/close_t - 1, and the offsets of the FIRST bar reaching each.
    """
    h = np.asarray(high, dtype=np.float64)
    lo = np.asarray(low, dtype=np.float64)
    c = np.asarray(close, dtype=np.float64)
    n = len(c)
    H = int(horizon)
    mfe = np.full(n, np.nan)
    mae = np.full(n, np.nan)
    mfe_bars = np.full(n, np.nan)
    mae_bars = np.full(n, np.nan)
    for t in range(n):
        if t + H > n - 1:
            continue
        best_hi, best_hi_j = -math.inf, -1
        best_lo, best_lo_j = math.inf, -1
        for j in range(t + 1, t + H + 1):
            if h[j] > best_hi:  # strict: keep the first bar on ties
                best_hi, best_hi_j = float(h[j]), j
            if lo[j] < best_lo:
                best_lo, best_lo_j = float(lo[j]), j
        mfe[t] = best_hi / c[t] - 1
        mae[t] = best_lo / c[t] - 1
        mfe_bars[t] = best_hi_j - t
        mae_bars[t] = best_lo_j - t
    return {"mfe": mfe, "mae": mae, "mfe_bars": mfe_bars, "mae_bars": mae_bars}
