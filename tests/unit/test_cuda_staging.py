"""The device staging path: its block plan here, its copies and results
under numba's CUDA simulator (tests/cuda/sim_staging.py, in its own process)."""

from __future__ import annotations

import pytest
import simulator

from gpubackfill import resolve_labels
from gpubackfill.compute import staging


@pytest.mark.parametrize("name", simulator.names("sim_staging"))
def test_staging_under_the_simulator(name):
    res = simulator.run("sim_staging", name)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "failed" not in res.stdout


@pytest.mark.parametrize("n, rows, back, ahead", [
    (0, 10, 3, 2), (1, 10, 3, 2), (10, 10, 3, 2), (11, 10, 3, 2), (1_007, 300, 116, 25),
    (50, 4, 3, 2), (50, 1, 0, 0), (999, 100, 0, 60)])
def test_row_blocks_cover_every_row_once_with_its_halo(n, rows, back, ahead):
    blocks = staging.row_blocks(n, rows, back, ahead)
    own = [(a, b) for _, a, b, _ in blocks]
    assert own[0][0] == 0 and own[-1][1] == n
    assert all(b1 == a2 for (_, b1), (a2, _) in zip(own, own[1:]))
    for lo, a, b, hi in blocks:
        assert lo == max(0, a - back) and hi == min(n, b + ahead) and a < b or n == 0
        # Within the budget, unless the halo alone exceeds it (then never
        # fewer own rows than halo rows).
        assert hi - lo <= rows or b - a >= back + ahead
    if n <= rows:
        assert blocks == [(0, 0, n, n)]


def test_device_bytes_a_row_count_inputs_outputs_sigmas_and_list_elements():
    import numpy as np

    from gpubackfill.labels import Series

    n = 4
    col = np.ones(n)
    ohlc = Series(ts=np.arange(n), open=col, high=col, low=col, close=col)
    mfe = resolve_labels("mfe_mae")
    assert staging.device_bytes_per_row(ohlc, mfe) == 32 + 24 + staging.SCRATCH_BYTES_PER_ROW
    grid = resolve_labels("barrier_grid", {"barrier_grid": {"pts": [1, 2], "sls": [1], "horizons": [5, 9, 12]}})
    # 6 combinations of int8 + int32 + float64 + uint8, one float64 sigma.
    assert staging.device_bytes_per_row(ohlc, grid) == 32 + 6 * 14 + 8 + staging.SCRATCH_BYTES_PER_ROW
    close_only = Series(ts=np.arange(n), open=None, high=None, low=None, close=col)
    two = resolve_labels(["vol_scaled_return", "fixed_horizon"],
                         {"fixed_horizon": {"vol": "rolling"}})
    # vsr: 3 horizons + sigma; fixed_horizon: int8 + float64; sigmas ewm and rolling.
    assert staging.device_bytes_per_row(close_only, two) == (8 + 4 * 8 + 9 + 2 * 8
                                                             + staging.SCRATCH_BYTES_PER_ROW)


def test_a_cuda_chunk_task_is_a_descriptor_whatever_its_candles():
    """What the engine submits to a LocalCUDACluster worker (beside the
    settings) is a ChunkTask: the worker loads its own candles, so the
    graph does not grow with the chunk (gpu_check's dask job shipped the
    frame and its graph was 381 MiB)."""
    import cloudpickle

    from gpubackfill.engine.task import ChunkTask
    from gpubackfill.jobs.result import Segment

    labels = tuple(resolve_labels(["enhanced_triple_barrier", "vol_scaled_return", "mfe_mae"]))

    def task(rows: int) -> ChunkTask:
        return ChunkTask(job_id="j" * 32, index=7, token=3,
                         segments=(Segment(0, 1_600_000_000_000, 1_600_000_000_000 + rows * 60_000, rows),),
                         names={0: ("EURUSD", "M1")}, resolved=labels, label_set="a" * 16, force=False,
                         backend="cuda", max_attempts=3)

    small, large = (len(cloudpickle.dumps(task(rows))) for rows in (1_000, 100_000_000))
    assert large - small <= 8 and large < 4 << 10
