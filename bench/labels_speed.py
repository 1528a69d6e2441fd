"""Throughput, horizon scaling, memory and pandas comparison of ``compute_labels``.

What it measures (every time is the MEDIAN of ``--repeats`` calls, taken
after a warm-up call on a small input so numba compilation / cache loading
is excluded):

1. Throughput, per size (default 1M and 10M random-walk candles passed as a
   pyarrow Table to ``gpubackfill.compute_labels``, so validation and Arrow
   conversion are included): candles/s and candles/min for
   ``enhanced_triple_barrier`` (horizon 60), ``vol_scaled_return`` (default
   horizons), ``mfe_mae`` (horizon 60), and all three in one call.
   Peak memory of the all-three call: in a fresh subprocess per size, the
   peak RSS (Linux VmHWM, reset just before the call through
   /proc/self/clear_refs; a 2 ms psutil sampling thread where that is not
   available) minus the RSS before the call, divided by the input table's
   plus the output table's ``nbytes``.
1b. Allocation, per size: the all-three call under glibc's default and
   after ``keep_freed_memory()``, with the label columns allocated as
   before (numba's ``np.empty`` in the kernels), as now (Arrow's mimalloc
   pool, ``gpubackfill.compute.allocator``) and from Arrow's jemalloc pool, each
   combination in a fresh subprocess of its own; median time, CPU seconds
   (which other load disturbs less) and minor page faults per call.  On the
   largest size, without keep_freed_memory(), also the pooled call after
   2 s idle (the pool hands pages back to the system after a while).
2. Horizon scaling of the triple barrier: pt = sl = 50 (barriers almost
   never touched, so whole windows are searched) at horizon 10 and 1000 on
   the first size; time per call and t(1000) / t(10), through
   ``compute_labels`` and for the kernel alone (sigma precomputed).
3. The plain-pandas reference (``bench/pandas_reference.py``) on a random
   subsample of events of the first size (horizon 60, default pt/sl, sigma
   from the same ewm span 100): events/s and compute_labels' speed-up per
   candle.  The two are also compared on that subsample; any mismatch is
   counted and classified as "near a barrier" (some open/high/low in the
   window within 1e-9 relative of a barrier) or not.
4. A summary of the targets with PASS / MISS.

Run from the repository root::

    python bench/kernels.py                       # 1M and 10M candles, 5 repeats
    python bench/kernels.py --sizes 1e6 --repeats 3
    python bench/kernels.py --quick               # tiny sizes, a few seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
import pandas_reference as _ref  # bench/pandas_reference.py: a script's folder is first on sys.path
import pyarrow as pa
import report as _report  # bench/report.py

cpu_model, human, load_average, mib = _report.cpu_model, _report.human, _report.load_average, _report.mib
print_table, size_name, _status_kb = _report.print_table, _report.size_name, _report._status_kb
RssSampler, _reset_peak_rss, verdict = _report.RssSampler, _report.reset_peak_rss, _report.verdict

import gpubackfill  # noqa: E402
from gpubackfill import labels as registry  # noqa: E402
from gpubackfill.candles.frames import to_series, validate  # noqa: E402
from gpubackfill.compute import (  # noqa: E402
    allocator,
    backends,
    compute_series,  # noqa: E402
)
from gpubackfill.labels.volatility import compute_sigma  # noqa: E402

sigma_pandas, triple_barrier_pandas = _ref.sigma_pandas, _ref.triple_barrier_pandas

TB = "enhanced_triple_barrier"
VSR = "vol_scaled_return"
MFE = "mfe_mae"
HORIZON = 60
VOL_SPAN = 100  # the default of VOL_PARAMS; the pandas sigma uses the same span

# name -> (labels, params) of each throughput configuration
CONFIGS: dict[str, tuple[list[str], dict[str, dict[str, Any]]]] = {
    TB: ([TB], {TB: {"horizon": HORIZON}}),
    VSR: ([VSR], {}),
    MFE: ([MFE], {MFE: {"horizon": HORIZON}}),
    "all three": ([TB, VSR, MFE], {TB: {"horizon": HORIZON}, MFE: {"horizon": HORIZON}}),
}
ALL = "all three"

TARGET_PER_MIN = 1e9
TARGET_HORIZON_RATIO = 4.0
TARGET_SPEEDUP = 10_000.0
TARGET_MEMORY_RATIO = 2.0
NEAR_BARRIER_REL = 1e-9


# ---------------------------------------------------------------------------
# input data


def make_candles(n: int, seed: int = 12345) -> pa.Table:
    """Valid random-walk OHLCV candles at 60 s steps, as a pyarrow Table."""
    rng = np.random.default_rng(seed)
    close = np.exp(np.cumsum(rng.normal(0.0, 1e-3, n)))
    open_ = np.empty(n)
    open_[0] = 1.0
    open_[1:] = close[:-1]
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 5e-4, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 5e-4, n)))
    volume = rng.gamma(2.0, 50.0, n)
    ts = np.int64(1_600_000_000_000) + np.arange(n, dtype=np.int64) * 60_000
    return pa.table({"ts": ts, "open": open_, "high": high, "low": low,
                     "close": close, "volume": volume})


def run_config(table: pa.Table, name: str) -> pa.Table:
    labels, params = CONFIGS[name]
    return gpubackfill.compute_labels(table, labels, params)


def warm_up() -> None:
    """Compile (or load from cache) every kernel on a small input."""
    small = make_candles(5_000, seed=1)
    for name in CONFIGS:
        run_config(small, name)
    gpubackfill.compute_labels(small, TB, {TB: {"horizon": 1000, "pt": 50, "sl": 50}})


# ---------------------------------------------------------------------------
# measurement helpers


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(median, min) wall time of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        del out
    return statistics.median(times), min(times)


def _release_free_memory() -> None:
    """Hand memory that allocators keep for reuse back to the OS, so that the
    call cannot hide part of its footprint in pages freed before it."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    if allocator.output_pool() is not None:
        allocator.output_pool().release_unused()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_child(n: int, seed: int) -> None:
    """Body of the per-size subprocess: one all-three call, peak RSS as JSON."""
    import psutil

    table = make_candles(n, seed)
    warm_up()
    _release_free_memory()
    proc = psutil.Process()
    if _reset_peak_rss():
        method = "VmHWM (clear_refs)"
        before = _status_kb("VmRSS") * 1024
        out = run_config(table, ALL)
        peak = _status_kb("VmHWM") * 1024
    else:
        method = "psutil 2 ms sampling"
        before = proc.memory_info().rss
        with RssSampler(0.002) as sampler:
            out = run_config(table, ALL)
        peak = sampler.peak
    print(json.dumps({"n": n, "method": method, "rss_before": before, "peak": peak,
                      "in_bytes": table.nbytes, "out_bytes": out.nbytes}))


