"""The second label set against plain-loop oracles written from the contract
(LABELS.md, "Labels, second set"), and chunk invariance at random cuts:
ambiguous bars resolved from finer candles, sample weights, fixed-horizon
and trend-scanning labels."""

from __future__ import annotations

import numpy as np
import oracle
import pandas as pd
import pyarrow as pa
import pytest
from compare import BARRIER_RTOL, assert_exact, assert_float_close, assert_tb, assert_weights, column, near_barrier_rows
from conftest import random_walk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import STEP_MS, candles, finer_candles

from gpubackfill import compute_labels, resolve_labels
from gpubackfill.errors import InvalidInput
from gpubackfill.labels import halo, label_set_id

PROPERTY = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TB = "enhanced_triple_barrier"
ZERO_T = 1e-9  # |t-values| below this are rounding noise around an exact zero


def tb_params(draw_or_dict) -> dict:
    return {"horizon": 24, "pt": 1.0, "sl": 1.0, "tie": "sl", "vertical": "zero",
            "min_ret": 0.0, "vol": "ewm", "vol_span": 100, **draw_or_dict}


def oracle_tb(c: dict, p: dict) -> tuple[dict, np.ndarray]:
    sig = oracle.sigma(c["close"], p["vol"], p["vol_span"])
    want = oracle.triple_barrier(c["open"], c["high"], c["low"], c["close"], sig, p["horizon"],
                                 p["pt"], p["sl"], p["tie"], p["vertical"], p["min_ret"])
    return want, sig


def near_finer_rows(c: dict, finer: dict, sig: np.ndarray, p: dict) -> np.ndarray:
    """Rows whose barriers sit within 1e-9 of a finer price in their window."""
    n = len(c["close"])
    out = np.zeros(n, bool)
    prices = np.concatenate([finer["open"], finer["high"], finer["low"]])
    f_ts = np.concatenate([finer["ts"]] * 3)
    for t in range(n):
        if not (sig[t] > 0) or t + 1 >= n:
            continue
        lo_ts, hi_ts = c["ts"][t + 1], c["ts"][min(t + p["horizon"], n - 1)] + 10 * STEP_MS
        w = (f_ts >= lo_ts) & (f_ts < hi_ts)
        for b in (c["close"][t] * (1 + p["pt"] * sig[t]), c["close"][t] * (1 - p["sl"] * sig[t])):
            if np.any(np.abs(prices[w] - b) <= BARRIER_RTOL * abs(b)):
                out[t] = True
    return out


tb_draws = st.fixed_dictionaries({
    "horizon": st.integers(1, 30), "pt": st.sampled_from([0.5, 1.0, 2.0]),
    "sl": st.sampled_from([0.5, 1.0, 1.5]), "tie": st.sampled_from(["sl", "tp", "skip"]),
    "vol": st.sampled_from(["ewm", "rolling"]), "vol_span": st.integers(2, 20),
})


# -- ambiguous bars resolved from finer candles ---------------------------------


@PROPERTY
@given(c=candles(max_size=200), p=tb_draws, seed=st.integers(0, 2**32 - 1),
       cover=st.sampled_from([0.0, 0.5, 1.0]), explicit_bar=st.booleans())
def test_resolve_with_against_the_oracle(c, p, seed, cover, explicit_bar):
    p = tb_params(p)
    finer = finer_candles(c, seed, p_cover=cover)
    bar = STEP_MS if explicit_bar else oracle.bar_ms_of(c["ts"])
    out = compute_labels(pd.DataFrame(c), TB, {TB: {**p, "resolve_with": "M1"}},
                         finer=pd.DataFrame(finer), bar_ms=STEP_MS if explicit_bar else None, output="arrow")
    plain, sig = oracle_tb(c, p)
    want = oracle.resolve_with_finer(plain, c["open"], c["high"], c["low"], c["close"], sig,
                                     finer, bar, p["pt"], p["sl"], p["tie"], ts=c["ts"])
    near = near_barrier_rows(c, sig, p["horizon"], p["pt"], p["sl"]) | near_finer_rows(c, finer, sig, p)
    assert_tb(out, want, near, return_atol=4 * max(p["pt"], p["sl"]) * 1e-15)


