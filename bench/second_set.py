"""The second label set: speed of each new label, against pandas peers
written the way label libraries write them, and the end-to-end cost of
``resolve_with`` on an H1 backfill with M1 candles.

Run from the repository root (``python bench/labels_speed.py --second-set`` runs
the same, after the first set)::

    python bench/second_set.py                  # 10M candles, 3 repeats
    python bench/second_set.py --size 1e6 --quick
    python bench/second_set.py --only 3 --h1-rounds 9   # section 3 alone

What it prints, every time the median of ``--repeats`` calls after a
warm-up (numba compile excluded):

1. candles/min through ``compute_labels`` (pyarrow Table in, validation and
   Arrow output included) for: the triple barrier (horizon 24) without and
   with ``weights=true`` (and the ratio: the target is at most +50%),
   ``fixed_horizon`` (horizon 24, threshold 1), ``trend_scanning`` with
   windows 5..20 and 5..50 (target >= 200M candles/min at 5..50).
2. Peers, on a random subsample of rows (extrapolated per candle): trend
   scanning as mlfinlab's ``trend_scanning_labels`` does it (an OLS per
   window with numpy's least squares), and average uniqueness as mlfinlab's
   ``num_concurrent_events`` + ``_get_average_uniqueness`` do (a pandas
   slice per event).  Both are checked against ``compute_labels`` on the rows
   they computed.  ``ml4t-engineer`` is used too when it is installed.
3. An H1 job (embedded chDB, bundled Redis, a temporary home) of
   ``--h1-years`` years whose M1 candles are ingested too, run without and
   with ``resolve_with="M1"``, alternated for ``--h1-rounds`` rounds after a
   warm-up of each: median wall time (and CPU seconds of the process) of
   each, the ratio of the medians and its range over the rounds (target
   <= 2x), how many M1 candles were read per H1 bar and how long that read
   took.  The temporary home and its Redis are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
sys.path.insert(0, str(BENCH_DIR.parent))

import gpubackfill  # noqa: E402
from gpubackfill import compute_labels  # noqa: E402

TB = "enhanced_triple_barrier"


def candles(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    close = 1.1 * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))
    open_ = np.r_[close[0], close[:-1]]
    wick = np.abs(rng.normal(0, 5e-5, (2, n)))
    return pa.table({"ts": 1_500_000_000_000 + np.arange(n, dtype=np.int64) * 60_000,
                     "open": open_, "high": np.maximum(open_, close) * np.exp(wick[0]),
                     "low": np.minimum(open_, close) * np.exp(-wick[1]), "close": close})


def median_s(fn, repeats: int) -> float:
    fn()  # warm-up: compile, page faults
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def throughput(table: pa.Table, repeats: int) -> dict[str, float]:
    n = table.num_rows
    runs = {
        "triple barrier (H=24)": (TB, {TB: {"horizon": 24}}),
        "triple barrier + weights": (TB, {TB: {"horizon": 24, "weights": True}}),
        "fixed_horizon (h=24, k=1)": ("fixed_horizon", {"fixed_horizon": {"threshold": 1.0}}),
        "trend_scanning 5..20": ("trend_scanning", {}),
        "trend_scanning 5..50": ("trend_scanning", {"trend_scanning": {"max_window": 50}}),
    }
    out = {}
    print(f"\n1. compute_labels on {n:,} candles (median of {repeats})")
    print(f"   {'label':<28} {'seconds':>8} {'M candles/min':>14}")
    for name, (label, params) in runs.items():
        s = median_s(lambda label=label, params=params: compute_labels(table, label, params),
                     repeats)
        out[name] = s
        print(f"   {name:<28} {s:8.3f} {n / s * 60 / 1e6:14.1f}")
    ratio = out["triple barrier + weights"] / out["triple barrier (H=24)"]
    print(f"   weights add {100 * (ratio - 1):.0f}% to the triple barrier (target <= 50%)")
    return out


# -- peers ----------------------------------------------------------------------


def trend_scanning_mlfinlab_style(close: pd.Series, rows: np.ndarray, w_min: int, w_max: int):
    """Per row, per window: OLS with numpy's least squares, t-value from its
    residuals (mlfinlab's ``trend_scanning_labels`` / ``_get_betas``)."""
    y_all = np.log(close.to_numpy())
    out = {}
    for t in rows:
        best = (-1.0, 0.0, 0)
        for L in range(w_min, w_max + 1):
            y = y_all[t:t + L]
            X = np.column_stack([np.ones(L), np.arange(L)])
            beta, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
            if not rss.size or rss[0] <= 0:
                continue
            cov = rss[0] / (L - 2) * np.linalg.inv(X.T @ X)
            tv = beta[1] / np.sqrt(cov[1, 1])
            if abs(tv) > best[0]:
                best = (abs(tv), tv, L)
        out[t] = best[1]
    return out


def uniqueness_mlfinlab_style(index: pd.DatetimeIndex, t1: pd.Series, events: pd.Index):
    """Concurrency by a pandas slice per event, then the mean of 1/c over
    each event's span (mlfinlab's ``num_concurrent_events`` and
    ``_get_average_uniqueness``)."""
    count = pd.Series(0, index=index)
    for t_in, t_out in t1.items():
        count.loc[t_in:t_out] += 1
    # mlfinlab counts the event's own bar; the contract's span starts at i+1.
    count -= pd.Series(index.isin(t1.index).astype(int), index=index)
    out = {}
    for t_in in events:
        t_out = t1[t_in]
        nxt = index[index.get_loc(t_in) + 1]
        out[t_in] = (1.0 / count.loc[nxt:t_out]).mean()
    return out


def peers(table: pa.Table, rows_count: int, repeats: int, seed: int) -> dict[str, float]:
    n = table.num_rows
    df = table.to_pandas()
    rng = np.random.default_rng(seed)
    print(f"\n2. peers on {rows_count:,} random rows of {n:,} (per-candle rate extrapolated)")
    print(f"   {'peer':<44} {'rows/s':>10} {'ours, rows/s':>13} {'speed-up':>9} {'max rel diff':>13}")
    out = {}
    # Trend scanning, windows 5..50.
    rows = np.sort(rng.choice(n - 60, rows_count, replace=False))
    close = df["close"]
    t0 = time.perf_counter()
    ref = trend_scanning_mlfinlab_style(close, rows, 5, 50)
    peer_s = (time.perf_counter() - t0) / rows_count
    ours = compute_labels(table, "trend_scanning", {"trend_scanning": {"max_window": 50}})
    ours_s = median_s(lambda: compute_labels(table, "trend_scanning",
                                             {"trend_scanning": {"max_window": 50}}), repeats) / n
    got = ours.column("trend_tvalue").to_numpy(zero_copy_only=False)[rows]
    want = np.array([ref[t] for t in rows])
    diff = float(np.nanmax(np.abs(got - want) / np.abs(want)))
    out["trend"] = peer_s / ours_s
    print(f"   {'trend scanning 5..50, numpy lstsq per window':<44} {1 / peer_s:10,.0f} "
          f"{1 / ours_s:13,.0f} {peer_s / ours_s:8,.0f}x {diff:13.1e}")
    # Average uniqueness over a contiguous stretch (concurrency needs neighbours).
    m = min(n, rows_count * 20)
    part = table.slice(0, m)
    tb = compute_labels(part, TB, {TB: {"horizon": 24, "weights": True}})
    bars = tb.column("tb_exit_bars").to_numpy(zero_copy_only=False)
    label_ok = ~np.isnan(tb.column("tb_label").to_numpy(zero_copy_only=False).astype(float))
    idx = pd.DatetimeIndex(pd.to_datetime(part.column("ts").to_numpy(), unit="ms"))
    ev = np.flatnonzero(label_ok)
    t1 = pd.Series(idx[ev + bars[ev].astype(int)], index=idx[ev])
    chosen = ev[(ev > 50) & (ev < m - 60)]
    chosen = np.sort(rng.choice(chosen, min(rows_count, chosen.size), replace=False))
    t0 = time.perf_counter()
    ref_u = uniqueness_mlfinlab_style(idx, t1, idx[chosen])
    peer_u = (time.perf_counter() - t0) / chosen.size
    ours_u = median_s(lambda: compute_labels(part, TB, {TB: {"horizon": 24, "weights": True}}),
                      repeats) / m
    got = tb.column("tb_uniqueness").to_numpy(zero_copy_only=False)[chosen]
    want = np.array([ref_u[idx[i]] for i in chosen])
    diff = float(np.nanmax(np.abs(got - want) / want))
    out["uniqueness"] = peer_u / ours_u
    print(f"   {'uniqueness, pandas slice per event':<44} {1 / peer_u:10,.0f} "
          f"{1 / ours_u:13,.0f} {peer_u / ours_u:8,.0f}x {diff:13.1e}")
    print("   (ours: triple barrier and weights together, per candle)")
    try:
        import polars as pl
        from ml4t.engineer.labeling.horizon_labels import trend_scanning_labels
        from ml4t.engineer.labeling.uniqueness import calculate_label_uniqueness
    except ImportError:
        print("   ml4t-engineer: not installed (pip install ml4t-engineer to compare with it)")
        return out
    # ml4t-engineer: scipy's linregress per window on prices (not log prices,
    # and its window range stops one short of max_window), and uniqueness
    # from a numba difference array plus a Python loop over labels that
    # counts the entry bar too.  Speed is compared; the values differ by
    # those definitions, so they are not.
    k = min(n, rows_count * 4)
    frame = pl.DataFrame({"close": df["close"].to_numpy()[:k]})
    t0 = time.perf_counter()
    trend_scanning_labels(frame, min_window=5, max_window=51, price_col="close", group_col=[])
    ml_s = (time.perf_counter() - t0) / k
    print(f"   {'ml4t-engineer trend_scanning_labels 5..50':<44} {1 / ml_s:10,.0f} "
          f"{1 / ours_s:13,.0f} {ml_s / ours_s:8,.0f}x {'(other defs)':>13}")
    starts = ev.astype(np.int64)
    ends = (ev + bars[ev].astype(int)).astype(np.int64)
    calculate_label_uniqueness(starts[:100], ends[:100], m)  # numba warm-up
    t0 = time.perf_counter()
    calculate_label_uniqueness(starts, ends, m)
    ml_u = (time.perf_counter() - t0) / m
    print(f"   {'ml4t-engineer calculate_label_uniqueness':<44} {1 / ml_u:10,.0f} "
          f"{1 / ours_u:13,.0f} {ml_u / ours_u:8,.0f}x {'(other defs)':>13}")
    out["ml4t_trend"], out["ml4t_uniqueness"] = ml_s / ours_s, ml_u / ours_u
    return out


# -- resolve_with end to end -----------------------------------------------------------


def resolve_end_to_end(years: int, seed: int, rounds: int = 5) -> dict[str, float]:
    import shutil

    from gpubackfill.candles.synthetic import generate
    from gpubackfill.config import Settings
    from gpubackfill.service import BackfillService
    from gpubackfill.storage.clickhouse_store import SeriesKey, Store
    from gpubackfill.storage.redis_server import stop_server

    home = tempfile.mkdtemp(prefix="gpb-resolve-")
    svc = BackfillService(Settings.from_env({"GPUBACKFILL_HOME": home}, dotenv=False))
    start, end = "2015-01-01", f"{2015 + years}-01-01"
    m1 = generate("EURUSD", "M1", start, end, seed=seed)
    df = m1.to_pandas()
    df["bar"] = df["ts"] // 3_600_000 * 3_600_000
    h1 = df.groupby("bar").agg(open=("open", "first"), high=("high", "max"), low=("low", "min"),
                               close=("close", "last"), volume=("volume", "sum")).reset_index()
    h1 = pa.Table.from_pandas(h1.rename(columns={"bar": "ts"})[["ts", "open", "high", "low",
                                                                "close", "volume"]],
                              preserve_index=False)
    svc.ingest_table(SeriesKey("EURUSD", "M1"), m1)
    svc.ingest_table(SeriesKey("EURUSD", "H1"), h1)
    read: list[tuple[int, float]] = []
    real = Store.load_bars

    def counting(self, key, starts, bar_ms, *cols):
        t0 = time.perf_counter()
        t = real(self, key, starts, bar_ms, *cols)
        read.append((t.num_rows, time.perf_counter() - t0))
        return t

    Store.load_bars = counting
    variants = (("tie rule", {}), ("resolve_with=M1", {"resolve_with": "M1"}))
    print(f"\n3. H1 job over {years} years ({h1.num_rows:,} H1 bars; {m1.num_rows:,} M1 candles "
          f"stored), embedded store, default chunk size; {rounds} rounds of the two jobs "
          f"alternated after a warm-up of each (load avg {os.getloadavg()[0]:.2f})")
    for _, extra in variants:  # warm-up: numba compile, label tables, caches
        svc.start("EURUSD", "H1", start, end, labels=[TB], params={TB: {"horizon": 24, **extra}},
                  workers=2)
    wall: dict[str, list[float]] = {name: [] for name, _ in variants}
    cpu: dict[str, list[float]] = {name: [] for name, _ in variants}
    finer_s: list[float] = []
    counts: dict[str, tuple[int, int]] = {}
    read.clear()
    for _ in range(rounds):
        for name, extra in variants:
            params = {TB: {"horizon": 24, **extra}}
            before = len(read)
            c0, t0 = time.process_time(), time.perf_counter()
            job = svc.start("EURUSD", "H1", start, end, labels=[TB], params=params, workers=2,
                            force=True)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            if extra:
                finer_s.append(sum(s for _, s in read[before:]))
            s = svc.job(job).model_dump()
            counts[name] = (s["bars_resolved"], s["bars_ambiguous"])
            assert s["status"] == "completed", s["status"]
    Store.load_bars = real
    for name, _ in variants:
        res, amb = counts[name]
        print(f"   {name:<18} {statistics.median(wall[name]):6.3f} s  (CPU {statistics.median(cpu[name]):.3f} s)"
              f"  bars resolved {res:,}, left to the tie {amb:,}")
    per_run = sum(n for n, _ in read) / rounds
    print(f"   M1 candles read per run {per_run:,.0f} ({per_run / h1.num_rows:.2f} per H1 bar, "
          f"{100 * per_run / m1.num_rows:.1f}% of the M1 candles) in "
          f"{1000 * statistics.median(finer_s):.0f} ms (median)")
    pairs = [b / a for a, b in zip(wall["tie rule"], wall["resolve_with=M1"])]
    ratio = statistics.median(wall["resolve_with=M1"]) / statistics.median(wall["tie rule"])
    print(f"   resolve_with costs {ratio:.2f}x the job without it (medians; per round "
          f"{min(pairs):.2f}x..{max(pairs):.2f}x; target <= 2x), load avg {os.getloadavg()[0]:.2f}")
    stop_server(Path(home) / "redis")
    shutil.rmtree(home, ignore_errors=True)
    return {"ratio": ratio}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1e7", help="candles (default 1e7)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peer-rows", type=int, default=300)
    p.add_argument("--h1-years", type=int, default=4)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--h1-rounds", type=int, default=5, help="rounds of the two H1 jobs (section 3)")
    p.add_argument("--only", choices=("3",), help="run section 3 alone")
    p.add_argument("--quick", action="store_true", help="1e5 candles, 1 repeat, 1 year")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.repeats, args.peer_rows, args.h1_years, args.h1_rounds = "1e5", 1, 50, 1, 1
    n = int(float(args.size))
    gpubackfill.keep_freed_memory()
    print(f"second label set: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"load avg {os.getloadavg()[0]:.2f}")
    if args.only != "3":
        table = candles(n, args.seed)
        throughput(table, args.repeats)
        peers(table, args.peer_rows, args.repeats, args.seed)
    resolve_end_to_end(args.h1_years, args.seed, args.h1_rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
