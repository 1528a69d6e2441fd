"""sigma_t against pandas, which defines it (LABELS.md: relative 1e-9)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import random_walk
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import candles

from gpubackfill import compute_labels
from kernels import core


def pandas_sigma(close, vol, span):
    r = np.log(pd.Series(close)).diff()
    if vol == "ewm":
        return r.ewm(span=span, adjust=True, min_periods=span).std().to_numpy()
    return r.rolling(span).std().to_numpy()


def kernel_sigma(c, vol, span):
    out = compute_labels(pd.DataFrame(c), ["vol_scaled_return"],
                         {"vol_scaled_return": {"vol": vol, "vol_span": span}}, output="arrow")
    return out.column("sigma").to_numpy(zero_copy_only=False)


@pytest.mark.parametrize("span", [2, 5, 20, 100, 500])
@pytest.mark.parametrize("vol_level", [1e-4, 1e-3, 3e-2])
def test_ewm_sigma_equals_pandas(span, vol_level):
    c = random_walk(20_000, seed=span, vol=vol_level)
    got = kernel_sigma(c, "ewm", span)
    want = pandas_sigma(c["close"], "ewm", span)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[:span]).all() and not np.isnan(got[span:]).any()
    np.testing.assert_allclose(got, want, rtol=1e-9, equal_nan=True)


@pytest.mark.parametrize("span", [2, 20, 100])
def test_rolling_sigma_equals_pandas(span):
    c = random_walk(20_000, seed=span, vol=2e-3)
    got = kernel_sigma(c, "rolling", span)
    want = pandas_sigma(c["close"], "rolling", span)
    np.testing.assert_allclose(got, want, rtol=1e-9, equal_nan=True)


@settings(max_examples=80, deadline=None)
@given(c=candles(min_size=1, max_size=300), span=st.integers(2, 40))
def test_ewm_sigma_equals_pandas_on_tricky_series(c, span):
    got = kernel_sigma(c, "ewm", span)
    want = pandas_sigma(c["close"], "ewm", span)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    # pandas forms log(a/b) with one extra rounding; see test_labels_vs_oracle.
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15, equal_nan=True)


def test_flat_series_has_exactly_zero_sigma_for_both_estimators():
    c = random_walk(50, seed=1)
    for k in ("open", "high", "low", "close"):
        c[k] = np.full(50, 1.25)
    assert (kernel_sigma(c, "ewm", 5)[5:] == 0).all()
    assert (kernel_sigma(c, "rolling", 5)[5:] == 0).all()


def test_log_ratio_is_accurate_inside_and_outside_the_series_radius():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.5, 200, 5_000)
    for scale in (1e-6, 1e-3, 0.015, 0.05, 0.5):
        a = b * np.exp(rng.normal(0, scale, b.size))
        got = np.array([core.log_ratio(x, y) for x, y in zip(a, b)])
        # log1p(d/b) with d exact is accurate to ~1 ulp: a fair reference.
        want = np.log1p((a - b) / b)
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-300)