def test_finer_candles_decide_in_time_order_and_flag_it():
    # One coarse bar after t=0 touches both barriers; the finer candles say
    # which came first.  sigma comes from a rolling window of 2 returns.
    ts = np.arange(6) * 3_600_000
    close = np.array([100.0, 100.0, 101.0, 100.0, 100.0, 100.0])
    open_ = np.r_[100.0, close[:-1]]
    c = {"ts": ts, "open": open_, "high": np.maximum(open_, close), "low": np.minimum(open_, close),
         "close": close}
    c["high"][3], c["low"][3] = 110.0, 90.0           # bar 3: both barriers of rows 0..2
    p = {TB: {"vol": "rolling", "vol_span": 2, "horizon": 3, "resolve_with": "M1", "tie": "sl"}}
    m1 = 60_000
    finer = pd.DataFrame({"ts": [ts[3], ts[3] + m1, ts[3] + 2 * m1],
                          "open": [101.0, 101.0, 108.0], "high": [101.5, 109.0, 110.0],
                          "low": [100.5, 101.0, 90.0], "close": [101.0, 108.0, 95.0]})
    out = compute_labels(pd.DataFrame(c), TB, p, finer=finer, output="arrow")
    assert out.column("tb_exit_bars").to_pylist()[2] == 1
    row = {k: out.column(k).to_pylist()[2] for k in ("tb_label", "tb_barrier", "tb_flags")}
    assert row == {"tb_label": 1, "tb_barrier": 1, "tb_flags": oracle.RESOLVED}  # upper first
    plain = compute_labels(pd.DataFrame(c), TB, {TB: {**p[TB], "resolve_with": ""}}, output="arrow")
    assert plain.column("tb_label").to_pylist()[2] == -1 and plain.column("tb_flags").to_pylist()[2] == 2
    # No finer data for the bar: the tie rule, flagged ambiguous.
    none = compute_labels(pd.DataFrame(c), TB, p, finer=finer.iloc[:0], output="arrow")
    assert none.column("tb_flags").to_pylist()[2] == 2


def test_resolve_with_without_finer_candles_is_a_clear_error():
    with pytest.raises(InvalidInput, match="resolve_with='M1' needs the finer candles"):
        compute_labels(pd.DataFrame(random_walk(50)), TB, {TB: {"resolve_with": "M1"}})
    with pytest.raises(InvalidInput, match="resolve_with must be one of"):
        compute_labels(pd.DataFrame(random_walk(50)), TB, {TB: {"resolve_with": "M7"}})


def test_bar_ms_must_be_a_positive_integer():
    df = pd.DataFrame(random_walk(50))
    for bad in (0, -5, 1.5, "60000", True):
        with pytest.raises(InvalidInput, match="bar_ms must be a positive integer"):
            compute_labels(df, TB, {TB: {"resolve_with": "M1"}}, finer=df, bar_ms=bad)


def test_new_parameters_at_their_defaults_keep_stored_label_set_ids():
    base = resolve_labels([TB])
    assert label_set_id(base) == label_set_id(resolve_labels([TB], {TB: {"weights": False,
                                                                          "resolve_with": ""}}))
    assert label_set_id(base) != label_set_id(resolve_labels([TB], {TB: {"weights": True}}))
    assert label_set_id(base) != label_set_id(resolve_labels([TB], {TB: {"resolve_with": "M1"}}))


# -- sample weights ------------------------------------------------------------------


@PROPERTY
@given(c=candles(max_size=250), p=tb_draws)
def test_sample_weights_against_the_oracle(c, p):
    p = tb_params(p)
    out = compute_labels(pd.DataFrame(c), TB, {TB: {**p, "weights": True}}, output="arrow")
    plain, sig = oracle_tb(c, p)
    near = near_barrier_rows(c, sig, p["horizon"], p["pt"], p["sl"])
    assert_weights(out, plain, c, near, p["horizon"])


