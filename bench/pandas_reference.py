"""Plain-pandas reference for the enhanced triple barrier (benchmark baseline).

This is written the way a quant typically writes it with pandas, in the style
of mlfinlab's ``get_events`` / ``apply_pt_sl_on_t1``: build a ``t1`` Series of
vertical-barrier timestamps, then loop over events in Python and, per event,
slice the forward path ``candles.loc[t_next:t1]``, build boolean touch Series
and take the first touch time with ``idxmax``.  It is deliberately *not*
optimised: it is the baseline the fast (numba / CUDA) implementation is
benchmarked against, and the benchmark checks the two agree on the events this
one computes.

Semantics follow /work/shared/LABELS.md (``enhanced_triple_barrier``):

* forward window W(t) = {t+1, ..., min(t+H, n-1)}, n = len(candles)
* U = close_t * (1 + pt*sigma_t), L = close_t * (1 - sl*sigma_t)
* per bar: gap on open first (open >= U -> +1 at open, open <= L -> -1 at open,
  flag GAP=1); else high >= U / low <= L; both -> AMBIGUOUS (flag 2) resolved by
  ``tie`` ("sl": -1 at L, "tp": +1 at U, "skip": label 0, barrier 0, at close_j)
* no exit by t+H: vertical exit at close_{t+H}, label 0 ("zero") or
  sign(ret) if |ret| >= min_ret else 0 ("sign"); barrier 0
* no exit and t+H > n-1: INCOMPLETE (flag 4), all values NULL
* sigma_t missing (NaN) or 0: NO_VOL (flag 8), all values NULL

Resolved ambiguities (documented choices):

* NO_VOL takes precedence: a row with missing/zero sigma gets flags == 8 only,
  never 8|4, even if its window is also incomplete (no barriers exist, so
  "touched no barrier before the data ended" is meaningless, and more candles
  would not make the label computable).
* sigma that is non-finite (NaN/inf) or <= 0 is treated as missing (NO_VOL).
* INCOMPLETE rows carry flags == 4 only (no exit happened, so no GAP/AMBIGUOUS).
* ``vertical="sign"``: ret = close_{t+H}/close_t - 1; label = sign(ret) when
  |ret| >= min_ret, else 0 (so ret == 0 always gives 0). tb_barrier stays 0.
* ``tie="skip"``: exit at close_j of the ambiguous bar with label 0, barrier 0,
  flag AMBIGUOUS; exit_return = close_j/close_t - 1.
* A gap bar is flagged GAP only (not AMBIGUOUS), even if its high/low would
  also touch both barriers: the open decides.
* ``events`` are looked up by label in the full candle index; the forward path
  always uses the full ``candles`` (events only select which rows to label).
  Unknown timestamps raise KeyError.

Output: DataFrame indexed by event timestamp, columns tb_label, tb_barrier,
tb_exit_bars, tb_exit_return as float64 (NaN for NULL) and tb_flags as uint8.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

GAP = 1
AMBIGUOUS = 2
INCOMPLETE = 4
NO_VOL = 8

OUT_COLUMNS = ["tb_label", "tb_barrier", "tb_exit_bars", "tb_exit_return", "tb_flags"]


def sigma_pandas(close: pd.Series, span: int = 100) -> pd.Series:
    """EWM std of log returns, exactly the contract's ``vol="ewm"`` definition."""
    return np.log(close).diff().ewm(span=span, adjust=True, min_periods=span).std()


