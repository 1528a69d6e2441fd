"""Every label against the plain-loop oracle, on random candle series and
random parameters (gaps, ambiguous bars, flat prices, short series)."""

from __future__ import annotations

import numpy as np
import oracle
import pandas as pd
import pytest
from compare import assert_exact, assert_float_close, assert_tb, column, near_barrier_rows
from conftest import random_walk
from hypothesis import HealthCheck, given, settings
from strategies import candles, label_params

from gpubackfill import compute_labels

ALL = ["enhanced_triple_barrier", "vol_scaled_return", "mfe_mae"]
SIGMA_ATOL = 1e-15
PROPERTY = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_against_oracle(c: dict, params: dict) -> None:
    out = compute_labels(pd.DataFrame(c), ALL, params, output="arrow")
    assert out.num_rows == len(c["close"])
    np.testing.assert_array_equal(out.column("ts").to_numpy(), c["ts"])

    tb = params["enhanced_triple_barrier"]
    sig_tb = oracle.sigma(c["close"], tb["vol"], tb["vol_span"])
    want = oracle.triple_barrier(c["open"], c["high"], c["low"], c["close"], sig_tb,
                                 tb["horizon"], tb["pt"], tb["sl"], tb["tie"],
                                 tb["vertical"], tb["min_ret"])
    near = near_barrier_rows(c, sig_tb, tb["horizon"], tb["pt"], tb["sl"])
    assert_tb(out, want, near, return_atol=2 * max(tb["pt"], tb["sl"]) * SIGMA_ATOL)

    vsr = params["vol_scaled_return"]
    sig_v = oracle.sigma(c["close"], vsr["vol"], vsr["vol_span"])
    want = oracle.vol_scaled_return(c["close"], sig_v, vsr["horizons"])
    # Each oracle return log(a / b) carries ~1e-16 absolute rounding (the kernel
    # computes ln(a/b) without forming a/b); a std of nearly equal returns
    # magnifies that relative to sigma, hence a tiny absolute floor.
    assert_float_close("sigma", column(out, "sigma"), want["sigma"], atol=SIGMA_ATOL)
    # The return scaling is checked given the sigma the kernel used, so that
    # an ill-conditioned sigma (nearly equal returns) is judged once, above.
    want = oracle.vol_scaled_return(c["close"], column(out, "sigma"), vsr["horizons"])
    sig_used = column(out, "sigma")
    for h in vsr["horizons"]:
        # The oracle's log(a / b) rounds the quotient first: up to ~1.1e-16
        # absolute in the log return, hence that much over sigma * sqrt(h).
        atol = np.divide(4.5e-16, sig_used * np.sqrt(h), out=np.zeros_like(sig_used),
                         where=sig_used > 0)
        assert_float_close(f"vsr_{h}", column(out, f"vsr_{h}"), want[f"vsr_{h}"], atol=atol)

    mm = params["mfe_mae"]
    want = oracle.mfe_mae(c["high"], c["low"], c["close"], mm["horizon"])
    for name in ("mfe", "mae"):
        assert_float_close(name, column(out, name), want[name])
    for name in ("mfe_bars", "mae_bars"):
        assert_exact(name, column(out, name), want[name])


@PROPERTY
@given(c=candles(), params=label_params())
def test_all_labels_match_oracle(c, params):
    check_against_oracle(c, params)


@pytest.mark.parametrize("tie", ["sl", "tp", "skip"])
@pytest.mark.parametrize("vertical", ["zero", "sign"])
def test_triple_barrier_every_rule_on_a_long_walk(tie, vertical):
    c = random_walk(3_000, seed=11, vol=2e-3)
    # Wide bars so that ambiguous bars occur under every tie rule.
    c["high"][::7] *= 1.01
    c["low"][::7] /= 1.01
    params = {"enhanced_triple_barrier": {"horizon": 30, "pt": 2.0, "sl": 1.5, "tie": tie,
                                          "vertical": vertical, "min_ret": 0.001,
                                          "vol_span": 20},
              "vol_scaled_return": {}, "mfe_mae": {}}
    out = compute_labels(pd.DataFrame(c), ALL, params, output="arrow")
    flags = column(out, "tb_flags")
    assert (flags & 2).any(), "expected ambiguous bars in this series"
    sig = oracle.sigma(c["close"], "ewm", 20)
    want = oracle.triple_barrier(c["open"], c["high"], c["low"], c["close"], sig, 30, 2.0, 1.5,
                                 tie, vertical, 0.001)
    assert_tb(out, want, near_barrier_rows(c, sig, 30, 2.0, 1.5))


@pytest.mark.parametrize("horizon,pt", [(200, 8.0), (1_000, 50.0), (700, 3.0)])
def test_far_barriers_use_the_table_search_and_agree(horizon, pt):
    """Horizons past the direct scan go through the O(log H) search."""
    c = random_walk(4_000, seed=3, vol=1e-3)
    params = {"enhanced_triple_barrier": {"horizon": horizon, "pt": pt, "sl": pt, "vol_span": 50}}
    out = compute_labels(pd.DataFrame(c), ["enhanced_triple_barrier"], params, output="arrow")
    sig = oracle.sigma(c["close"], "ewm", 50)
    want = oracle.triple_barrier(c["open"], c["high"], c["low"], c["close"], sig, horizon, pt, pt)
    bars = column(out, "tb_exit_bars")
    assert np.nanmax(bars) > 8, "no exit went beyond the direct scan"
    assert_tb(out, want, near_barrier_rows(c, sig, horizon, pt, pt))


def test_rows_past_the_data_are_null_and_flagged_incomplete():
    c = random_walk(300, seed=5)
    out = compute_labels(pd.DataFrame(c), ALL,
                         {"enhanced_triple_barrier": {"horizon": 50, "pt": 100.0, "sl": 100.0,
                                                      "vol_span": 10},
                          "vol_scaled_return": {"horizons": [1, 5], "vol_span": 10},
                          "mfe_mae": {"horizon": 40}}, output="arrow")
    flags = column(out, "tb_flags")
    # Barriers 100 sigma away are never touched: the last 50 rows are incomplete.
    assert (flags[-50:] == 4).all() and (flags[10:-50] == 0).all()
    assert out.column("tb_label").null_count == 50 + 10  # incomplete + no sigma yet
    assert np.isnan(column(out, "mfe")[-40:]).all() and not np.isnan(column(out, "mfe")[:-40]).any()
    assert np.isnan(column(out, "vsr_5")[-5:]).all() and not np.isnan(column(out, "vsr_5")[10:-5]).any()


def test_flat_prices_give_zero_sigma_and_null_labels():
    n = 200
    price = np.full(n, 1.2345)
    c = {"ts": np.arange(n, dtype=np.int64) * 60_000, "open": price, "high": price,
         "low": price, "close": price}
    out = compute_labels(pd.DataFrame(c), ALL,
                         {"enhanced_triple_barrier": {"vol_span": 10},
                          "vol_scaled_return": {"vol": "rolling", "vol_span": 10}}, output="arrow")
    sigma = column(out, "sigma")
    assert (sigma[10:] == 0.0).all() and np.isnan(sigma[:10]).all()
    assert (column(out, "tb_flags") == 8).all()
    assert out.column("vsr_1").null_count == n
    # mfe/mae do not need sigma: a flat window has zero excursion at bar 1.
    assert (column(out, "mfe")[:-24] == 0).all() and (column(out, "mfe_bars")[:-24] == 1).all()