ALLOCATOR = "keep"


def measure_memory(n: int, seed: int) -> dict[str, Any]:
    """Run ``memory_child`` in a fresh interpreter and parse its result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(n),
           "--seed", str(seed), "--allocator", ALLOCATOR]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory subprocess failed ({res.returncode}):\n{res.stderr}")
    m = json.loads(res.stdout.strip().splitlines()[-1])
    m["increase"] = m["peak"] - m["rss_before"]
    m["ratio"] = m["increase"] / (m["in_bytes"] + m["out_bytes"])
    return m


# ---------------------------------------------------------------------------
# 1b. where the label columns' memory comes from

IDLE_S = 2.0


@numba.njit
def _nrt_bytes(nbytes: int) -> np.ndarray:
    return np.empty(nbytes, np.uint8)


def nrt_empty(shape: int | tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
    """Memory as the kernels allocated it before they took ``empty=``: numba's
    ``np.empty`` (plain malloc; numpy's own ``np.empty`` differs, it asks for
    transparent huge pages)."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    return _nrt_bytes(int(np.prod(shape)) * dtype.itemsize).view(dtype).reshape(shape)


# label columns' policy -> (row name, factory of the arrays); each runs in a
# fresh process of its own: in one process the pools' states interfere.
POLICIES: dict[str, tuple[str, Callable[[], Callable[..., np.ndarray]]]] = {
    "before": ("numba np.empty (before)", lambda: nrt_empty),
    "now": ("Arrow mimalloc pool (now)", lambda: allocator.empty),
    "jemalloc": ("Arrow jemalloc pool", lambda: allocator.empty_from(pa.jemalloc_memory_pool())),
    "now-idle": (f"Arrow mimalloc pool, {IDLE_S:g} s idle before each", lambda: allocator.empty),
}


