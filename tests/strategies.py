"""Hypothesis strategies for property tests: valid candle series and label params.

Per-bar randomness comes from ``numpy.random.default_rng(seed)`` with a
hypothesis-drawn seed; the "regime" knobs (gap rate, wide-bar rate, flat runs,
tick rounding, ...) are drawn by hypothesis, so shrinking simplifies both the
series length and the regimes.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

T0_MS = 1_600_000_000_000  # 2020-09-13, a minute boundary
STEP_MS = 60_000
PRICE_LO, PRICE_HI = 0.5, 200.0


@st.composite
def candles(draw, min_size: int = 1, max_size: int = 400):
    """A valid candle series: dict of numpy arrays ts, open, high, low, close, volume.

    Covers with reasonable probability: gaps through barrier levels, wide bars
    touching both barriers, flat stretches (identical prices -> zero returns ->
    sigma exactly 0, including a flat start so that ewm sigma is 0 too),
    prices snapped to round ticks, and series shorter than typical horizons.
    """
    # hypothesis already draws very short series (n=1..10) about a third of the time
    n = draw(st.integers(min_size, max_size))
    seed = draw(st.integers(0, 2**32 - 1))
    price0 = draw(
        st.one_of(
            st.sampled_from([1.0, 10.0, 100.0, 50.0, 2.5]),
            st.floats(PRICE_LO, PRICE_HI, allow_nan=False, allow_infinity=False),
        )
    )
    vol = 10.0 ** draw(st.floats(-4.0, math.log10(3e-2)))  # per-bar vol, log-uniform
    p_gap = draw(st.sampled_from([0.0, 0.02, 0.1, 0.3]))
    p_wide = draw(st.sampled_from([0.0, 0.05, 0.2]))
    p_flat = draw(st.sampled_from([0.0, 0.02, 0.1]))  # chance to start a flat run
    flat_start = draw(st.sampled_from([0, 0, 5, 30, 1000]))  # bars flat at the start
    p_open_jitter = draw(st.sampled_from([0.0, 0.5]))  # else open == previous close
    # tick as a fraction of the order of magnitude of price0; None = no rounding
    tick_frac = draw(st.sampled_from([None, None, 1e-4, 1e-3, 1e-2]))
    big_ts_gaps = draw(st.booleans())

    rng = np.random.default_rng(seed)
    decimals = None  # round prices to this many decimals (exact round levels)
    if tick_frac is not None:
        decimals = round(-math.log10(tick_frac)) - math.floor(math.log10(price0))
        tick = 10.0 ** -decimals

    def snap(x: float) -> float:
        if decimals is None:
            return x
        return max(round(x, decimals), tick)

    o = np.empty(n)
    hi = np.empty(n)
    lo = np.empty(n)
    c = np.empty(n)
    prev = snap(price0)
    flat_left = flat_start
    for i in range(n):
        if flat_left > 0 or (p_flat > 0 and rng.random() < p_flat):
            if flat_left <= 0:
                flat_left = int(rng.integers(3, 60))
            flat_left -= 1
            o[i] = hi[i] = lo[i] = c[i] = prev
            continue
        op = prev
        if i > 0 and rng.random() < p_gap:
            op = prev * math.exp(rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 10.0) * vol)
        elif rng.random() < p_open_jitter:
            op = prev * math.exp(rng.normal(0.0, 0.1 * vol))
        step = rng.normal(0.0, vol)
        cl = op * math.exp(step)
        if not (0.3 * PRICE_LO < cl < 1.5 * PRICE_HI):
            cl = op * math.exp(-step)  # reflect to stay in a realistic range
        ext = 0.5 * vol
        if rng.random() < p_wide:
            ext = rng.uniform(2.0, 10.0) * vol
        h_ = max(op, cl) * math.exp(abs(rng.normal(0.0, ext)))
        l_ = min(op, cl) * math.exp(-abs(rng.normal(0.0, ext)))
        op, cl, h_, l_ = snap(op), snap(cl), snap(h_), snap(l_)
        o[i], c[i] = op, cl
        hi[i] = max(h_, op, cl)
        lo[i] = min(l_, op, cl)
        prev = cl

    steps = np.full(n, STEP_MS, dtype=np.int64)
    if big_ts_gaps and n > 0:
        mask = rng.random(n) < 0.05
        steps[mask] *= rng.integers(2, 500, size=int(mask.sum()))
    ts = T0_MS + np.cumsum(steps) - STEP_MS
    volume = rng.lognormal(3.0, 1.0, size=n) * (rng.random(n) > 0.05)
    return {
        "ts": ts.astype(np.int64),
        "open": o,
        "high": hi,
        "low": lo,
        "close": c,
        "volume": volume.astype(np.float64),
    }


_vol = st.sampled_from(["ewm", "rolling"])
_vol_span = st.integers(2, 50)
_mult = st.one_of(
    st.sampled_from([0.5, 1.0, 1.5, 2.0]),
    st.floats(0.1, 5.0, allow_nan=False, allow_infinity=False),
)


@st.composite
def label_params(draw):
    """A dict {label_name: params} for all three labels, with exact param names."""
    return {
        "enhanced_triple_barrier": {
            "horizon": draw(st.integers(1, 60)),
            "pt": draw(_mult),
            "sl": draw(_mult),
            "tie": draw(st.sampled_from(["sl", "tp", "skip"])),
            "vertical": draw(st.sampled_from(["zero", "sign"])),
            "min_ret": draw(st.one_of(st.just(0.0), st.floats(0.0, 0.01))),
            "vol": draw(_vol),
            "vol_span": draw(_vol_span),
        },
        "vol_scaled_return": {
            "horizons": draw(st.lists(st.integers(1, 40), min_size=1, max_size=4, unique=True)),
            "vol": draw(_vol),
            "vol_span": draw(_vol_span),
        },
        "mfe_mae": {
            "horizon": draw(st.integers(1, 60)),
        },
    }


def finer_candles(c: dict, seed: int, per_bar: int = 4, p_cover: float = 0.7,
                  p_both: float = 0.15, p_jump: float = 0.2) -> dict:
    """Finer candles inside the bars of ``c`` (``per_bar`` to a bar of the
    most frequent step), for the resolution of ambiguous bars.

    A covered bar's finer path starts at its open, ends at its close and
    reaches its high and its low in a random order, in two different finer
    candles (or, with ``p_both``, in one: still ambiguous at the finer
    level); with ``p_jump`` a finer candle opens away from the previous close
    (a finer gap).  A bar is left without finer candles with 1 - p_cover.
    """
    rng = np.random.default_rng(seed)
    ts = np.asarray(c["ts"])
    steps = np.diff(ts)
    bar = int(np.bincount(steps // STEP_MS).argmax() * STEP_MS) if steps.size else STEP_MS
    sub = max(1, bar // per_bar)
    out = {k: [] for k in ("ts", "open", "high", "low", "close", "volume")}
    for j in range(len(ts)):
        if rng.random() >= p_cover:
            continue
        o, h, lo, cl = (float(c[k][j]) for k in ("open", "high", "low", "close"))
        m = per_bar
        a, b = rng.choice(m, size=2, replace=m < 2)
        if rng.random() < p_both:
            b = a
        closes = list(rng.uniform(lo, h, size=m))
        closes[-1] = cl
        prev = o
        for k in range(m):
            ok = prev if (k == 0 or rng.random() >= p_jump) else float(rng.uniform(lo, h))
            ck = closes[k]
            hk = max(ok, ck, float(rng.uniform(max(ok, ck), h)) if h > max(ok, ck) else h)
            lk = min(ok, ck, float(rng.uniform(lo, min(ok, ck))) if lo < min(ok, ck) else lo)
            if k == a:
                hk = h
            if k == b:
                lk = lo
            out["ts"].append(int(ts[j]) + k * sub)
            out["open"].append(ok)
            out["high"].append(hk)
            out["low"].append(lk)
            out["close"].append(ck)
            out["volume"].append(1.0)
            prev = ck
    return {k: np.asarray(v, dtype=np.int64 if k == "ts" else np.float64) for k, v in out.items()}
