"""CUDA kernels against the CPU kernels, under numba's CUDA simulator.

Run by tests/test_cuda.py in its own pytest process with
NUMBA_ENABLE_CUDASIM=1 (the variable must be set before numba is imported).
The simulator runs every GPU thread in Python, so series stay small.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import random_walk  # noqa: E402

from gpubackfill import compute_labels  # noqa: E402
from kernels import cpu  # noqa: E402
from kernels import cuda as gpu

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"

ALL = ["enhanced_triple_barrier", "vol_scaled_return", "mfe_mae"]


def assert_same_tables(a, b):
    assert a.column_names == b.column_names
    for name in a.column_names:
        if pa.types.is_list(a.column(name).type):  # every element, row-major
            x, y = (t.column(name).combine_chunks() for t in (a, b))
            np.testing.assert_array_equal(x.offsets, y.offsets, err_msg=name)
            x, y = (v.flatten().cast(pa.float64()).fill_null(np.nan).to_numpy() for v in (x, y))
            np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=name)
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=0, equal_nan=True, err_msg=name)
            continue
        x = a.column(name).to_numpy(zero_copy_only=False).astype(float)
        y = b.column(name).to_numpy(zero_copy_only=False).astype(float)
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=name)
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=0, equal_nan=True, err_msg=name)


def tricky_series(n, seed):
    c = random_walk(n, seed=seed, vol=2e-3)
    rng = np.random.default_rng(seed)
    wide = rng.random(n) < 0.08                      # bars touching both barriers
    c["high"][wide] *= 1.01
    c["low"][wide] /= 1.01
    gaps = np.flatnonzero(rng.random(n) < 0.03)       # opens far from the previous close
    for i in gaps[gaps > 0]:
        jump = 1 + rng.choice([-1, 1]) * 0.01
        c["open"][i] = c["close"][i - 1] * jump
        c["high"][i] = max(c["high"][i], c["open"][i])
        c["low"][i] = min(c["low"][i], c["open"][i])
    flat = slice(n // 3, n // 3 + 40)                 # zero returns: sigma exactly 0 (rolling)
    for k in ("open", "high", "low", "close"):
        c[k][flat] = c["close"][n // 3 - 1]
    return pd.DataFrame(c)


@pytest.mark.parametrize("tie", ["sl", "tp", "skip"])
@pytest.mark.parametrize("vertical", ["zero", "sign"])
def test_every_label_and_rule_matches_cpu(tie, vertical):
    df = tricky_series(700, seed=len(tie) + len(vertical))
    params = {"enhanced_triple_barrier": {"horizon": 60, "pt": 1.5, "sl": 1.0, "tie": tie,
                                          "vertical": vertical, "min_ret": 0.002, "vol_span": 10},
              "vol_scaled_return": {"horizons": [1, 7], "vol": "rolling", "vol_span": 10},
              "mfe_mae": {"horizon": 25}}
    a = compute_labels(df, ALL, params, backend="cpu", output="arrow")
    b = compute_labels(df, ALL, params, backend="cuda", output="arrow")
    assert (a.column("tb_flags").to_numpy() & 3).any()     # gaps and ambiguous bars occurred
    assert (a.column("tb_flags").to_numpy() == 4).any()    # incomplete windows at the end
    assert_same_tables(a, b)


def test_far_barriers_use_block_search_and_match():
    df = tricky_series(2_600, seed=5)
    params = {"enhanced_triple_barrier": {"horizon": 1_500, "pt": 40.0, "sl": 40.0, "vol_span": 5}}
    a = compute_labels(df, ["enhanced_triple_barrier"], params, backend="cpu", output="arrow")
    b = compute_labels(df, ["enhanced_triple_barrier"], params, backend="cuda", output="arrow")
    assert np.nanmax(a.column("tb_exit_bars").to_numpy(zero_copy_only=False).astype(float)) > 1_024
    assert_same_tables(a, b)


def test_ewm_sigma_parallel_scan_matches_the_sequential_recurrence():
    c = random_walk(3_000, seed=9, vol=1e-3)["close"]
    want = cpu.ewm_sigma(c, 4)          # settles within ~100 bars: the rest is the scan
    got = gpu.to_host(gpu.ewm_sigma(c, 4))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


def test_ewm_settling_prefix_grows_until_the_weights_settle(monkeypatch):
    c = random_walk(600, seed=4, vol=1e-3)["close"]
    monkeypatch.setattr(gpu, "SETTLE_PREFIX", 16)  # span 8 settles after ~200 bars: 16 -> 64 -> 256
    want = cpu.ewm_sigma(c, 8)
    got = gpu.to_host(gpu.ewm_sigma(c, 8))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("horizon", [1, gpu.MFE_ROWS - 1, gpu.MFE_ROWS, 7, 60, gpu.MFE_DIRECT_MAX,
                                     gpu.MFE_DIRECT_MAX + 1])
def test_mfe_mae_both_paths_match_cpu_with_ties(horizon):
    # Prices on a coarse grid repeat within every window: the first bar that
    # reaches the extreme must win on both paths (the tile scan from shared
    # memory from MFE_ROWS to MFE_DIRECT_MAX, van Herk runs outside), across
    # tile edges (THREADS * MFE_ROWS rows a tile) and the incomplete tail.
    n = 3_000
    rng = np.random.default_rng(horizon)
    close = 1.0 + np.round(np.cumsum(rng.normal(0, 1e-3, n)), 3)
    high = close + np.round(rng.random(n) * 2e-3, 3)
    low = close - np.round(rng.random(n) * 2e-3, 3)
    got = [gpu.to_host(x) for x in gpu.mfe_mae(high, low, close, horizon)]
    want = cpu.mfe_mae(high, low, close, horizon)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert len(np.unique(high)) < n // 4  # equal highs and lows inside most windows
    assert want[2][: n - horizon].min() >= 1


def test_linear_scan_against_a_loop():
    rng = np.random.default_rng(0)
    u = rng.normal(size=40_000)  # three levels of segments
    got = gpu.to_host(gpu.linear_scan(gpu.as_device(u), 0.97, 0.5, start=3))
    y, want = 0.5, np.empty_like(u)
    for t in range(3, len(u)):
        y = 0.97 * y + u[t]
        want[t] = y
    np.testing.assert_allclose(got[3:], want[3:], rtol=1e-12, atol=1e-12)


def test_short_and_flat_series():
    for n in (1, 2, 5):
        df = tricky_series(60, seed=n).iloc[:n]
        assert_same_tables(compute_labels(df, ALL, backend="cpu", output="arrow"),
                           compute_labels(df, ALL, backend="cuda", output="arrow"))
    price = np.full(80, 1.5)
    flat = pd.DataFrame({"ts": np.arange(80) * 60_000, "open": price, "high": price, "low": price,
                         "close": price})
    params = {"enhanced_triple_barrier": {"vol_span": 5}, "vol_scaled_return": {"vol_span": 5}}
    b = compute_labels(flat, ALL, params, backend="cuda", output="arrow")
    assert (b.column("tb_flags").to_numpy() == 8).all()
    assert_same_tables(compute_labels(flat, ALL, params, backend="cpu", output="arrow"), b)


def test_second_set_matches_cpu():
    from strategies import finer_candles

    df = tricky_series(500, seed=11)
    c = {k: df[k].to_numpy() for k in df.columns}
    finer = pd.DataFrame(finer_candles(c, 3, p_cover=0.8))
    labels = ["enhanced_triple_barrier", "fixed_horizon", "trend_scanning"]
    params = {"enhanced_triple_barrier": {"horizon": 20, "vol": "rolling", "vol_span": 10,
                                          "weights": True, "resolve_with": "M1"},
              "fixed_horizon": {"horizon": 7, "threshold": 0.5, "vol_span": 10},
              "trend_scanning": {"min_window": 3, "max_window": 30}}
    a = compute_labels(df, labels, params, backend="cpu", finer=finer, output="arrow")
    b = compute_labels(df, labels, params, backend="cuda", finer=finer, output="arrow")
    flags = a.column("tb_flags").to_numpy()
    assert (flags & 16).any() and (flags & 2).any()   # bars resolved, and bars left to the tie
    assert a.column("tb_uniqueness").null_count < a.num_rows
    assert a.column("trend_tvalue").null_count < a.num_rows
    assert_same_tables(a, b)


def test_second_set_short_and_flat_series():
    labels = ["enhanced_triple_barrier", "fixed_horizon", "trend_scanning"]
    params = {"enhanced_triple_barrier": {"vol_span": 5, "weights": True},
              "fixed_horizon": {"threshold": 1.0, "vol_span": 5}}
    for n in (1, 3, 30):
        df = tricky_series(60, seed=n).iloc[:n]
        assert_same_tables(compute_labels(df, labels, params, backend="cpu", output="arrow"),
                           compute_labels(df, labels, params, backend="cuda", output="arrow"))
    price = np.full(60, 1.5)
    flat = pd.DataFrame({"ts": np.arange(60) * 60_000, "open": price, "high": price, "low": price,
                         "close": price})
    b = compute_labels(flat, labels, params, backend="cuda", output="arrow")
    assert b.column("trend_tvalue").null_count == 60 and b.column("tb_uniqueness").null_count == 60
    assert_same_tables(compute_labels(flat, labels, params, backend="cpu", output="arrow"), b)


def test_close_only_frames_on_the_device():
    """Only close goes to the device when the frame has nothing else."""
    df = tricky_series(300, seed=4)[["ts", "close"]]
    labels = ["vol_scaled_return", "fixed_horizon", "trend_scanning"]
    params = {"fixed_horizon": {"threshold": 0.5, "vol_span": 10}}
    assert_same_tables(compute_labels(df, labels, params, backend="cpu", output="arrow"),
                       compute_labels(df, labels, params, backend="cuda", output="arrow"))


# -- third set: sides and meta-labels, the barrier grid ------------------------------


@pytest.mark.parametrize("tie", ["sl", "tp", "skip"])
def test_side_and_meta_match_cpu(tie):
    from strategies import finer_candles

    df = tricky_series(600, seed=13)
    c = {k: df[k].to_numpy() for k in df.columns}
    rng = np.random.default_rng(len(tie))
    df["side"] = rng.choice(np.array([1.0, -1.0, 0.0, np.nan]), size=len(df), p=[0.4, 0.4, 0.1, 0.1])
    finer = pd.DataFrame(finer_candles(c, 5, p_cover=0.8))
    params = {"enhanced_triple_barrier": {"horizon": 40, "pt": 1.5, "sl": 0.7, "tie": tie,
                                          "vertical": "sign", "vol": "rolling", "vol_span": 10,
                                          "weights": True, "resolve_with": "M1", "side": "column"}}
    a = compute_labels(df, "enhanced_triple_barrier", params, backend="cpu", finer=finer,
                       output="arrow")
    b = compute_labels(df, "enhanced_triple_barrier", params, backend="cuda", finer=finer,
                       output="arrow")
    flags = a.column("tb_flags").to_numpy()
    assert (flags & 32).any() and (flags & 16).any() and (flags & 3).any()
    assert set(a.column("tb_meta").drop_null().to_pylist()) == {0, 1}
    assert_same_tables(a, b)


@pytest.mark.parametrize("tie, vertical", [("sl", "zero"), ("tp", "sign"), ("skip", "sign")])
def test_barrier_grid_matches_cpu(tie, vertical):
    df = tricky_series(500, seed=17)
    params = {"barrier_grid": {"pts": [2.0, 0.5, 1.0], "sls": [1.0, 3.0], "horizons": [60, 5, 33],
                               "tie": tie, "vertical": vertical, "min_ret": 0.002,
                               "vol": "rolling", "vol_span": 10}}
    a = compute_labels(df, "barrier_grid", params, backend="cpu", output="arrow")
    b = compute_labels(df, "barrier_grid", params, backend="cuda", output="arrow")
    flags = np.asarray(a.column("grid_flags").combine_chunks().flatten())
    assert (flags & 3).any() and (flags == 4).any() and (flags == 8).any()
    assert_same_tables(a, b)


def test_barrier_grid_far_levels_use_block_search_and_match():
    df = tricky_series(2_600, seed=5)
    params = {"barrier_grid": {"pts": [40.0, 30.0], "sls": [40.0], "horizons": [1_500, 100],
                               "vol_span": 5}}
    a = compute_labels(df, "barrier_grid", params, backend="cpu", output="arrow")
    b = compute_labels(df, "barrier_grid", params, backend="cuda", output="arrow")
    bars = a.column("grid_exit_bars").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    assert np.nanmax(bars.astype(float)) > 1_024
    assert_same_tables(a, b)