def run_all_three(table: pa.Table, empty: Callable[..., np.ndarray]) -> pa.Table:
    """``compute_labels(table, all three)`` with the label columns from ``empty``."""
    labels, params = CONFIGS[ALL]
    series = validate(to_series(table))
    return compute_series(series, registry.resolve(labels, params), backends.select("cpu").kernels,
                          empty=empty)


def _timed_call(fn: Callable[[], Any]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of all threads, minor page faults) of one
    call, the result dropped after."""
    import resource

    gc.collect()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu = time.process_time()
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    del out
    return elapsed, cpu, faults


def allocation_child(policy: str, sizes: list[int], repeats: int, seed: int) -> None:
    """Body of a 1b subprocess: one policy's calls per size, as JSON."""
    empty = POLICIES[policy][1]()
    run_all_three(make_candles(5_000, seed=1), empty)  # compile / load the kernels
    idle = policy.endswith("-idle")
    rows = []
    for n in sizes[-1:] if idle else sizes:
        table = make_candles(n, seed)
        calls = []
        for _ in range(repeats):
            if idle:
                time.sleep(IDLE_S)
            calls.append(_timed_call(lambda: run_all_three(table, empty)))
        rows.append({"n": n, "times": [c[0] for c in calls], "cpu": [c[1] for c in calls],
                     "faults": [c[2] for c in calls]})
    print(json.dumps({"rows": rows}))


def bench_allocation(sizes: list[int], repeats: int, seed: int) -> dict[tuple[int, str, str], float]:
    """Median seconds per (size, process allocator, policy); prints the table."""
    runs = [("default", "before"), ("default", "now"), ("keep", "before"), ("keep", "now"),
            ("default", "jemalloc"), ("keep", "jemalloc"), ("default", "now-idle")]
    parsed = []
    for process, policy in runs:
        if policy == "jemalloc" and "jemalloc" not in pa.supported_memory_backends():
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--allocation-child", policy,
               "--sizes", ",".join(str(n) for n in sizes), "--repeats", str(repeats),
               "--seed", str(seed), "--allocator", process]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"allocation subprocess failed ({res.returncode}):\n{res.stderr}")
        parsed += [(process, policy, row)
                   for row in json.loads(res.stdout.strip().splitlines()[-1])["rows"]]
    results: dict[tuple[int, str, str], float] = {}
    rows = []
    for n in sizes:
        for process, policy, row in parsed:
            if row["n"] != n:
                continue
            med = statistics.median(row["times"])
            results[(n, process, policy)] = med
            rows.append([size_name(n),
                         "glibc default" if process == "default" else "keep_freed_memory()",
                         POLICIES[policy][0], f"{med:.4f}", f"{min(row['times']):.4f}",
                         human(n / med * 60), f"{statistics.median(row['cpu']):.4f}",
                         f"{statistics.median(row['faults']):,.0f}"])
    print_table(["candles", "process allocator", "label columns", "median s", "min s",
                 "candles/min", "CPU s", "page faults"], rows,
                title="1b. Allocation: the all-three call, one fresh process per row; label columns "
                      "from numba's np.empty (before), Arrow's mimalloc pool (now) or its jemalloc "
                      "pool; per call: CPU s of all threads and minor page faults (medians)")
    return results