def test_weights_by_hand_with_vertical_exits():
    # Barriers out of reach: every event exits at the vertical barrier, e = 2.
    # Rows 0 and 1 have no sigma (rolling, 2 returns), so events start at 2:
    # c_3 = 1 (only event 2), later bars are covered by two events.
    close = np.array([100.0, 101.0, 99.0, 102.0, 98.0, 103.0, 97.0, 104.0, 96.0, 105.0])
    c = {"ts": np.arange(10) * 60_000, "open": close, "high": close, "low": close, "close": close}
    params = {TB: {"vol": "rolling", "vol_span": 2, "horizon": 2, "pt": 1e6, "sl": 1e6,
                   "weights": True}}
    out = compute_labels(pd.DataFrame(c), TB, params, output="arrow")
    assert out.column("tb_exit_bars").to_pylist() == [None, None] + [2] * 6 + [None, None]
    u = column(out, "tb_uniqueness")
    np.testing.assert_allclose(u[2:7], [0.75, 0.5, 0.5, 0.5, 0.5], rtol=1e-15)
    assert np.isnan(u[[0, 1, 7, 8, 9]]).all()  # no event, or concurrency not final (i + e - 1 + H > n - 1)
    r = np.log(close[1:] / close[:-1])  # r[j - 1] = r_j
    want = [abs(r[2] / 1 + r[3] / 2)] + [abs(r[i] / 2 + r[i + 1] / 2) for i in range(3, 7)]
    np.testing.assert_allclose(column(out, "tb_attribution")[2:7], want, rtol=1e-12)


# -- fixed horizon and trend scanning ------------------------------------------


@PROPERTY
@given(c=candles(max_size=250), h=st.integers(1, 40), k=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
       vol=st.sampled_from(["ewm", "rolling"]), span=st.integers(2, 30))
def test_fixed_horizon_against_the_oracle(c, h, k, vol, span):
    p = {"horizon": h, "threshold": k, "vol": vol, "vol_span": span}
    out = compute_labels(pd.DataFrame(c), "fixed_horizon", {"fixed_horizon": p}, output="arrow")
    sig = oracle.sigma(c["close"], vol, span)
    want = oracle.fixed_horizon(c["close"], sig, h, k)
    ret = want["fh_return"]
    band = np.abs(k * sig * np.sqrt(h)) if k > 0 else np.zeros_like(ret)
    # A return within rounding of the band may fall either side.
    edge = np.abs(np.abs(ret) - band) <= 1e-12 + 1e-9 * band
    assert_float_close("fh_return", column(out, "fh_return"), ret, atol=1e-15)
    assert_exact("fh_label", column(out, "fh_label"), want["fh_label"], skip=edge)


@PROPERTY
@given(c=candles(max_size=150), lo=st.integers(3, 12), extra=st.integers(0, 25))
def test_trend_scanning_against_the_oracle(c, lo, extra):
    hi = lo + extra
    out = compute_labels(pd.DataFrame(c), "trend_scanning",
                         {"trend_scanning": {"min_window": lo, "max_window": hi}}, output="arrow")
    want = oracle.trend_scanning(c["close"], lo, hi)
    got_t = column(out, "trend_tvalue")
    assert_exact("NULLs", np.isnan(got_t), np.isnan(want["trend_tvalue"]))
    # Label and window may differ only where the top two |t| are within 1e-6.
    tie = np.abs(np.abs(want["trend_tvalue"]) - want["_runner_up"]) <= 1e-6 * np.abs(want["trend_tvalue"])
    # A slope that is zero in exact arithmetic (one odd close in the middle
    # of flat ones) comes out as rounding noise, 0.0 here and 3e-17 in the
    # oracle: a relative tolerance means nothing there, nor does its sign.
    noise = np.abs(want["trend_tvalue"]) <= ZERO_T
    tie |= noise
    np.testing.assert_allclose(np.abs(got_t[~tie]), np.abs(want["trend_tvalue"][~tie]), rtol=1e-6)
    assert (np.abs(got_t[noise]) <= ZERO_T).all()
    ok = np.isclose(got_t, want["trend_tvalue"], rtol=1e-6, equal_nan=True) | tie
    assert ok.all(), (np.flatnonzero(~ok)[:5], got_t[~ok][:5], want["trend_tvalue"][~ok][:5])
    assert_exact("trend_window", column(out, "trend_window"), want["trend_window"], skip=tie)
    assert_exact("trend_label", column(out, "trend_label"), want["trend_label"], skip=tie)


