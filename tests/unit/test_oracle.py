"""Checks of the test oracle itself against hand-worked cases, and of the strategies."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

try:  # tests/ as a rootdir-inserted folder (no __init__.py) or as a package
    import oracle
    from strategies import candles, label_params
except ImportError:  # pragma: no cover
    from tests import oracle
    from tests.strategies import candles, label_params

NaN = np.nan
GAP, AMB, INC, NOVOL = oracle.GAP, oracle.AMBIGUOUS, oracle.INCOMPLETE, oracle.NO_VOL


def bars(rows):
    """rows of (open, high, low, close) -> four float64 arrays."""
    a = np.array(rows, dtype=np.float64)
    return a[:, 0], a[:, 1], a[:, 2], a[:, 3]


def check_tb(out, t, label, barrier, exit_bars, exit_ret, flags):
    got = (out["tb_label"][t], out["tb_barrier"][t], out["tb_exit_bars"][t])
    np.testing.assert_array_equal(got, (label, barrier, exit_bars), err_msg=f"t={t}")
    np.testing.assert_allclose(out["tb_exit_return"][t], exit_ret, rtol=1e-12, err_msg=f"t={t}")
    assert out["tb_flags"][t] == flags, f"t={t}: flags {out['tb_flags'][t]} != {flags}"


# ---------------------------------------------------------------- triple barrier


def test_tb_gap_exit_then_touches_and_incomplete():
    o, h, l, c = bars(
        [
            (100.0, 100.0, 100.0, 100.0),  # 0
            (100.0, 100.5, 99.5, 100.2),  # 1
            (102.0, 102.5, 101.5, 102.0),  # 2  opens above U(t=0) = 101
            (102.0, 102.2, 101.8, 102.0),  # 3
            (102.0, 102.1, 100.9, 101.0),  # 4  low 100.9 <= L(t=2,3) = 100.98
            (101.0, 101.2, 100.8, 101.0),  # 5
        ]
    )
    sig = np.full(6, 0.01)
    out = oracle.triple_barrier(o, h, l, c, sig, horizon=3)
    assert out["tb_flags"].dtype == np.uint8
    # t=0: U=101, L=99. bar1 inside; bar2 open 102 >= 101 -> gap exit +1 at 102.
    check_tb(out, 0, 1, 1, 2, 102 / 100 - 1, GAP)
    # t=1: U=101.202; bar2 open 102 >= U -> gap exit +1 at 102 after 1 bar.
    check_tb(out, 1, 1, 1, 1, 102 / 100.2 - 1, GAP)
    # t=2: U=103.02, L=100.98. bar3 inside; bar4 low 100.9 <= L -> -1 at L.
    check_tb(out, 2, -1, -1, 2, 100.98 / 102 - 1, 0)
    # t=3: t+H=6 > n-1=5, but bar4 touches L -> a normal, complete exit.
    check_tb(out, 3, -1, -1, 1, 100.98 / 102 - 1, 0)
    # t=4: U=102.01, L=99.99; bar5 inside, data ends before t+H=7 -> incomplete.
    # t=5: empty window -> incomplete.
    for t in (4, 5):
        for k in ("tb_label", "tb_barrier", "tb_exit_bars", "tb_exit_return"):
            assert np.isnan(out[k][t])
        assert out["tb_flags"][t] == INC


@pytest.mark.parametrize(
    "tie, label, barrier, ret",
    [
        ("sl", -1, -1, 99 / 100 - 1),  # exit at L = 99
        ("tp", 1, 1, 101 / 100 - 1),  # exit at U = 101
        ("skip", 0, 0, 100.3 / 100 - 1),  # exit at close_1 = 100.3
    ],
)
def test_tb_ambiguous_bar(tie, label, barrier, ret):
    o, h, l, c = bars(
        [
            (100.0, 100.0, 100.0, 100.0),
            (100.0, 101.5, 98.5, 100.3),  # touches both U=101 and L=99
            (100.3, 100.3, 100.3, 100.3),
        ]
    )
    out = oracle.triple_barrier(o, h, l, c, np.full(3, 0.01), horizon=2, tie=tie)
    check_tb(out, 0, label, barrier, 1, ret, AMB)
    assert out["tb_flags"][1] == INC and np.isnan(out["tb_label"][1])


def test_tb_gap_beats_ambiguous_and_lower_gap():
    # bar1 opens at 98.5 <= L=99 (and its range also spans U): gap wins, -1 at open.
    o, h, l, c = bars([(100.0, 100.0, 100.0, 100.0), (98.5, 101.5, 98.0, 99.0)])
    out = oracle.triple_barrier(o, h, l, c, np.full(2, 0.01), horizon=1, tie="tp")
    check_tb(out, 0, -1, -1, 1, 98.5 / 100 - 1, GAP)


def test_tb_barrier_touch_is_inclusive():
    # high exactly at U = 100*(1+0.01) = 101.0 counts as a touch.
    o, h, l, c = bars([(100.0, 100.0, 100.0, 100.0), (100.0, 101.0, 99.5, 100.0)])
    out = oracle.triple_barrier(o, h, l, c, np.full(2, 0.01), horizon=1)
    check_tb(out, 0, 1, 1, 1, 101 / 100 - 1, 0)


@pytest.mark.parametrize(
    "final, vertical, min_ret, label",
    [
        (100.4, "zero", 0.0, 0),
        (100.4, "sign", 0.0, 1),  # ret = +0.004
        (100.4, "sign", 0.003, 1),  # |0.004| >= 0.003
        (100.4, "sign", 0.005, 0),  # |0.004| <  0.005
        (99.6, "sign", 0.003, -1),  # ret = -0.004
        (100.0, "sign", 0.0, 0),  # ret = 0 -> sign 0
    ],
)
def test_tb_vertical_exit(final, vertical, min_ret, label):
    # sigma 0.05: U=105, L=95, never touched in 3 bars -> vertical at close_3.
    o, h, l, c = bars(
        [
            (100.0, 100.1, 99.9, 100.0),
            (100.0, 100.6, 99.9, 100.5),
            (100.5, 101.1, 100.4, 101.0),
            (101.0, 101.0, final - 0.1, final),
        ]
    )
    out = oracle.triple_barrier(
        o, h, l, c, np.full(4, 0.05), horizon=3, vertical=vertical, min_ret=min_ret
    )
    check_tb(out, 0, label, 0, 3, final / 100 - 1, 0)


def test_flat_prices_give_zero_sigma_and_no_vol():
    n, span = 10, 3
    c = np.full(n, 100.0)
    for vol in ("ewm", "rolling"):
        s = oracle.sigma(c, vol=vol, vol_span=span)
        # r_1..r_3 are the first 3 returns -> first valid sigma at t=3, exactly 0.
        assert np.isnan(s[:span]).all()
        assert (s[span:] == 0.0).all()
        out = oracle.triple_barrier(c, c, c, c, s, horizon=2)
        assert (out["tb_flags"] == NOVOL).all()  # NaN and 0 sigma are both NO_VOL
        assert np.isnan(out["tb_label"]).all() and np.isnan(out["tb_exit_return"]).all()
        v = oracle.vol_scaled_return(c, s, horizons=[1])
        assert np.isnan(v["vsr_1"]).all()
        np.testing.assert_array_equal(v["sigma"], s)  # 0 stays 0.0, NaN stays NaN


# ---------------------------------------------------------------- vsr, mfe/mae


def test_vol_scaled_return_by_hand():
    c = np.array([100.0, 110.0, 121.0])
    sig = np.array([0.1, NaN, 0.2])
    v = oracle.vol_scaled_return(c, sig, horizons=(1, 2))
    assert sorted(v) == ["sigma", "vsr_1", "vsr_2"]
    # t=0: ln(1.1)/0.1 and ln(1.21)/(0.1*sqrt 2); t=1: sigma missing; t=2: past end.
    np.testing.assert_allclose(v["vsr_1"][0], math.log(1.1) / 0.1, rtol=1e-12)
    np.testing.assert_allclose(v["vsr_2"][0], math.log(1.21) / (0.1 * math.sqrt(2)), rtol=1e-12)
    assert np.isnan(v["vsr_1"][1:]).all() and np.isnan(v["vsr_2"][1:]).all()
    np.testing.assert_array_equal(v["sigma"], sig)


def test_mfe_mae_first_bar_on_ties():
    high = np.array([10.0, 12.0, 15.0, 15.0, 11.0])
    low = np.array([9.0, 8.0, 7.0, 7.0, 9.0])
    close = np.array([10.0, 10.0, 10.0, 10.0, 10.0])
    out = oracle.mfe_mae(high, low, close, horizon=3)
    # t=0: highs 12,15,15 -> 15 first at j=2; lows 8,7,7 -> 7 first at j=2.
    # t=1: highs 15,15,11 -> first at j=2 (offset 1); lows 7,7,9 -> offset 1.
    np.testing.assert_allclose(out["mfe"][:2], [0.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(out["mae"][:2], [-0.3, -0.3], rtol=1e-12)
    np.testing.assert_array_equal(out["mfe_bars"][:2], [2, 1])
    np.testing.assert_array_equal(out["mae_bars"][:2], [2, 1])
    # t=2..4: t+3 > 4 -> NULL
    for k in out:
        assert np.isnan(out[k][2:]).all()


# ---------------------------------------------------------------- sigma vs pandas


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(candles(max_size=200), st.integers(2, 50))
def test_rolling_sigma_matches_pandas(cd, span):
    got = oracle.sigma(cd["close"], vol="rolling", vol_span=span)
    r = oracle.log_returns(cd["close"])
    want = pd.Series(r).rolling(span).std().to_numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    # pandas' online add/remove update leaves a residual variance of ~1e-19 after a
    # volatile stretch (e.g. 7e-10 instead of 0 for a window of zero returns), so
    # compare variances with a tiny absolute tolerance.
    np.testing.assert_allclose(got**2, want**2, rtol=1e-9, atol=1e-16)
    if len(got) > span:
        assert np.isnan(got[:span]).all() and not np.isnan(got[span])
    # The contract is the window's sample std, so a window of all-zero returns is
    # exactly 0 (-> NO_VOL), which pandas' rolling does not guarantee.
    r0 = np.nan_to_num(r, nan=1.0)
    for t in range(span, len(got)):
        if (r0[t - span + 1 : t + 1] == 0).all():
            assert got[t] == 0.0


def test_ewm_sigma_first_valid_index():
    c = 100 * np.exp(np.cumsum(np.r_[0.0, 0.01 * np.sin(np.arange(1, 30))]))
    s = oracle.sigma(c, vol="ewm", vol_span=5)
    assert np.isnan(s[:5]).all() and np.isfinite(s[5:]).all()


# ---------------------------------------------------------------- strategies


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(candles())
def test_candles_are_valid(cd):
    n = len(cd["ts"])
    assert 1 <= n <= 400
    assert cd["ts"].dtype == np.int64
    for k in ("open", "high", "low", "close", "volume"):
        assert cd[k].dtype == np.float64 and len(cd[k]) == n
    assert (np.diff(cd["ts"]) > 0).all()
    for k in ("open", "high", "low", "close"):
        assert np.isfinite(cd[k]).all() and (cd[k] > 0).all()
    assert (cd["high"] >= np.maximum(cd["open"], cd["close"])).all()
    assert (cd["low"] <= np.minimum(cd["open"], cd["close"])).all()
    assert np.isfinite(cd["volume"]).all() and (cd["volume"] >= 0).all()


@settings(max_examples=100, deadline=None)
@given(label_params())
def test_label_params_shape(p):
    tb = p["enhanced_triple_barrier"]
    assert set(tb) == {"horizon", "pt", "sl", "tie", "vertical", "min_ret", "vol", "vol_span"}
    assert 1 <= tb["horizon"] <= 60 and 0.1 <= tb["pt"] <= 5 and 0.1 <= tb["sl"] <= 5
    assert 0 <= tb["min_ret"] <= 0.01 and 2 <= tb["vol_span"] <= 50
    v = p["vol_scaled_return"]
    assert set(v) == {"horizons", "vol", "vol_span"}
    assert 1 <= len(v["horizons"]) <= 4 and len(set(v["horizons"])) == len(v["horizons"])
    assert p["mfe_mae"].keys() == {"horizon"}


def _tb_flags(cd, vol="ewm", span=10):
    s = oracle.sigma(cd["close"], vol=vol, vol_span=span)
    return oracle.triple_barrier(cd["open"], cd["high"], cd["low"], cd["close"], s, horizon=10)[
        "tb_flags"
    ]


@pytest.mark.parametrize(
    "what, pred",
    [
        ("gap exit", lambda cd: (_tb_flags(cd) & GAP).any()),
        ("ambiguous bar", lambda cd: (_tb_flags(cd) & AMB).any()),
        ("zero rolling sigma", lambda cd: (oracle.sigma(cd["close"], "rolling", 5) == 0).any()),
        ("zero ewm sigma", lambda cd: (oracle.sigma(cd["close"], "ewm", 5) == 0).any()),
        ("short series", lambda cd: len(cd["close"]) < 10),
        (
            "round prices",
            lambda cd: len(cd["close"]) > 20
            and (np.round(cd["close"], 2) == cd["close"]).all()
            and len(np.unique(cd["close"])) > 5,
        ),
    ],
)
def test_candles_reach_tricky_cases(what, pred):
    # find() raises NoSuchExample if the strategy never produces the case.
    find(candles(), pred, settings=settings(max_examples=500, deadline=None, database=None))