# ---------------------------------------------------------------------------
# formatting


# ---------------------------------------------------------------------------
# header


def print_header(args: argparse.Namespace) -> None:
    import numba
    import psutil

    cores = os.cpu_count()
    physical = psutil.cpu_count(logical=False)
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "(not initialised)"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    print("gpubackfill kernel benchmark")
    print(f"command   : {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine   : {cpu_model()}; {cores} logical cores ({physical} physical, "
          f"{affinity} usable); {psutil.virtual_memory().total / 2**30:.1f} GiB RAM; "
          f"{platform.system()} {platform.release()}")
    print(f"python    : {platform.python_version()} ({platform.python_implementation()})")
    print(f"numba     : {numba.__version__}; get_num_threads() = {numba.get_num_threads()}; "
          f"threading layer = {layer}")
    print(f"libraries : numpy {np.__version__}, pyarrow {pa.__version__}, pandas {pd.__version__}, "
          f"gpubackfill {gpubackfill.__version__}")
    print(f"load avg  : {load_average()} (1/5/15 min at start; other processes on these "
          f"{cores} cores slow every number below)")
    print(f"settings  : sizes = {', '.join(size_name(n) for n in args.sizes)}; "
          f"repeats = {args.repeats} (median reported); pandas events = {args.events}"
          f"{'; QUICK mode' if args.quick else ''}")
    policy = (" (gpubackfill.keep_freed_memory(): freed memory reused, not faulted in again)"
              if args.allocator == "keep" else " (glibc default)")
    print(f"allocator : {args.allocator}{policy}")


# ---------------------------------------------------------------------------
# 1. throughput and memory


def bench_throughput(tables: dict[int, pa.Table], repeats: int) -> dict[tuple[int, str], float]:
    """Median seconds per (size, config); prints the throughput table."""
    times: dict[tuple[int, str], float] = {}
    rows = []
    for n, table in tables.items():
        for name in CONFIGS:
            med, best = median_time(lambda: run_config(table, name), repeats)
            times[(n, name)] = med
            rows.append([size_name(n), name, f"{med:.4f}", f"{best:.4f}",
                         human(n / med), human(n / med * 60)])
    print_table(["candles", "labels", "median s", "min s", "candles/s", "candles/min"], rows,
                title="1. Throughput through compute_labels (pyarrow Table in; validation + "
                      "Arrow output included; tb/mfe horizon 60, vsr horizons 1,5,20)")
    return times


def bench_memory(sizes: list[int], seed: int) -> dict[int, dict[str, Any]]:
    results = {n: measure_memory(n, seed) for n in sizes}
    rows = [[size_name(n), mib(m["in_bytes"]), mib(m["out_bytes"]), mib(m["rss_before"]),
             mib(m["peak"]), mib(m["increase"]), f"{m['ratio']:.2f}"]
            for n, m in results.items()]
    method = ", ".join(sorted({m["method"] for m in results.values()}))
    print_table(["candles", "input MiB", "output MiB", "RSS before MiB", "peak RSS MiB",
                 "increase MiB", "ratio"], rows,
                title=f"   Peak memory of the all-three call (fresh subprocess per size; {method}); "
                      "ratio = increase / (input + output)")
    return results


# ---------------------------------------------------------------------------
# 2. horizon scaling


