"""The GPU check: correctness and speed of the CUDA kernels on one device.

Prints, in order: the machine; correctness of every CUDA label against the
CPU kernels on fresh random series (every tie rule and vertical mode, several
seeds); kernel throughput with data already on the device (CUDA events,
median of repeats after warm-up) and end to end through ``compute_labels``
(host->device and back included); the device-to-device copy bandwidth
measured in the same run and each kernel's essential bytes/s as a fraction of
it; ``compute_labels(backend="cuda")`` through its pinned staging path
against the copy of its inputs and outputs from and to pinned memory alone,
in one block and in four; the 2-core CPU path on the same machine for the
speed-up; a small job whose tasks are descriptors (each worker reads its own
rows) on a dask-cuda ``LocalCUDACluster`` with an RMM pool where rmm is
installed (a CPU ``LocalCluster`` without dask-cuda); the second and third
label sets (sides, meta-labels and ``barrier_grid``: against the CPU, then
speed).  A summary table comes last.

    bash bench/gpu_check.sh                    # on the GPU machine
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_check.py --simulate   # logic check, no GPU

Needs numba, numba-cuda, numpy, pyarrow, pandas; CuPy and dask-cuda are used
when present.  No Redis, ClickHouse or cuDF.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # the checkout, on a machine where it is not installed

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gpubackfill import compute_labels, keep_freed_memory  # noqa: E402
from gpubackfill.labels import resolve  # noqa: E402

ALL = ["enhanced_triple_barrier", "vol_scaled_return", "mfe_mae"]
H = 60
PARAMS = {"enhanced_triple_barrier": {"horizon": H}, "mfe_mae": {"horizon": H}}
ROWS: list[tuple[str, str, str]] = []  # the summary


def walk(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 1.1 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    open_ = np.r_[close[0], close[:-1]]
    wide = rng.random(n) < 0.02
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 5e-4, n)) + wide * 2e-3)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 5e-4, n)) - wide * 2e-3)
    gap = np.flatnonzero(rng.random(n) < 0.002)
    open_[gap] = close[gap - 1] * (1 + rng.choice([-3e-3, 3e-3], gap.size))
    high = np.maximum(high, open_)
    low = np.minimum(low, open_)
    return pd.DataFrame({"ts": np.arange(n, dtype=np.int64) * 60_000, "open": open_,
                         "high": high, "low": low, "close": close})


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


# ---------------------------------------------------------------------------


def correctness(n: int, seeds: list[int]) -> None:
    rows, total_bad = [], 0
    for seed in seeds:
        df = walk(n, seed)
        # MFE/MAE: every other seed past the direct-scan limit (van Herk runs).
        mfe_h = H if seed % 2 else 300
        for tie in ("sl", "tp", "skip"):
            for vertical in ("zero", "sign"):
                params = {"enhanced_triple_barrier": {"horizon": H, "tie": tie, "vertical": vertical,
                                                      "min_ret": 5e-4, "pt": 1.5},
                          "vol_scaled_return": {"horizons": [1, 5, 20]}, "mfe_mae": {"horizon": mfe_h}}
                a = compute_labels(df, ALL, params, backend="cpu", output="arrow")
                b = compute_labels(df, ALL, params, backend="cuda", output="arrow")
                bad, max_abs, max_rel = 0, 0.0, 0.0
                for name in a.column_names:
                    x = a.column(name).to_numpy(zero_copy_only=False).astype(float)
                    y = b.column(name).to_numpy(zero_copy_only=False).astype(float)
                    nulls = np.isnan(x) != np.isnan(y)
                    both = ~np.isnan(x) & ~np.isnan(y)
                    d = np.abs(x[both] - y[both])
                    if d.size:
                        max_abs = max(max_abs, float(d.max()))
                        max_rel = max(max_rel, float((d / np.maximum(np.abs(x[both]), 1e-300)).max()))
                    if name in ("tb_label", "tb_barrier", "tb_exit_bars", "tb_flags",
                                "mfe_bars", "mae_bars"):
                        bad += int(nulls.sum() + (x[both] != y[both]).sum())
                    else:
                        bad += int(nulls.sum() + (~np.isclose(x[both], y[both], rtol=1e-9, atol=0)).sum())
                total_bad += bad
                rows.append([str(seed), tie, vertical, str(mfe_h), f"{max_abs:.2e}", f"{max_rel:.2e}", str(bad)])
    print_table(f"1. CUDA vs CPU, {n:,} candles per series (integers exact, floats 1e-9 rel)",
                ["seed", "tie", "vertical", "mfe horizon", "max abs diff", "max rel diff", "mismatches"], rows)
    ROWS.append(("label mismatches vs CPU", "0", str(total_bad)))


SECOND = ["enhanced_triple_barrier", "fixed_horizon", "trend_scanning"]
SECOND_PARAMS = {"enhanced_triple_barrier": {"horizon": H, "weights": True, "resolve_with": "S15"},
                 "fixed_horizon": {"horizon": H, "threshold": 1.0},
                 "trend_scanning": {"min_window": 5, "max_window": 50}}


def _finer(df, per_bar: int = 4):
    """Finer candles inside each bar: a path open -> high/low (random order) -> close."""
    rng = np.random.default_rng(0)
    n = len(df)
    step = int(np.median(np.diff(df["ts"].to_numpy())))
    o, h, lo, c = (df[k].to_numpy() for k in ("open", "high", "low", "close"))
    up_first = rng.random(n) < 0.5
    pts = np.stack([o, np.where(up_first, h, lo), np.where(up_first, lo, h), c], axis=1)
    fo, fc = pts[:, :-1].ravel(), pts[:, 1:].ravel()
    ts = (df["ts"].to_numpy()[:, None] + np.arange(per_bar - 1)[None, :] * (step // per_bar)).ravel()
    return pd.DataFrame({"ts": ts, "open": fo, "high": np.maximum(fo, fc), "low": np.minimum(fo, fc),
                         "close": fc})


def second_set(n: int, sizes: list[int], repeats: int) -> None:
    """The second label set: CUDA against CPU (with finer candles), then speed."""
    df = walk(n, 11)
    finer = _finer(df)
    a = compute_labels(df, SECOND, SECOND_PARAMS, backend="cpu", finer=finer, output="arrow")
    b = compute_labels(df, SECOND, SECOND_PARAMS, backend="cuda", finer=finer, output="arrow")
    bad = 0
    for name in a.column_names:
        x = a.column(name).to_numpy(zero_copy_only=False).astype(float)
        y = b.column(name).to_numpy(zero_copy_only=False).astype(float)
        bad += int((np.isnan(x) != np.isnan(y)).sum())
        both = ~np.isnan(x) & ~np.isnan(y)
        tol = 1e-6 if name == "trend_tvalue" else 1e-9
        bad += int((~np.isclose(x[both], y[both], rtol=tol, atol=0)).sum())
    resolved = int(np.count_nonzero(a.column("tb_flags").to_numpy() & 16))
    ROWS.append(("second set: mismatches vs CPU", "0", f"{bad} ({resolved} bars resolved)"))
    rows = []
    for size in sizes:
        big = walk(size, 12)
        for label, params in (("enhanced_triple_barrier", {"enhanced_triple_barrier": {"horizon": H}}),
                              ("enhanced_triple_barrier", {"enhanced_triple_barrier": {"horizon": H,
                                                                                       "weights": True}}),
                              ("fixed_horizon", {"fixed_horizon": SECOND_PARAMS["fixed_horizon"]}),
                              ("trend_scanning", {"trend_scanning": SECOND_PARAMS["trend_scanning"]})):
            what = label + (" + weights" if params[label].get("weights") else "")
            for backend in ("cuda", "cpu"):
                if backend == "cpu" and size > min(sizes):
                    continue
                compute_labels(big.iloc[:10_000], label, params, backend=backend, output="arrow")
                times = []
                for _ in range(max(1, repeats // 2)):
                    t0 = time.perf_counter()
                    compute_labels(big, label, params, backend=backend, output="arrow")
                    times.append(time.perf_counter() - t0)
                t = statistics.median(times)
                rows.append([f"{size:.0e}", what, backend, f"{t * 1e3:.1f}", f"{size / t * 60 / 1e6:,.0f}"])
    print_table("5. second label set through compute_labels (copies and Arrow included)",
                ["candles", "label", "backend", "ms", "M candles/min"], rows)


GRID_PARAMS = {"pts": [1.0, 1.5, 2.0], "sls": [1.0, 1.5, 2.0], "horizons": [12, 24, 48]}


def _mismatches(a, b) -> int:
    """NULLs in different places, integers unequal, floats beyond 1e-9 rel;
    list columns element by element."""
    import pyarrow as pa

    bad = 0
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_list(x.type):
            x, y = x.combine_chunks().flatten(), y.combine_chunks().flatten()
        x = np.asarray(x.cast(pa.float64()).fill_null(np.nan))
        y = np.asarray(y.cast(pa.float64()).fill_null(np.nan))
        bad += int((np.isnan(x) != np.isnan(y)).sum())
        both = ~np.isnan(x) & ~np.isnan(y)
        bad += int((~np.isclose(x[both], y[both], rtol=1e-9, atol=0)).sum())
    return bad


def third_set(n: int, sizes: list[int], repeats: int) -> None:
    """Sides and meta-labels, and barrier_grid: CUDA against CPU, then speed
    (sides against the plain triple barrier; the grid against one triple
    barrier per combination, kernels on device-resident data)."""
    from numba import cuda

    from kernels import cuda as gk

    tb = "enhanced_triple_barrier"
    df = walk(n, 13)
    df["side"] = np.random.default_rng(13).choice(np.array([1.0, -1.0, 0.0]), n, p=[0.45, 0.45, 0.1])
    finer = _finer(df.drop(columns=["side"]))
    side_params = {tb: {"horizon": H, "side": "column", "weights": True, "resolve_with": "S15"}}
    bad = _mismatches(compute_labels(df, tb, side_params, backend="cpu", finer=finer, output="arrow"),
                      compute_labels(df, tb, side_params, backend="cuda", finer=finer, output="arrow"))
    grid = {"barrier_grid": GRID_PARAMS}
    bad_grid = _mismatches(compute_labels(df, "barrier_grid", grid, backend="cpu", output="arrow"),
                           compute_labels(df, "barrier_grid", grid, backend="cuda", output="arrow"))
    ROWS.append(("third set: side/meta mismatches vs CPU", "0", str(bad)))
    ROWS.append(("third set: barrier_grid mismatches vs CPU", "0", str(bad_grid)))
    rows = []
    for size in sizes:
        big = walk(size, 14)
        big["side"] = np.random.default_rng(14).choice(np.array([1.0, -1.0]), size)
        plain = big.drop(columns=["side"])
        for what, frame, params in (("triple barrier", plain, {tb: {"horizon": 24}}),
                                    ("triple barrier, side=column + meta", big,
                                     {tb: {"horizon": 24, "side": "column"}})):
            compute_labels(frame.iloc[:10_000], tb, params, backend="cuda", output="arrow")
            times = []
            for _ in range(max(1, repeats // 2)):
                t0 = time.perf_counter()
                compute_labels(frame, tb, params, backend="cuda", output="arrow")
                times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            rows.append([f"{size:.0e}", what, f"{t * 1e3:.1f}", f"{size / t * 60 / 1e6:,.0f}"])
    # The grid's outputs are 14 bytes per combination and candle (38 GB at
    # 1e8 candles and 27 combinations): timed on the smallest size.  The
    # simulator runs a thread a row in Python, so there the 28 kernels get
    # a tenth of it: they check that the section runs, not its speed.
    size = min(sizes) if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" else max(50, min(sizes) // 10)
    big = walk(size, 15)
    cols = {k: gk.as_device(big[k].to_numpy()) for k in ("open", "high", "low", "close")}
    sigma = gk.ewm_sigma(cols["close"], 100)
    args = (cols["open"], cols["high"], cols["low"], cols["close"], sigma)
    pts, sls = np.array(GRID_PARAMS["pts"]), np.array(GRID_PARAMS["sls"])
    hs = np.array(GRID_PARAMS["horizons"], dtype=np.int64)

    def one_grid():
        gk.barrier_grid(*args, pts, sls, hs, -1, 0, 0.0)
        cuda.synchronize()

    def singles():
        for pt in pts:
            for sl in sls:
                for h in hs:
                    gk.triple_barrier(*args, int(h), float(pt), float(sl), -1, 0, 0.0)
        cuda.synchronize()

    for what, fn in (("barrier_grid 3x3x3 (kernel)", one_grid), ("27 x triple barrier (kernel)", singles)):
        fn()
        times = []
        for _ in range(max(1, repeats // 2)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        rows.append([f"{size:.0e}", what, f"{t * 1e3:.1f}", f"{size / t * 60 / 1e6:,.0f}"])
    ratio = float(rows[-1][2]) / float(rows[-2][2])
    ROWS.append((f"barrier_grid vs 27 triple barriers, GPU kernels ({size:.0e})", ">= 5x", f"{ratio:.1f}x"))
    print_table("6. third set: sides and barrier_grid on the device",
                ["candles", "label", "ms", "M candles/min"], rows)


def device_bandwidth(n: int) -> float:
    from numba import cuda

    src = cuda.to_device(np.ones(n))
    dst = cuda.device_array(n)
    times = []
    for _ in range(5):
        start, stop = cuda.event(), cuda.event()
        start.record()
        dst.copy_to_device(src)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return 2 * n * 8 / statistics.median(times)


def _all_three(d: dict) -> list:
    """Every output array of the three labels, kernels only, from device columns."""
    from kernels import cuda as gk

    sig = gk.ewm_sigma(d["close"], 100)
    return [sig, *gk.triple_barrier(d["open"], d["high"], d["low"], d["close"], sig, H, 1.0, 1.0, -1, 0, 0.0),
            gk.vol_scaled_return(d["close"], sig, np.array([1, 5, 20])),
            *gk.mfe_mae(d["high"], d["low"], d["close"], H)]


def throughput(sizes: list[int], repeats: int, copy_bw: float) -> dict[int, float]:
    from numba import cuda

    from kernels import cuda as gk

    all_rates: dict[int, float] = {}
    rows = []
    for n in sizes:
        df = walk(n, 1)
        d = {c: cuda.to_device(df[c].to_numpy()) for c in ("open", "high", "low", "close")}
        sigma = gk.ewm_sigma(d["close"], 100)
        horizons = np.array([1, 5, 20])
        # (name, call, essential bytes: inputs read + outputs written)
        cases = [
            ("sigma (ewm)", lambda: gk.ewm_sigma(d["close"], 100), n * 16),
            ("enhanced_triple_barrier", lambda: gk.triple_barrier(
                d["open"], d["high"], d["low"], d["close"], sigma, H, 1.0, 1.0, -1, 0, 0.0), n * (40 + 15)),
            ("vol_scaled_return", lambda: gk.vol_scaled_return(d["close"], sigma, horizons), n * (16 + 24)),
            ("mfe_mae", lambda: gk.mfe_mae(d["high"], d["low"], d["close"], H), n * (24 + 24)),
            ("mfe_mae, horizon 300 (runs)", lambda: gk.mfe_mae(d["high"], d["low"], d["close"], 300),
             n * (24 + 24)),
        ]
        kernel_s: dict[str, float] = {}
        for name, call, nbytes in cases:
            call()
            cuda.synchronize()
            times = []
            for _ in range(repeats):
                start, stop = cuda.event(), cuda.event()
                start.record()
                call()
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop) / 1e3)
            t = statistics.median(times)
            kernel_s[name] = t
            frac = nbytes / t / copy_bw
            rows.append([f"{n:.0e}", name, f"{t * 1e3:.2f}", f"{n / t / 1e9:.2f}", f"{frac:.0%}"])
            if n == sizes[-1] and name in ("vol_scaled_return", "mfe_mae"):
                ROWS.append((f"{name} bytes/s vs copy", ">= 50%", f"{frac:.0%}"))
        # sigma is shared by two labels: computed once; the horizon-300 row is extra
        all_t = sum(v for k, v in kernel_s.items() if "300" not in k)
        rows.append([f"{n:.0e}", "all three (sigma once)", f"{all_t * 1e3:.2f}", f"{n / all_t / 1e9:.2f}", ""])
        # End to end: host arrays in, Arrow table out.
        keep_freed_memory()
        compute_labels(df.iloc[:10_000], ALL, PARAMS, backend="cuda", output="arrow")
        e2e = []
        for _ in range(max(1, repeats // 2)):
            t0 = time.perf_counter()
            compute_labels(df, ALL, PARAMS, backend="cuda", output="arrow")
            e2e.append(time.perf_counter() - t0)
        te = statistics.median(e2e)
        rows.append([f"{n:.0e}", "all three, compute_labels (copies, Arrow)", f"{te * 1e3:.1f}",
                     f"{n / te / 1e9:.2f}", ""])
        # Where that call's time goes: the copies each way, timed alone.
        host = {c: df[c].to_numpy() for c in ("open", "high", "low", "close")}
        t0 = time.perf_counter()
        dev = gk.columns_to_device(host)
        cuda.synchronize()
        h2d = time.perf_counter() - t0
        outs = _all_three(dev)
        cuda.synchronize()
        t0 = time.perf_counter()
        back = [gk.to_host(x) for x in outs]
        d2h = time.perf_counter() - t0
        out_bytes = sum(b.nbytes for b in back)
        rest = te - h2d - all_t - d2h
        rows.append([f"{n:.0e}", f"  of which host->device, 4 columns ({32 * n / h2d / 1e9:.0f} GB/s)",
                     f"{h2d * 1e3:.1f}", "", ""])
        rows.append([f"{n:.0e}", f"  of which device->host, outputs ({out_bytes / d2h / 1e9:.0f} GB/s)",
                     f"{d2h * 1e3:.1f}", "", ""])
        rows.append([f"{n:.0e}", "  of which the rest (Arrow, bitmaps, Python)", f"{rest * 1e3:.1f}", "", ""])
        del dev, outs, back
        all_rates[n] = n / all_t

    print_table(f"2. Kernel throughput on the device (CUDA events, median of {repeats}); "
                f"copy bandwidth {copy_bw / 1e9:.0f} GB/s",
                ["candles", "kernel", "ms", "G candles/s", "bytes/s vs copy"], rows)
    return all_rates


def cpu_baseline(n: int, threads: int) -> float:
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    df = walk(n, 1)
    compute_labels(df.iloc[:10_000], ALL, PARAMS, backend="cpu", output="arrow")
    t0 = time.perf_counter()
    compute_labels(df, ALL, PARAMS, backend="cpu", output="arrow")
    t = time.perf_counter() - t0
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    print(f"\n3. CPU path on {threads} cores, {n:,} candles, all three labels: {t:.2f} s = "
          f"{n / t / 1e6:.1f} M candles/s")
    return n / t


def _label_rows(path: str, a: int, b: int, back: int, ahead: int, backend: str):
    """One chunk's labels, computed where the task runs: its rows a..b and
    their halo read there from the series' .npy files under ``path``."""
    from gpubackfill import compute_labels as labels_of

    n = np.load(f"{path}/close.npy", mmap_mode="r").shape[0]
    lo, hi = max(0, a - back), min(n, b + ahead)
    frame = pd.DataFrame({c: np.load(f"{path}/{c}.npy", mmap_mode="r")[lo:hi]
                          for c in ("ts", "open", "high", "low", "close")})
    return labels_of(frame, ALL, PARAMS, backend=backend, output="arrow").slice(a - lo, b - a)


