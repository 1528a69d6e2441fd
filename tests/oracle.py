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


# ---------------------------------------------------------------------------
# Labels, second set (LABELS.md "Labels, second set"), as plain loops.

RESOLVED = 16


def bar_ms_of(ts) -> int:
    """The most frequent ts step (the shortest on ties)."""
    steps = {}
    for a, b in zip(ts[:-1], ts[1:]):
        steps[int(b - a)] = steps.get(int(b - a), 0) + 1
    if not steps:
        return 0
    best = max(steps.values())
    return min(s for s, k in steps.items() if k == best)


def resolve_with_finer(tb: dict, open, high, low, close, sig, finer: dict, bar_ms: int,
                       pt: float = 1.0, sl: float = 1.0, tie: str = "sl", ts=None) -> dict:
    """The triple barrier's rows whose exit bar was ambiguous, replayed on the
    finer candles inside that bar (ts_j <= ts_k < ts_j + bar), in time order."""
    out = {k: np.array(v, copy=True) for k, v in tb.items()}
    c = np.asarray(close, dtype=np.float64)
    for t in range(len(c)):
        if not out["tb_flags"][t] & AMBIGUOUS:
            continue
        j = t + int(out["tb_exit_bars"][t])
        s = float(sig[t])
        U, L = c[t] * (1 + pt * s), c[t] * (1 - sl * s)
        decided = None
        for k in range(len(finer["ts"])):
            if not (ts[j] <= finer["ts"][k] < ts[j] + bar_ms):
                continue
            o, h, lo = finer["open"][k], finer["high"][k], finer["low"][k]
            if o >= U:
                decided = (1, o, GAP | RESOLVED)
            elif o <= L:
                decided = (-1, o, GAP | RESOLVED)
            elif h >= U and lo <= L:
                decided = None  # still ambiguous: the tie rule stands
            elif h >= U:
                decided = (1, U, RESOLVED)
            elif lo <= L:
                decided = (-1, L, RESOLVED)
            else:
                continue
            break
        if decided is not None:
            lab, price, flag = decided
            out["tb_label"][t] = lab
            out["tb_barrier"][t] = lab
            out["tb_exit_return"][t] = price / c[t] - 1
            out["tb_flags"][t] = flag
    return out


def sample_weights(tb: dict, close, horizon: int) -> dict:
    """Uniqueness and attribution over every labelled row (AFML ch. 4)."""
    c = np.asarray(close, dtype=np.float64)
    n = len(c)
    label, bars = tb["tb_label"], tb["tb_exit_bars"]
    events = [i for i in range(n) if not math.isnan(label[i])]
    conc = np.zeros(n)
    for i in events:
        for j in range(i + 1, i + int(bars[i]) + 1):
            conc[j] += 1
    r = log_returns(c)
    uniq = np.full(n, np.nan)
    attr = np.full(n, np.nan)
    for i in events:
        e = int(bars[i])
        if i + e - 1 + horizon > n - 1:
            continue
        uniq[i] = sum(1 / conc[j] for j in range(i + 1, i + e + 1)) / e
        attr[i] = abs(sum(r[j] / conc[j] for j in range(i + 1, i + e + 1)))
    return {"tb_uniqueness": uniq, "tb_attribution": attr}


def attribution_scale(tb: dict, close) -> np.ndarray:
    """sum |r_j| / c_j over each event's span: the contract's tolerance scale."""
    c = np.asarray(close, dtype=np.float64)
    n = len(c)
    label, bars = tb["tb_label"], tb["tb_exit_bars"]
    conc = np.zeros(n)
    for i in range(n):
        if not math.isnan(label[i]):
            conc[i + 1:i + int(bars[i]) + 1] += 1
    r = np.abs(log_returns(c))
    out = np.full(n, np.nan)
    for i in range(n):
        if not math.isnan(label[i]):
            out[i] = sum(r[j] / conc[j] for j in range(i + 1, i + int(bars[i]) + 1))
    return out


def fixed_horizon(close, sig, horizon: int = 24, threshold: float = 0.0) -> dict:
    c = np.asarray(close, dtype=np.float64)
    n = len(c)
    label = np.full(n, np.nan)
    ret = np.full(n, np.nan)
    for t in range(n):
        if t + horizon > n - 1:
            continue
        if threshold > 0 and not _has_vol(float(sig[t])):
            continue
        r = math.log(c[t + horizon] / c[t])
        band = threshold * sig[t] * math.sqrt(horizon) if threshold > 0 else 0.0
        label[t] = 1 if r > band else (-1 if r < -band else 0)
        ret[t] = r
    return {"fh_label": label, "fh_return": ret}


def trend_scanning(close, min_window: int = 5, max_window: int = 20) -> dict:
    """OLS of ln close_{t+x} on x for each window length; the largest |t|."""
    c = np.asarray(close, dtype=np.float64)
    n = len(c)
    label = np.full(n, np.nan)
    tval = np.full(n, np.nan)
    window = np.full(n, np.nan)
    second = np.full(n, np.nan)  # the runner-up |t|, for the tie tolerance
    for t in range(n):
        if t + max_window - 1 > n - 1:
            continue
        best = []
        for L in range(min_window, max_window + 1):
            y = [math.log(v) for v in c[t:t + L]]
            if all(v == c[t] for v in c[t:t + L]):
                continue  # RSS = 0 exactly: no t-value
            xm = (L - 1) / 2
            ym = sum(y) / L
            sxx = sum((x - xm) ** 2 for x in range(L))
            sxy = sum((x - xm) * (y[x] - ym) for x in range(L))
            b = sxy / sxx
            a = ym - b * xm
            rss = sum((y[x] - a - b * x) ** 2 for x in range(L))
            if rss == 0:
                continue
            se = math.sqrt(rss / (L - 2) / sxx)
            best.append((abs(b / se), L, b / se))
        if not best:
            continue
        top = max(a for a, _, _ in best)
        first = min(L for a, L, _ in best if a == top)
        tv = next(v for _, L, v in best if L == first)
        label[t] = 1 if tv > 0 else (-1 if tv < 0 else 0)
        tval[t] = tv
        window[t] = first
        rest = [a for a, L, _ in best if L != first]
        second[t] = max(rest) if rest else 0.0
    return {"trend_label": label, "trend_tvalue": tval, "trend_window": window,
            "_runner_up": second}