def bench_horizon(table: pa.Table, repeats: int) -> dict[str, float]:
    n = table.num_rows
    kern = backends.select("cpu").kernels
    close = np.ascontiguousarray(table.column("close").to_numpy())
    cols = {c: np.ascontiguousarray(table.column(c).to_numpy()) for c in ("open", "high", "low")}
    sigma = compute_sigma(kern, close, "ewm", VOL_SPAN)
    t_api: dict[int, float] = {}
    t_kernel: dict[int, float] = {}
    for h in (10, 1000):
        params = {TB: {"horizon": h, "pt": 50.0, "sl": 50.0}}
        t_api[h], _ = median_time(lambda: gpubackfill.compute_labels(table, TB, params), repeats)
        t_kernel[h], _ = median_time(
            lambda: kern.triple_barrier(cols["open"], cols["high"], cols["low"], close, sigma,
                                        h, 50.0, 50.0, 0, 0, 0.0), repeats)
    rows = [[f"horizon {h}", f"{t_api[h]:.4f}", human(n / t_api[h]), f"{t_kernel[h]:.4f}",
             human(n / t_kernel[h])] for h in (10, 1000)]
    ratio_api = t_api[1000] / t_api[10]
    ratio_kernel = t_kernel[1000] / t_kernel[10]
    rows.append(["t(1000)/t(10)", f"{ratio_api:.2f}x", "", f"{ratio_kernel:.2f}x", ""])
    print_table(["", "compute_labels s", "candles/s", "kernel only s", "candles/s"], rows,
                title=f"2. Horizon scaling of {TB}, pt = sl = 50, {size_name(n)} candles")
    return {"api": ratio_api, "kernel": ratio_kernel}


# ---------------------------------------------------------------------------
# 3. pandas reference


def pick_events(n: int, count: int, seed: int) -> np.ndarray:
    """Sorted row positions: a random sample plus the first and last 5 rows
    (NO_VOL and INCOMPLETE cases)."""
    rng = np.random.default_rng(seed + 1)
    edges = np.r_[0:min(5, n), max(0, n - 5):n]
    rest = max(0, min(count, n) - len(np.unique(edges)))
    sample = rng.choice(n, size=rest, replace=False)
    return np.unique(np.r_[edges, sample])


def near_barrier(df: pd.DataFrame, pos: int, sigma: float, horizon: int) -> bool:
    """Whether an open/high/low of t's window is within 1e-9 relative of a barrier."""
    if not np.isfinite(sigma) or sigma <= 0:
        return False
    c0 = df["close"].iat[pos]
    upper, lower = c0 * (1 + sigma), c0 * (1 - sigma)
    window = df.iloc[pos + 1: min(pos + horizon, len(df) - 1) + 1]
    prices = window[["open", "high", "low"]].to_numpy().ravel()
    if prices.size == 0:
        return False
    dist = np.minimum(np.abs(prices / upper - 1), np.abs(prices / lower - 1))
    return bool(dist.min() <= NEAR_BARRIER_REL)


def compare_with_pandas(df: pd.DataFrame, events: np.ndarray, ref: pd.DataFrame,
                        ours: pa.Table, sigma_ref: np.ndarray) -> dict[str, Any]:
    """Row-by-row comparison on the events; returns mismatch counts."""
    mismatched = np.zeros(len(events), dtype=bool)
    per_column: dict[str, int] = {}
    for col in ("tb_label", "tb_barrier", "tb_exit_bars", "tb_exit_return", "tb_flags"):
        arr = ours.column(col).take(pa.array(events)).combine_chunks()
        our_null = arr.is_null().to_numpy(zero_copy_only=False)
        our_val = arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
        ref_val = ref[col].to_numpy(dtype=np.float64)
        ref_null = np.isnan(ref_val)
        bad = our_null != ref_null
        both = ~our_null & ~ref_null
        if col == "tb_exit_return":
            close_enough = np.isclose(our_val, ref_val, rtol=NEAR_BARRIER_REL, atol=0.0)
            bad |= both & ~close_enough
        else:
            bad |= both & (our_val != ref_val)
        per_column[col] = int(bad.sum())
        mismatched |= bad
    idx = np.flatnonzero(mismatched)
    near = sum(near_barrier(df, int(events[k]), sigma_ref[events[k]], HORIZON) for k in idx)
    return {"rows": len(events), "mismatches": len(idx), "near_barrier": int(near),
            "unexplained": len(idx) - int(near), "per_column": per_column,
            "examples": [int(events[k]) for k in idx[:5]]}