# A task carries its function, a path and five numbers: ~2 KB, far below
# this even at --simulate's 1,500 candles (60 KB of frame); the closure that
# captured the frame shipped a 381 MiB graph on the H200 (bench/RESULTS.md).
TASK_LIMIT = 4 << 10


def dask_cuda_job(n: int, chunks: int) -> None:
    """4 chunks on a LocalCUDACluster (an RMM pool where rmm is installed),
    each task a descriptor: the worker reads its own rows.  Without dask-cuda
    (--simulate) the same job runs on a CPU LocalCluster with backend cpu."""
    import tempfile

    import cloudpickle
    import pyarrow as pa
    from distributed import Client, LocalCluster

    from gpubackfill.labels import halo

    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        gpu, why = False, str(exc)
    else:
        gpu, why = True, ""
    df = walk(n, 3)
    back, ahead = halo(resolve(ALL, PARAMS))
    bounds = np.linspace(0, n, chunks + 1).astype(int)
    backend = "cuda" if gpu else "cpu"
    pool = "none"
    with tempfile.TemporaryDirectory() as path:
        for c in ("ts", "open", "high", "low", "close"):
            np.save(f"{path}/{c}.npy", df[c].to_numpy())
        tasks = [(path, int(a), int(b), back, ahead, backend) for a, b in zip(bounds[:-1], bounds[1:])]
        sizes = [len(cloudpickle.dumps((_label_rows, t))) for t in tasks]
        if gpu:
            kwargs: dict = {"dashboard_address": ":0"}
            try:
                import rmm  # noqa: F401
                from numba import cuda

                total = cuda.current_context().get_memory_info()[1]
                pool = f"{int(total * 0.5) >> 30}GB"
                kwargs.update(rmm_pool_size=pool, rmm_allocator_external_lib_list=["cupy", "numba"])
            except ImportError:
                pool = "none (no rmm)"
            cluster = LocalCUDACluster(**kwargs)
        else:
            cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                   dashboard_address=":0")
        with cluster, Client(cluster) as client:
            t0 = time.perf_counter()
            parts = client.gather([client.submit(_label_rows, *t, pure=False) for t in tasks])
            t = time.perf_counter() - t0
            workers = len(cluster.workers)
    whole = compute_labels(df, ALL, PARAMS, backend="cpu", output="arrow")
    got = pa.concat_tables(parts)
    same = all(np.allclose(got.column(c).to_numpy(zero_copy_only=False).astype(float),
                           whole.column(c).to_numpy(zero_copy_only=False).astype(float),
                           rtol=1e-9, equal_nan=True) for c in whole.column_names)
    where = (f"{workers} GPU worker(s), RMM pool {pool}" if gpu
             else f"a CPU LocalCluster, backend cpu (no dask-cuda: {why})")
    print(f"\n4. dask job: {chunks} chunks of {n:,} candles on {where} in {t:.2f} s; "
          f"tasks of {max(sizes):,} bytes at most (each reads its own rows); equal to the whole-series CPU "
          f"result: {same}")
    ROWS.append(("dask-cuda LocalCUDACluster job" if gpu else "dask job (CPU LocalCluster)",
                 "equal to CPU", str(same)))
    ROWS.append(("dask job: bytes a task in the graph", f"< {TASK_LIMIT >> 10} KiB", f"{max(sizes):,}"))


