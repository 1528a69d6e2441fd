"""The training-set tools: ``PurgedKFold`` and ``sequential_bootstrap``
against the plain ways the AFML libraries do the same.

Run from the repository root::

    python bench/training.py                     # 1M rows, 100k events, 3 repeats
    python bench/training.py --rows 1e5 --events 1e4 --plain-events 500 --repeats 1

The events are real: ``compute_labels`` runs the triple barrier (horizon 24,
``pt = sl = --pt``) on a random walk of minute candles, and each labelled row
is one event from ``t0 = ts`` to ``t1 = event_end(ts, tb_exit_bars)``.

1. ``PurgedKFold``: every split of ``--rows`` rows, ``--folds`` folds,
   embargo ``--embargo`` (construction with its checks included), median of
   ``--repeats``; beside it a pandas splitter written the way mlfinlab's
   ``PurgedKFold`` works (a test window from the first test row's ``t1`` to
   the ``t1`` of the last row of the fold extended by the embargo; the rows
   that start in it, end in it or envelop it dropped with three pandas
   boolean filters, as AFML's snippet 7.1; positions back through
   ``index.get_loc`` row by row), timed once, and the rows on which the two
   disagree, sorted by why.
2. ``sequential_bootstrap``: ``--events`` events, as many draws, median of
   ``--repeats`` after a warm-up (numba compile excluded), for those events
   and for the heaviest case of horizon 24 (every event 24 bars); beside it the
   plain AFML algorithm on a dense indicator matrix (every event's average
   uniqueness recomputed before every draw, vectorised with numpy) on
   ``--plain-events`` events, checked to draw exactly what ours draws there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
sys.path.insert(0, str(BENCH_DIR.parent))

from gpubackfill import PurgedKFold, compute_labels, event_end, sequential_bootstrap  # noqa: E402

TB = "enhanced_triple_barrier"


def events(n: int, seed: int, pt: float) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """(row positions t, exit bars) of the labelled rows of n minute candles."""
    rng = np.random.default_rng(seed)
    close = 1.1 * np.exp(np.cumsum(rng.normal(0, 1e-4, n)))
    open_ = np.r_[close[0], close[:-1]]
    wick = np.abs(rng.normal(0, 5e-5, (2, n)))
    table = pa.table({"ts": 1_500_000_000_000 + np.arange(n, dtype=np.int64) * 60_000,
                      "open": open_, "high": np.maximum(open_, close) * np.exp(wick[0]),
                      "low": np.minimum(open_, close) * np.exp(-wick[1]), "close": close})
    out = compute_labels(table, TB, {TB: {"horizon": 24, "pt": pt, "sl": pt}})
    bars = out["tb_exit_bars"].to_numpy(zero_copy_only=False)
    keep = ~np.isnan(bars)
    ts = pd.to_datetime(out["ts"].to_numpy(), unit="ms", utc=True)
    t1 = event_end(pd.Series(ts), bars)
    rows = np.flatnonzero(keep)
    return rows, bars[keep].astype(np.int64), pd.Series(t1[keep].to_numpy(), index=ts[keep])


def median_s(fn, repeats: int) -> float:
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeats))


# -- peers ----------------------------------------------------------------------


def mlfinlab_style_splits(t1: pd.Series, n_splits: int, embargo: float):
    """Purged k-fold the way mlfinlab's ``PurgedKFold.split`` works (see the
    module docstring); yields (train, test) positions."""
    n = len(t1)
    indices = np.arange(n)
    embargo_rows = int(n * embargo)
    for test in np.array_split(indices, n_splits):
        a, b = test[0], test[-1] + 1
        end = min(b + embargo_rows, n) if b < n else b
        window_start, window_end = t1.iloc[a], t1.iloc[end - 1]
        train = t1.copy(deep=True)
        starts_in = train[(window_start <= train.index) & (train.index <= window_end)].index
        ends_in = train[(window_start <= train) & (train <= window_end)].index
        envelops = train[(train.index <= window_start) & (window_end <= train)].index
        train = train.drop(starts_in.union(ends_in).union(envelops))
        positions = [t1.index.get_loc(t) for t in train.index]
        yield np.array(positions, dtype=np.int64), test


def plain_sequential_bootstrap(starts: np.ndarray, ends: np.ndarray, random_state: int) -> np.ndarray:
    """AFML 4.5 on a dense indicator matrix: before each draw every event's
    average uniqueness, as if drawn next, from the whole matrix."""
    lo = starts.min()
    bars = ends.max() - lo + 1
    n = len(starts)
    ind = np.zeros((bars, n))
    for i in range(n):
        ind[starts[i] - lo:ends[i] - lo + 1, i] = 1.0
    length = ind.sum(axis=0)
    rng = np.random.default_rng(random_state)
    d = np.zeros(bars)
    out = np.empty(n, np.int64)
    for k in range(n):
        avg = (ind / (1.0 + d)[:, None]).sum(axis=0) / length
        cdf = np.cumsum(avg / avg.sum())
        cdf /= cdf[-1]
        out[k] = np.searchsorted(cdf, rng.random(), side="right")
        d += ind[:, out[k]]
    return out


# -- sections -------------------------------------------------------------------


def purged_kfold(args) -> list[tuple[str, str, str]]:
    rows = int(float(args.rows))
    _, _, t1 = events(rows + 200, args.seed, args.pt)  # the last rows have no exit
    t1 = t1.iloc[:rows]
    n = len(t1)
    X = np.zeros((n, 1))

    def ours():
        return [(tr, te) for tr, te in PurgedKFold(args.folds, t1=t1, embargo=args.embargo).split(X)]

    ours()  # warm-up
    ours_s = median_s(ours, args.repeats)
    splits = ours()
    t0 = time.perf_counter()
    peer = list(mlfinlab_style_splits(t1, args.folds, args.embargo))
    peer_s = time.perf_counter() - t0

    t0_ns = t1.index.asi8
    t1_ns = pd.DatetimeIndex(t1).asi8
    embargo_rows = int(n * args.embargo)
    # Where the mlfinlab-style split departs from the contract, by reason:
    # its window runs from t1 of the first test row (W0) to t1 of the last
    # row of the fold plus embargo (W1), where the contract's is [T0, T1].
    why = {"test rows it also trains on (they end before W0)": 0,
           "rows before the fold it trains on, ending in [T0, W0)": 0,
           "rows after the fold it trains on, starting in (W1, T1]": 0,
           "other rows it trains on that the contract excludes": 0,
           "rows past the embargo it drops, starting by W1 > T1": 0,
           "other rows the contract trains on that it drops": 0}
    keys = list(why)
    folds_differ = 0
    for (train, test), (p_train, _) in zip(splits, peer):
        a, b = test[0], test[-1] + 1
        first, last = t0_ns[a], t1_ns[a:b].max()
        end = min(b + embargo_rows, n) if b < n else b
        w0, w1 = t1_ns[a], t1_ns[end - 1]
        more = np.setdiff1d(p_train, train)
        fewer = np.setdiff1d(train, p_train)
        folds_differ += bool(more.size or fewer.size)
        kinds = [((more >= a) & (more < b) & (t1_ns[more] < w0)),
                 (more < a) & (t1_ns[more] >= first) & (t1_ns[more] < w0),
                 (more >= b) & (t0_ns[more] > w1) & (t0_ns[more] <= last)]
        for key, kind in zip(keys, kinds):
            why[key] += int(kind.sum())
        why[keys[3]] += int(more.size - sum(int(k.sum()) for k in kinds))
        past = (fewer >= b + embargo_rows) & (t0_ns[fewer] <= w1) & (w1 > last)
        why[keys[4]] += int(past.sum())
        why[keys[5]] += int((~past).sum())
    print(f"\n1. PurgedKFold: {n:,} rows, {args.folds} folds, embargo {args.embargo:.0%}")
    print(f"   ours (median of {args.repeats}):  {ours_s:8.3f} s")
    print(f"   mlfinlab-style pandas (once):   {peer_s:8.3f} s  ({peer_s / ours_s:,.0f}x)")
    print(f"   folds where the two differ: {folds_differ} of {args.folds}; the mlfinlab-style split's")
    for reason, count in why.items():
        print(f"     {reason}: {count:,}")
    return [(f"PurgedKFold, {n:,} rows, {args.folds} folds, embargo {args.embargo:.0%}, every split",
             f"{ours_s:.3f} s", f"{peer_s:.1f} s (mlfinlab-style pandas)")]


def bootstrap(args) -> list[tuple[str, str, str]]:
    n = int(float(args.events))
    rows, bars, _ = events(n + 200, args.seed, args.pt)
    cases = {f"triple barrier pt=sl={args.pt:g}": ((rows + 1)[:n], (rows + bars)[:n]),
             "every event its full 24 bars": (np.arange(n) + 1, np.arange(n) + 24)}
    sequential_bootstrap(np.arange(9), np.arange(9), random_state=0)  # warm-up (compile, cache)
    m = args.plain_events
    table = []
    print(f"\n2. sequential_bootstrap, horizon 24: {n:,} events, {n:,} draws (ours, median of "
          f"{args.repeats}); the plain algorithm on {m:,} events, {m:,} draws (once)")
    for name, (starts, ends) in cases.items():
        ours_s = median_s(lambda: sequential_bootstrap(starts, ends, random_state=args.seed), args.repeats)
        drawn = sequential_bootstrap(starts, ends, random_state=args.seed)
        s_m, e_m = starts[:m], ends[:m]
        small_s = median_s(lambda: sequential_bootstrap(s_m, e_m, random_state=args.seed), args.repeats)
        t0 = time.perf_counter()
        plain = plain_sequential_bootstrap(s_m, e_m, args.seed)
        plain_s = time.perf_counter() - t0
        same = np.array_equal(plain, sequential_bootstrap(s_m, e_m, random_state=args.seed))
        # The plain algorithm does bars x events work per draw: cubic in the events.
        plain_at_n = plain_s * (n / m) ** 3
        print(f"   {name} (mean event {np.mean(ends - starts + 1):.1f} bars)")
        print(f"     ours {n:,} events:   {ours_s:8.3f} s ({len(np.unique(drawn)) / n:.1%} distinct)")
        print(f"     ours {m:,} events:   {small_s:8.4f} s")
        print(f"     plain {m:,} events:  {plain_s:8.3f} s ({plain_s / small_s:,.0f}x); same draws: {same}; "
              f"at {n:,} events ~{plain_at_n / 3600:,.0f} h (cubic)")
        table += [(f"sequential_bootstrap, {name}: {n:,} events, {n:,} draws", f"{ours_s:.2f} s",
                   f"~{plain_at_n / 3600:,.0f} h (plain, extrapolated)"),
                  (f"sequential_bootstrap, {name}: {m:,} events, {m:,} draws", f"{small_s:.4f} s",
                   f"{plain_s:.1f} s (plain indicator matrix; same draws: {same})")]
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="1e6", help="PurgedKFold rows (default 1e6)")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--embargo", type=float, default=0.01)
    p.add_argument("--events", default="1e5", help="sequential_bootstrap events and draws (default 1e5)")
    p.add_argument("--plain-events", type=int, default=2000, help="events for the plain algorithm")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pt", type=float, default=2.0, help="the triple barrier's pt = sl, in sigmas")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    table = purged_kfold(args) + bootstrap(args)
    print("\n| what | ours | peer |\n|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