def bench_pandas(table: pa.Table, tb_rate: float, events_count: int, repeats: int,
                 seed: int) -> dict[str, Any]:
    n = table.num_rows
    df = table.to_pandas().set_index("ts")
    sigma = sigma_pandas(df["close"], span=VOL_SPAN)
    events = pick_events(n, events_count, seed)
    event_ts = df.index[events]
    kwargs = dict(events=event_ts, horizon=HORIZON)

    ref = triple_barrier_pandas(df, sigma, **kwargs)  # also the run that is verified
    med, best = median_time(lambda: triple_barrier_pandas(df, sigma, **kwargs),
                            max(1, min(repeats, 3)))
    rate = len(events) / med
    speedup = tb_rate / rate

    ours = gpubackfill.compute_labels(table, TB, {TB: {"horizon": HORIZON}})
    cmp = compare_with_pandas(df, events, ref, ours, sigma.to_numpy())

    kern_sigma = compute_sigma(backends.select("cpu").kernels,
                               np.ascontiguousarray(df["close"].to_numpy()), "ewm", VOL_SPAN)
    s_ref, s_our = sigma.to_numpy()[events], kern_sigma[events]
    finite = np.isfinite(s_ref) & np.isfinite(s_our)
    sigma_rel = float(np.max(np.abs(s_our[finite] / s_ref[finite] - 1))) if finite.any() else 0.0
    sigma_nan_agree = bool(np.array_equal(np.isnan(s_ref), np.isnan(s_our)))

    rows = [
        ["events (random sample + first/last 5 rows)", f"{len(events):,} of {size_name(n)} candles"],
        ["pandas median s (min s)", f"{med:.3f} ({best:.3f}), {max(1, min(repeats, 3))} repeats"],
        ["pandas events/s", f"{rate:,.1f}"],
        [f"compute_labels {TB} candles/s", f"{human(tb_rate)}"],
        ["speed-up per candle", f"{speedup:,.0f}x"],
        ["sigma max rel. diff (pandas ewm vs kernel)", f"{sigma_rel:.2e}; NaN positions equal: "
                                                       f"{sigma_nan_agree}"],
        ["rows compared", f"{cmp['rows']:,}"],
        ["mismatching rows", f"{cmp['mismatches']}"],
        ["  of which a price is within 1e-9 of a barrier", f"{cmp['near_barrier']}"],
        ["  unexplained", f"{cmp['unexplained']}"],
        ["mismatches per column", ", ".join(f"{k}={v}" for k, v in cmp["per_column"].items())],
    ]
    if cmp["mismatches"]:
        rows.append(["first mismatching rows", ", ".join(map(str, cmp["examples"]))])
    print_table(["", "value"], rows,
                title=f"3. pandas reference (bench/pandas_reference.py) vs compute_labels, "
                      f"{TB} horizon {HORIZON}, pt = sl = 1, ewm span {VOL_SPAN}")
    return {"rate": rate, "speedup": speedup, **cmp}


# ---------------------------------------------------------------------------
# 4. summary