def staging_check(n: int, repeats: int, device_bw: float, simulate: bool) -> None:
    """compute_labels(backend="cuda") through the staging path against the
    copies alone: its inputs to the device and its outputs back from
    pinned memory (the floor), and through the staging buffers; then the
    same call in 4 row blocks (a device budget of a quarter of the rows
    and their halo)."""
    from gpubackfill.compute import staging
    from gpubackfill.labels import halo
    from kernels import cuda as gk

    if simulate:  # many pieces a column, so the simulator walks that path
        staging.PIECE_BYTES = 1_000
    try:
        _staging_check(n, repeats, device_bw, staging, gk, halo)
    finally:
        staging.PIECE_BYTES = None


def _staging_check(n: int, repeats: int, device_bw: float, staging, gk, halo) -> None:
    df = walk(n, 1)
    inputs = [df[c].to_numpy() for c in ("open", "high", "low", "close")]
    resolved = resolve(ALL, PARAMS)
    out_types = [np.dtype(t.to_pandas_dtype()) for r in resolved for _, t in r.outputs()]
    in_bytes = sum(a.nbytes for a in inputs)
    out_bytes = n * sum(t.itemsize for t in out_types)

    reps = max(1, repeats // 2)
    h2d, d2h, staged, piece = _copies(n, inputs, out_types, reps)
    floor = h2d + d2h
    keep_freed_memory()
    call, one = _median_s(lambda: compute_labels(df, ALL, PARAMS, backend="cuda", output="arrow"), reps)
    per_row = staging.device_bytes_per_row(_series_of(df), resolved)
    back, ahead = halo(resolved)
    quarter = -(-n // 4) + back + ahead
    blocked, blocks, bad = None, 1, 0
    if len(staging.row_blocks(n, quarter, back, ahead)) > 1:  # not where the halo is the series
        staging.DEVICE_BUDGET = per_row * quarter
        try:
            blocked, four = _median_s(lambda: compute_labels(df, ALL, PARAMS, backend="cuda",
                                                             output="arrow"), max(1, reps // 2))
        finally:
            staging.DEVICE_BUDGET = None
        blocks = four.column("mfe").num_chunks
        bad = _mismatches(one, four)
    # MFE/MAE's kernel on device-resident columns, its essential bytes
    # (high, low, close in; two float64 and two int32 out) against both copies.
    d = {c: gk.as_device(df[c].to_numpy()) for c in ("high", "low", "close")}
    mfe = _median_s(lambda: gk.mfe_mae(d["high"], d["low"], d["close"], H), reps)[0]
    mfe_bw = n * 48 / mfe
    gb = 1e9
    rows = [
        ["inputs to the device from pinned memory", f"{h2d * 1e3:.1f}", f"{in_bytes / h2d / gb:.1f}"],
        ["outputs to pinned memory", f"{d2h * 1e3:.1f}", f"{out_bytes / d2h / gb:.1f}"],
        ["the copy, both ways (the floor)", f"{floor * 1e3:.1f}",
         f"{(in_bytes + out_bytes) / floor / gb:.1f}"],
        [f"the same through the staging buffers ({piece:,} B pieces)",
         f"{staged * 1e3:.1f}", f"{(in_bytes + out_bytes) / staged / gb:.1f}"],
        ["compute_labels(backend='cuda'), one block", f"{call * 1e3:.1f}",
         f"{(in_bytes + out_bytes) / call / gb:.1f}"],
        [f"mfe_mae kernel (horizon {H}), on the device: {mfe_bw / device_bw:.0%} of the device's copy",
         f"{mfe * 1e3:.2f}", f"{mfe_bw / gb:.1f}"],
    ]
    if blocked is not None:
        rows.insert(5, [f"compute_labels(backend='cuda'), {blocks} blocks", f"{blocked * 1e3:.1f}",
                        f"{(in_bytes + out_bytes) / blocked / gb:.1f}"])
    print_table(f"7. The staging path at {n:,} candles: {in_bytes / gb:.2f} GB in, {out_bytes / gb:.2f} GB "
                f"out (median of {reps})", ["what", "ms", "GB/s"], rows)
    ROWS.append((f"compute_labels cuda vs its pinned copy ({n:.0e})", "<= 2x", f"{call / floor:.2f}x"))
    if blocked is not None:
        ROWS.append((f"compute_labels cuda, {blocks} blocks vs one: mismatches", "0", str(bad)))
    ROWS.append(("mfe_mae bytes/s vs pinned host copy", "", f"{mfe_bw / ((in_bytes + out_bytes) / floor):.0%}"))


def _median_s(fn, times: int) -> tuple[float, Any]:
    """Median wall time of ``fn`` and the device work it queued, after one
    warm-up call, and what its last call returned."""
    from numba import cuda

    out = fn()
    cuda.synchronize()
    runs = []
    for _ in range(times):
        t0 = time.perf_counter()
        out = fn()
        cuda.synchronize()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), out


def _copies(n: int, inputs: list, out_types: list, reps: int) -> tuple[float, float, float, int]:
    """Seconds to copy ``inputs`` to the device and ``n`` rows of each of
    ``out_types`` back, from and to pinned memory (the floor); both ways
    through this thread's staging buffers; and their piece size."""
    from numba import cuda

    from gpubackfill.compute import allocator, staging
    from kernels import cuda_transfer

    pinned = cuda.pinned_array(n * 8, np.uint8)
    dev_in = [cuda.device_array(n) for _ in inputs]
    dev_out = [cuda.device_array(n, t) for t in out_types]
    np.copyto(pinned[: n * 8].view(np.float64), inputs[0])

    def h2d_pinned():
        for d in dev_in:
            d.copy_to_device(pinned[: n * 8].view(np.float64))

    def d2h_pinned():
        for d in dev_out:
            d.copy_to_host(pinned[: n * d.dtype.itemsize].view(d.dtype))

    s = cuda_transfer.for_thread(staging.PIECE_BYTES or cuda_transfer.PIECE_BYTES)
    hosts = [allocator.empty(n, t) for t in out_types]

    def staged_copies():
        for a, d in zip(inputs, dev_in):
            s.to_device(a, d)
        for d, h in zip(dev_out, hosts):
            s.to_host(d, h)

    return (_median_s(h2d_pinned, reps)[0], _median_s(d2h_pinned, reps)[0],
            _median_s(staged_copies, reps)[0], s.piece_bytes)


def _series_of(df: pd.DataFrame):
    from gpubackfill.candles import frames

    return frames.to_series(df, optional=("open", "high", "low"))


def profile_target(n: int) -> None:
    """Each kernel launched a few times on n candles and nothing else: the
    program ``gpu_check.sh`` runs under Nsight Compute (GPU_CHECK_NCU=1)."""
    from numba import cuda

    df = walk(n, 1)
    d = {c: cuda.to_device(df[c].to_numpy()) for c in ("open", "high", "low", "close")}
    for _ in range(2):
        _all_three(d)
    cuda.synchronize()
    print(f"profile target: every kernel twice on {n:,} candles")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1e7,1e8")
    p.add_argument("--check-size", type=float, default=1e6)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--cpu-threads", type=int, default=2)
    p.add_argument("--simulate", action="store_true",
                   help="tiny sizes for a logic check under NUMBA_ENABLE_CUDASIM=1")
    p.add_argument("--profile-target", type=float, default=0,
                   help="only launch every kernel twice on this many candles (for ncu)")
    args = p.parse_args(argv)
    if args.profile_target:
        profile_target(int(args.profile_target))
        return 0
    if args.simulate:
        args.sizes, args.check_size, args.seeds, args.repeats = "1500", 800, "1", 1
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    t_start = time.perf_counter()
    from numba import cuda

    dev = cuda.get_current_device()
    name = getattr(dev, "name", "CUDA simulator")
    name = name.decode() if isinstance(name, bytes) else name
    print(f"gpubackfill GPU check: {name}, compute capability {dev.compute_capability}; "
          f"host {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"python {platform.python_version()}")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    correctness(int(args.check_size), [int(s) for s in args.seeds.split(",")])
    bw = device_bandwidth(max(sizes))
    rates = throughput(sizes, args.repeats, bw)
    # The simulator runs every GPU thread in Python: a few hundred rows.
    staging_check(400 if args.simulate else max(sizes), args.repeats, bw, args.simulate)
    cpu_rate = cpu_baseline(min(sizes), args.cpu_threads)
    big = max(sizes)
    ROWS.append((f"all three on GPU vs {args.cpu_threads}-core CPU ({big:.0e})", ">= 100x",
                 f"{rates[big] / cpu_rate:.0f}x"))
    dask_cuda_job(min(sizes), 4)
    second_set(int(args.check_size), sizes, args.repeats)
    third_set(int(args.check_size), sizes, args.repeats)
    print_table(f"SUMMARY (total {time.perf_counter() - t_start:.0f} s)", ["check", "target", "measured"],
                [list(r) for r in ROWS])
    return 0


if __name__ == "__main__":
    sys.exit(main())