def test_trend_scanning_flat_windows_and_windows_longer_than_the_data():
    rng = np.random.default_rng(3)
    close = np.r_[np.full(30, 1.25), 1.25 * np.exp(np.cumsum(1e-4 + rng.normal(0, 1e-5, 20)))]
    c = {"ts": np.arange(50) * 60_000, "open": close, "high": close, "low": close, "close": close}
    out = compute_labels(pd.DataFrame(c), "trend_scanning",
                         {"trend_scanning": {"min_window": 5, "max_window": 10}}, output="arrow")
    t = column(out, "trend_tvalue")
    assert np.isnan(t[:21]).all()           # every window flat: no t-value
    assert np.isnan(t[41:]).all()           # t + 9 past the end
    assert (column(out, "trend_label")[25:41] == 1).all()
    short = compute_labels(pd.DataFrame(c).iloc[:8], "trend_scanning",
                           {"trend_scanning": {"min_window": 5, "max_window": 10}}, output="arrow")
    assert short.column("trend_tvalue").null_count == 8


def test_trend_scanning_keeps_six_digits_on_real_price_levels():
    # A gentle trend on a price near 150 (a JPY pair): the naive sums of
    # y = ln(close) would cancel; the centred ones keep the t-value.
    rng = np.random.default_rng(1)
    close = 150.0 * np.exp(np.cumsum(2e-5 + rng.normal(0, 1e-4, 400)))
    c = {"ts": np.arange(400) * 60_000, "open": close, "high": close, "low": close, "close": close}
    out = compute_labels(pd.DataFrame(c), "trend_scanning",
                         {"trend_scanning": {"min_window": 5, "max_window": 50}}, output="arrow")
    want = oracle.trend_scanning(close, 5, 50)
    tie = np.abs(np.abs(want["trend_tvalue"]) - want["_runner_up"]) <= 1e-6 * np.abs(want["trend_tvalue"])
    np.testing.assert_allclose(column(out, "trend_tvalue")[~tie], want["trend_tvalue"][~tie],
                               rtol=1e-6)


def test_bad_trend_windows_are_refused():
    df = pd.DataFrame(random_walk(50))
    with pytest.raises(InvalidInput, match="max_window .* must be >= min_window"):
        compute_labels(df, "trend_scanning", {"trend_scanning": {"min_window": 9, "max_window": 5}})
    with pytest.raises(InvalidInput, match="min_window must be >= 3"):
        compute_labels(df, "trend_scanning", {"trend_scanning": {"min_window": 2}})


# -- chunk invariance ------------------------------------------------------------------


def chunked(df, labels, params, cuts, finer=None):
    back, ahead = halo(resolve_labels(labels, params))
    n = len(df)
    bounds = [0, *cuts, n]
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        lo, hi = max(0, a - back), min(n, b + ahead)
        out = compute_labels(df.iloc[lo:hi], labels, params, finer=finer, bar_ms=STEP_MS, output="arrow")
        parts.append(out.slice(a - lo, b - a))
    return pa.concat_tables(parts)


NEW = ["enhanced_triple_barrier", "fixed_horizon", "trend_scanning"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), ncuts=st.integers(1, 6), data=st.data())
def test_chunks_at_random_cuts_equal_the_whole_series(seed, ncuts, data):
    n = 1_500
    c = random_walk(n, seed=seed % 1000, vol=2e-3)
    rng = np.random.default_rng(seed)
    wide = rng.random(n) < 0.1
    c["high"][wide] *= 1.004
    c["low"][wide] /= 1.004
    df = pd.DataFrame(c)
    finer = pd.DataFrame(finer_candles(c, seed, p_cover=0.8))
    params = {TB: {"horizon": data.draw(st.integers(2, 30)), "vol": "rolling", "vol_span": 10,
                   "weights": True, "resolve_with": "M1", "tie": data.draw(st.sampled_from(["sl", "skip"]))},
              "fixed_horizon": {"horizon": data.draw(st.integers(1, 30)), "threshold": 0.5,
                                "vol": "rolling", "vol_span": 10},
              "trend_scanning": {"min_window": 3, "max_window": data.draw(st.integers(3, 40))}}
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), min_size=ncuts, max_size=ncuts)))
    whole = compute_labels(df, NEW, params, finer=finer, bar_ms=STEP_MS, output="arrow")
    parts = chunked(df, NEW, params, cuts, finer=finer)
    assert (column(whole, "tb_flags") & oracle.RESOLVED).any()
    for name in whole.column_names:
        g, w = column(parts, name), column(whole, name)
        if name in ("tb_exit_return", "tb_uniqueness", "tb_attribution", "fh_return", "trend_tvalue"):
            assert_float_close(name, g, w)
        else:
            assert_exact(name, g, w)