def print_summary(args: argparse.Namespace, times: dict[tuple[int, str], float],
                  memory: dict[int, dict[str, Any]], horizon: dict[str, float],
                  pandas_res: dict[str, Any],
                  allocation: dict[tuple[int, str, str], float]) -> None:
    q = args.quick
    big = [n for n in args.sizes if n >= 10_000_000]
    if big:
        n = max(big)
        per_min = n / times[(n, ALL)] * 60
        tput = [f"all three at {size_name(n)} candles/min", f">= {human(TARGET_PER_MIN)}",
                human(per_min), verdict(per_min >= TARGET_PER_MIN, q)]
        plain = n / allocation[(n, "default", "now")] * 60
        tput_plain = ["  the same, no keep_freed_memory() (1b)", f">= {human(TARGET_PER_MIN)}",
                      human(plain), verdict(plain >= TARGET_PER_MIN, q)]
    else:
        n = max(args.sizes)
        per_min = n / times[(n, ALL)] * 60
        tput = [f"all three candles/min (at {size_name(n)})", f">= {human(TARGET_PER_MIN)} at 10M",
                human(per_min), verdict(None, q, "no size >= 10M run")]
        plain = n / allocation[(n, "default", "now")] * 60
        tput_plain = ["  the same, no keep_freed_memory() (1b)", f">= {human(TARGET_PER_MIN)} at 10M",
                      human(plain), verdict(None, q, "no size >= 10M run")]
    worst = max(memory.values(), key=lambda m: m["ratio"])
    rows = [
        tput,
        tput_plain,
        ["tb horizon t(1000)/t(10), compute_labels", f"<= {TARGET_HORIZON_RATIO:g}x",
         f"{horizon['api']:.2f}x", verdict(horizon["api"] <= TARGET_HORIZON_RATIO, q)],
        ["tb horizon t(1000)/t(10), kernel only", f"<= {TARGET_HORIZON_RATIO:g}x",
         f"{horizon['kernel']:.2f}x", verdict(horizon["kernel"] <= TARGET_HORIZON_RATIO, q)],
        ["tb speed-up over pandas, per candle", f">= {TARGET_SPEEDUP:,.0f}x",
         f"{pandas_res['speedup']:,.0f}x", verdict(pandas_res["speedup"] >= TARGET_SPEEDUP, q)],
        [f"peak memory / (input + output), worst ({size_name(worst['n'])})",
         f"<= ~{TARGET_MEMORY_RATIO:g}x", f"{worst['ratio']:.2f}x",
         verdict(worst["ratio"] <= TARGET_MEMORY_RATIO, q)],
        ["pandas agreement: unexplained mismatches", "0",
         f"{pandas_res['unexplained']} (of {pandas_res['mismatches']} mismatches)",
         "PASS" if pandas_res["unexplained"] == 0 else "MISS"],
    ]
    print_table(["target", "goal", "measured", "result"], rows, title="4. Targets")


# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1e6,1e7",
                   help="comma-separated candle counts (default 1e6,1e7)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    p.add_argument("--events", type=int, default=2000, help="events for the pandas reference")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--quick", action="store_true",
                   help="tiny run (2e5 candles, 200 pandas events, 2 repeats); targets not judged")
    p.add_argument("--allocator", choices=("keep", "default"), default="keep",
                   help="'keep': gpubackfill.keep_freed_memory(), as the engine runs; "
                        "'default': glibc's default (every large array faulted in afresh)")
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--allocation-child", choices=tuple(POLICIES), default=None,
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.events, args.repeats = "2e5", 200, 2
    args.sizes = [int(float(s)) for s in str(args.sizes).split(",") if s.strip()]
    if not args.sizes or min(args.sizes) < 1000:
        p.error("--sizes needs candle counts >= 1000")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.allocator == "keep":
        gpubackfill.keep_freed_memory()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.seed)
        return 0
    if args.allocation_child is not None:
        allocation_child(args.allocation_child, args.sizes, args.repeats, args.seed)
        return 0

    global ALLOCATOR
    ALLOCATOR = args.allocator
    t_start = time.perf_counter()
    warm_up()
    print_header(args)

    tables = {n: make_candles(n, args.seed) for n in args.sizes}
    times = bench_throughput(tables, args.repeats)
    memory = bench_memory(args.sizes, args.seed)
    allocation = bench_allocation(args.sizes, args.repeats, args.seed)

    first = args.sizes[0]
    horizon = bench_horizon(tables[first], args.repeats)
    tb_rate = first / times[(first, TB)]
    pandas_res = bench_pandas(tables[first], tb_rate, args.events, args.repeats, args.seed)

    print_summary(args, times, memory, horizon, pandas_res, allocation)
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.1f} s; "
          f"load avg at end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
