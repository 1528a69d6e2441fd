"""The staging path (pinned buffers, pieces, row blocks) under numba's CUDA
simulator, against the CPU kernels.

Run by tests/unit/test_cuda_staging.py in its own pytest process with
NUMBA_ENABLE_CUDASIM=1.  The simulator copies synchronously, so what is
checked is the arithmetic of pieces and blocks: every row and every byte
lands where it belongs, at sizes that leave partial pieces and blocks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sim_parity import assert_same_tables, tricky_series  # noqa: E402

from gpubackfill import compute_labels, resolve_labels  # noqa: E402
from gpubackfill.compute import staging  # noqa: E402
from gpubackfill.labels import halo  # noqa: E402
from kernels import cuda as gpu  # noqa: E402
from kernels import cuda_transfer  # noqa: E402

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"

ALL = ["enhanced_triple_barrier", "vol_scaled_return", "mfe_mae"]
# Three float64s a piece: every column crosses in many pieces, the last one partial.
PIECE = 24
ROLLING = {"enhanced_triple_barrier": {"horizon": 20, "pt": 1.5, "sl": 1.0, "min_ret": 0.002,
                                       "vol": "rolling", "vol_span": 10},
           "vol_scaled_return": {"horizons": [1, 7], "vol": "rolling", "vol_span": 10},
           "mfe_mae": {"horizon": 25}}


@pytest.fixture
def tiny(monkeypatch):
    """Pieces of PIECE bytes and a device budget of ``rows`` rows of the call."""
    monkeypatch.setattr(staging, "PIECE_BYTES", PIECE)

    def budget(df, labels, params, rows):
        from gpubackfill.candles import frames

        series = frames.to_series(df, optional=("open", "high", "low"), side="side" in df)
        per_row = staging.device_bytes_per_row(series, resolve_labels(labels, params))
        monkeypatch.setattr(staging, "DEVICE_BUDGET", rows * per_row)
    return budget


def blocks_of(n, labels, params, rows):
    back, ahead = halo(resolve_labels(labels, params))
    return staging.row_blocks(n, rows, back, ahead)


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int8, np.uint8, np.int64])
@pytest.mark.parametrize("n", [0, 1, 2, 37, 1_007])
def test_staged_copies_round_trip_at_odd_sizes(n, dtype):
    s = cuda_transfer.Staging(PIECE)
    host = (np.arange(n) * 7 % 101 - 50).astype(dtype)
    dev = s.to_device(host)
    np.testing.assert_array_equal(dev.copy_to_host(), host)
    back = np.full(n, 99, dtype)
    assert s.to_host(dev, back) is back
    np.testing.assert_array_equal(back, host)
    per = PIECE // np.dtype(dtype).itemsize
    assert s.pieces == 2 * -(-n // per)


def test_two_dimensional_and_strided_device_arrays_come_back_whole():
    s = cuda_transfer.Staging(PIECE)
    grid = np.arange(5 * 37, dtype=np.float64).reshape(37, 5)
    dev = gpu.as_device(grid)
    np.testing.assert_array_equal(s.to_host(dev), grid)
    np.testing.assert_array_equal(s.to_host(dev[:, 3]), grid[:, 3])  # strided: one plain copy
    with pytest.raises(ValueError, match="shape"):
        s.to_host(dev, np.empty(37 * 5))


@pytest.mark.parametrize("n", [1, 37, 1_007])
def test_compute_labels_through_pieces_and_blocks_equals_cpu(tiny, n):
    df = tricky_series(max(n, 200), seed=n).iloc[:n]
    rows = 300
    tiny(df, ALL, ROLLING, rows)
    before = cuda_transfer.for_thread(PIECE).pieces
    got = compute_labels(df, ALL, ROLLING, backend="cuda", output="arrow")
    want = compute_labels(df, ALL, ROLLING, backend="cpu", output="arrow")
    blocks = blocks_of(n, ALL, ROLLING, rows)
    if n == 1_007:
        assert len(blocks) >= 3 and got.column("mfe").num_chunks == len(blocks)
        assert (want.column("tb_flags").to_numpy() & 3).any()  # gaps and ambiguous bars
    # Every block's four price columns crossed in pieces of 3 rows.
    pieces = cuda_transfer.for_thread(PIECE).pieces - before
    assert pieces >= sum(4 * -(-(hi - lo) // 3) for lo, _, _, hi in blocks)
    assert_same_tables(want, got)


def test_ewm_sigma_in_blocks_within_the_chunking_contract(tiny):
    # The ewm's look-back leaves out weights below 1e-18: floats within the
    # contract's 1e-9, integers equal (this series has no row within 1e-9
    # of a barrier).
    df = tricky_series(600, seed=21)
    params = {"enhanced_triple_barrier": {"horizon": 15, "vol_span": 5},
              "vol_scaled_return": {"horizons": [3], "vol_span": 5}, "mfe_mae": {"horizon": 9}}
    tiny(df, ALL, params, 250)
    assert len(blocks_of(len(df), ALL, params, 250)) >= 3
    got = compute_labels(df, ALL, params, backend="cuda", output="arrow")
    want = compute_labels(df, ALL, params, backend="cpu", output="arrow")
    assert got.column_names == want.column_names
    for name in want.column_names:
        x = want.column(name).to_numpy(zero_copy_only=False).astype(float)
        y = got.column(name).to_numpy(zero_copy_only=False).astype(float)
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=name)
        if pa.types.is_floating(want.column(name).type):
            np.testing.assert_allclose(y, x, rtol=1e-9, atol=0, equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(y, x, err_msg=name)


def test_sides_finer_candles_and_weights_in_blocks(tiny):
    from strategies import finer_candles

    df = tricky_series(300, seed=13)
    c = {k: df[k].to_numpy() for k in df.columns}
    df["side"] = np.random.default_rng(3).choice(np.array([1.0, -1.0, 0.0, np.nan]), size=len(df),
                                                 p=[0.4, 0.4, 0.1, 0.1])
    finer = pd.DataFrame(finer_candles(c, 5, p_cover=0.8))
    labels = ["enhanced_triple_barrier", "fixed_horizon", "trend_scanning"]
    params = {"enhanced_triple_barrier": {"horizon": 12, "pt": 1.5, "sl": 0.7, "vertical": "sign",
                                          "vol": "rolling", "vol_span": 10, "weights": True,
                                          "resolve_with": "M1", "side": "column"},
              "fixed_horizon": {"horizon": 7, "threshold": 0.5, "vol": "rolling", "vol_span": 10},
              "trend_scanning": {"min_window": 3, "max_window": 20}}
    rows = 110
    tiny(df, labels, params, rows)
    assert len(blocks_of(len(df), labels, params, rows)) >= 3
    got = compute_labels(df, labels, params, backend="cuda", finer=finer, output="arrow")
    want = compute_labels(df, labels, params, backend="cpu", finer=finer, output="arrow")
    flags = want.column("tb_flags").to_numpy()
    assert (flags & 32).any() and (flags & 16).any()   # no-side rows, bars resolved from finer
    assert want.column("tb_uniqueness").null_count < want.num_rows
    assert_same_tables(want, got)


def test_barrier_grid_lists_in_blocks(tiny):
    df = tricky_series(160, seed=17)
    params = {"barrier_grid": {"pts": [2.0, 0.5], "sls": [1.0, 3.0], "horizons": [9, 4],
                               "vol": "rolling", "vol_span": 10}}
    tiny(df, "barrier_grid", params, 60)
    assert len(blocks_of(len(df), ["barrier_grid"], params, 60)) >= 3
    assert_same_tables(compute_labels(df, "barrier_grid", params, backend="cpu", output="arrow"),
                       compute_labels(df, "barrier_grid", params, backend="cuda", output="arrow"))


def test_the_default_budget_comes_from_the_free_device_memory(monkeypatch):
    monkeypatch.setattr(staging, "DEVICE_BUDGET", None)
    monkeypatch.setattr(cuda_transfer, "free_bytes", lambda: 2 * 200 * 10_000)
    df = tricky_series(120, seed=2)
    params = {"mfe_mae": {"horizon": 5}}
    # DEVICE_SHARE (a half) of 4 MB: 2 MB, at the call's bytes a row.
    from gpubackfill.candles import frames

    per_row = staging.device_bytes_per_row(frames.to_series(df), resolve_labels("mfe_mae", params))
    assert staging.DEVICE_SHARE == 0.5 and per_row < 200
    one = compute_labels(df, "mfe_mae", params, backend="cuda", output="arrow")
    assert one.column("mfe").num_chunks == 1
    monkeypatch.setattr(cuda_transfer, "free_bytes", lambda: 2 * 40 * per_row)
    split = compute_labels(df, "mfe_mae", params, backend="cuda", output="arrow")
    assert split.column("mfe").num_chunks == 4  # 40 rows a block: 35 own + 5 ahead
    assert_same_tables(one, split)


def test_compute_series_takes_a_budget_and_a_piece_size_for_one_call():
    from gpubackfill.candles import frames
    from gpubackfill.compute import compute_series

    df = tricky_series(150, seed=8)
    resolved = resolve_labels("mfe_mae", {"mfe_mae": {"horizon": 6}})
    series = frames.to_series(df)
    per_row = staging.device_bytes_per_row(series, resolved)
    piece = 40  # 5 float64s: a size no other test uses, so its Staging is this call's alone
    got = compute_series(series, resolved, gpu, device_budget=56 * per_row, piece_bytes=piece)
    assert got.column("mfe").num_chunks == 3  # 50 own rows and 6 ahead a block
    blocks = staging.row_blocks(len(df), 56, 0, 6)
    inputs = sum(3 * -(-(hi - lo) // 5) for lo, _, _, hi in blocks)  # high, low, close
    assert cuda_transfer.for_thread(piece).pieces > inputs  # and the outputs back
    want = compute_labels(df, "mfe_mae", {"mfe_mae": {"horizon": 6}}, backend="cpu", output="arrow")
    assert_same_tables(want, got)