def _prepare_candles(candles: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(candles.index, pd.DatetimeIndex) and "ts" in candles.columns:
        candles = candles.set_index("ts")
    missing = [c for c in ("open", "high", "low", "close") if c not in candles.columns]
    if missing:
        raise ValueError(f"candles missing columns: {missing}")
    if not candles.index.is_monotonic_increasing or not candles.index.is_unique:
        raise ValueError("candles index must be strictly increasing")
    return candles


def get_vertical_barriers(index: pd.Index, horizon: int) -> pd.Series:
    """mlfinlab-style ``t1``: timestamp of bar t+H, NaT/NaN past the data end."""
    t1 = pd.Series(index, index=index)
    if not isinstance(index, pd.DatetimeIndex):
        t1 = t1.astype("Int64")  # int ms index: keep integers, <NA> past the end
    return t1.shift(-horizon)


def triple_barrier_pandas(candles: pd.DataFrame, sigma: pd.Series, events: pd.Index | None = None,
                          horizon=24, pt=1.0, sl=1.0, tie="sl", vertical="zero",
                          min_ret=0.0) -> pd.DataFrame:
    if tie not in ("sl", "tp", "skip"):
        raise ValueError(f"tie must be 'sl', 'tp' or 'skip', got {tie!r}")
    if vertical not in ("zero", "sign"):
        raise ValueError(f"vertical must be 'zero' or 'sign', got {vertical!r}")
    horizon = int(horizon)
    if horizon < 1:
        raise ValueError("horizon must be >= 1")

    candles = _prepare_candles(candles)
    index = candles.index
    n = len(index)

    if isinstance(sigma, pd.Series) and not sigma.index.equals(index):
        if len(sigma) == n and not sigma.index.isin(index).all():
            sigma = pd.Series(np.asarray(sigma, dtype="float64"), index=index)
        else:
            sigma = sigma.reindex(index)
    elif not isinstance(sigma, pd.Series):
        sigma = pd.Series(np.asarray(sigma, dtype="float64"), index=index)
    sigma = sigma.astype("float64")

    if events is None:
        events = index
    else:
        events = pd.Index(events)

    # --- get_events: targets, barriers, vertical barrier t1 ----------------
    t1_all = get_vertical_barriers(index, horizon)
    close = candles["close"]
    ev = pd.DataFrame({
        "t1": t1_all.loc[events].array,  # .array keeps tz / Int64
        "trgt": sigma.loc[events].values,
        "c0": close.loc[events].values,
    }, index=events)
    ev["upper"] = ev["c0"] * (1 + pt * ev["trgt"])
    ev["lower"] = ev["c0"] * (1 - sl * ev["trgt"])
    last_ts = index[-1] if n else None

    out = pd.DataFrame(np.nan, index=events, columns=OUT_COLUMNS[:-1], dtype="float64")
    flags = np.zeros(len(events), dtype=np.uint8)
    labels = np.full(len(events), np.nan)
    barriers = np.full(len(events), np.nan)
    exit_bars = np.full(len(events), np.nan)
    exit_rets = np.full(len(events), np.nan)

    # --- apply_pt_sl_on_t1: Python loop over events --------------------------
    for k, (loc, row) in enumerate(ev.iterrows()):
        trgt = row["trgt"]
        if not np.isfinite(trgt) or trgt <= 0:
            flags[k] = NO_VOL
            continue
        c0, U, L, t1 = row["c0"], row["upper"], row["lower"], row["t1"]
        pos = index.get_loc(loc)
        complete = not pd.isna(t1)
        if pos + 1 >= n:  # empty forward window
            flags[k] = INCOMPLETE
            continue
        t_next = index[pos + 1]
        path = candles.loc[t_next:(t1 if complete else last_ts)]

        touches = {
            "gap_up": path["open"] >= U,
            "gap_dn": path["open"] <= L,
            "up": path["high"] >= U,
            "dn": path["low"] <= L,
        }
        first = [s.idxmax() for s in touches.values() if s.any()]

        if first:
            t_exit = min(first)
            bar = path.loc[t_exit]
            j_off = path.index.get_loc(t_exit) + 1  # j - t
            f = 0
            if bar["open"] >= U:
                lab, bar_, px, f = 1, 1, bar["open"], GAP
            elif bar["open"] <= L:
                lab, bar_, px, f = -1, -1, bar["open"], GAP
            else:
                up = bar["high"] >= U
                dn = bar["low"] <= L
                if up and dn:
                    f = AMBIGUOUS
                    if tie == "sl":
                        lab, bar_, px = -1, -1, L
                    elif tie == "tp":
                        lab, bar_, px = 1, 1, U
                    else:
                        lab, bar_, px = 0, 0, bar["close"]
                elif up:
                    lab, bar_, px = 1, 1, U
                else:
                    lab, bar_, px = -1, -1, L
            labels[k], barriers[k], exit_bars[k] = lab, bar_, j_off
            exit_rets[k] = px / c0 - 1
            flags[k] = f
        elif complete:
            ret = close.loc[t1] / c0 - 1
            if vertical == "zero" or abs(ret) < min_ret:
                lab = 0
            else:
                lab = int(np.sign(ret))
            labels[k], barriers[k], exit_bars[k], exit_rets[k] = lab, 0, horizon, ret
        else:
            flags[k] = INCOMPLETE

    out["tb_label"] = labels
    out["tb_barrier"] = barriers
    out["tb_exit_bars"] = exit_bars
    out["tb_exit_return"] = exit_rets
    out["tb_flags"] = flags
    return out


# ---------------------------------------------------------------------------
# self-check
# ---------------------------------------------------------------------------

def _plain_loop(o, h, l, c, s, idx, H, pt, sl, tie, vertical, min_ret):
    """Literal transcription of the contract: walk j = t+1 .. t+H."""
    n = len(c)
    res = []
    for t in idx:
        st = s[t]
        if not np.isfinite(st) or st <= 0:
            res.append((np.nan, np.nan, np.nan, np.nan, NO_VOL))
            continue
        U = c[t] * (1 + pt * st)
        L = c[t] * (1 - sl * st)
        row = None
        for j in range(t + 1, min(t + H, n - 1) + 1):
            if o[j] >= U:
                row = (1, 1, j - t, o[j] / c[t] - 1, GAP)
            elif o[j] <= L:
                row = (-1, -1, j - t, o[j] / c[t] - 1, GAP)
            else:
                up, dn = h[j] >= U, l[j] <= L
                if up and dn:
                    if tie == "sl":
                        row = (-1, -1, j - t, L / c[t] - 1, AMBIGUOUS)
                    elif tie == "tp":
                        row = (1, 1, j - t, U / c[t] - 1, AMBIGUOUS)
                    else:
                        row = (0, 0, j - t, c[j] / c[t] - 1, AMBIGUOUS)
                elif up:
                    row = (1, 1, j - t, U / c[t] - 1, 0)
                elif dn:
                    row = (-1, -1, j - t, L / c[t] - 1, 0)
            if row is not None:
                break
        if row is None:
            if t + H <= n - 1:
                ret = c[t + H] / c[t] - 1
                lab = 0
                if vertical == "sign" and abs(ret) >= min_ret:
                    lab = 1 if ret > 0 else (-1 if ret < 0 else 0)
                row = (lab, 0, H, ret, 0)
            else:
                row = (np.nan, np.nan, np.nan, np.nan, INCOMPLETE)
        res.append(row)
    return np.array([r[:4] for r in res], dtype="float64"), np.array([r[4] for r in res], dtype=np.uint8)


def _make_candles(n=3000, seed=7, ms_index=False):
    rng = np.random.default_rng(seed)
    vol = 0.004
    c = np.empty(n)
    o = np.empty(n)
    prev = 100.0
    for i in range(n):
        gap = rng.normal(0, vol * 0.2)
        if rng.random() < 0.03:  # occasional overnight-style gap
            gap += rng.choice([-1, 1]) * rng.uniform(3, 8) * vol
        o[i] = prev * np.exp(gap)
        c[i] = o[i] * np.exp(rng.normal(0, vol))
        prev = c[i]
    wick = rng.exponential(vol * 0.5, size=(2, n))
    wide = rng.random(n) < 0.03  # occasional wide-range bars -> ambiguous touches
    wick[:, wide] += 5 * vol
    h = np.maximum(o, c) * np.exp(wick[0])
    l = np.minimum(o, c) * np.exp(-wick[1])
    # a flat stretch so sigma hits exactly 0 later on? keep prices positive/valid
    ts = np.int64(1_600_000_000_000) + np.arange(n, dtype=np.int64) * 3_600_000
    idx = pd.Index(ts, name="ts") if ms_index else pd.DatetimeIndex(pd.to_datetime(ts, unit="ms", utc=True), name="ts")
    df = pd.DataFrame({"open": o, "high": h, "low": l, "close": c}, index=idx)
    assert (df.high >= df[["open", "close"]].max(axis=1)).all()
    assert (df.low <= df[["open", "close"]].min(axis=1)).all()
    return df


def _check(df, sigma, events, params):
    got = triple_barrier_pandas(df, sigma, events=events, **params)
    pos = df.index.get_indexer(events if events is not None else df.index)
    vals, flg = _plain_loop(df.open.values, df.high.values, df.low.values, df.close.values,
                            sigma.values, pos, params["horizon"], params["pt"], params["sl"],
                            params["tie"], params["vertical"], params["min_ret"])
    assert got["tb_flags"].dtype == np.uint8
    assert (got["tb_flags"].values == flg).all(), params
    g = got[OUT_COLUMNS[:-1]].to_numpy()
    assert np.array_equal(np.isnan(g), np.isnan(vals)), params
    m = ~np.isnan(vals)
    assert np.array_equal(g[:, :3][m[:, :3]], vals[:, :3][m[:, :3]]), params
    assert np.allclose(g[:, 3][m[:, 3]], vals[:, 3][m[:, 3]], rtol=1e-12, atol=0), params
    return got, flg


def _main():
    df = _make_candles()
    sigma = sigma_pandas(df["close"], span=100)
    sigma.iloc[500] = 0.0  # exercise NO_VOL on a zero sigma
    sigma.iloc[501] = np.nan

    seen = np.zeros(16, dtype=bool)
    labels_seen = set()
    for tie in ("sl", "tp", "skip"):
        for vertical, min_ret in (("zero", 0.0), ("sign", 0.0), ("sign", 0.004)):
            for H in (24, 7):
                p = dict(horizon=H, pt=1.0, sl=1.5, tie=tie, vertical=vertical, min_ret=min_ret)
                # full series for the default combo, a strided subset (plus the tail) otherwise
                full = (tie, vertical, min_ret, H) == ("sl", "zero", 0.0, 24)
                ev = None if full else df.index[np.unique(np.r_[0:len(df):4, len(df) - 30:len(df)])]
                got, flg = _check(df, sigma, ev, p)
                for f in (GAP, AMBIGUOUS, INCOMPLETE, NO_VOL):
                    seen[f] |= bool((flg & f).any())
                labels_seen |= set(got["tb_label"].dropna().astype(int))
    assert seen[[GAP, AMBIGUOUS, INCOMPLETE, NO_VOL]].all(), seen
    assert labels_seen == {-1, 0, 1}

    # asymmetric barriers, events subset (incl. last rows), int64 ms index
    dfi = _make_candles(seed=11, ms_index=True)
    sig_i = sigma_pandas(dfi["close"], span=50)
    ev = dfi.index[np.r_[0, 49, 50, 51, 1000:1200:3, len(dfi) - 30:len(dfi)]]
    _check(dfi, sig_i, ev, dict(horizon=12, pt=2.0, sl=0.5, tie="skip", vertical="sign", min_ret=0.001))
    # a horizon longer than the data
    _check(dfi.iloc[:80], sig_i.iloc[:80], None,
           dict(horizon=200, pt=1.0, sl=1.0, tie="sl", vertical="zero", min_ret=0.0))

    # throughput of the pandas baseline (default params, all events)
    t0 = time.perf_counter()
    out = triple_barrier_pandas(df, sigma)
    dt = time.perf_counter() - t0
    print(f"flags counts: {out['tb_flags'].value_counts().sort_index().to_dict()}")
    print(f"ok  {len(out)} events in {dt:.2f}s = {len(out) / dt:,.0f} events/s")


if __name__ == "__main__":
    _main()
