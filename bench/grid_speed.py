"""The third set's per-row labels: ``barrier_grid`` against one
``enhanced_triple_barrier`` run per combination, and ``side="column"``
(with ``tb_meta``) against the plain triple barrier.

Run from the repository root::

    python bench/grid_speed.py                  # 10M candles, 3 repeats
    python bench/grid_speed.py --size 1e6       # under load, or to be quick

What it prints, every time the median of ``--repeats`` rounds after a
warm-up (numba compile excluded); within a round the contenders run one
after the other, so load that comes and goes hits them alike:

1. ``barrier_grid`` with pts = sls = 1, 1.5, 2 and horizons 12, 24, 48 (27
   combinations) against 27 separate ``enhanced_triple_barrier`` runs, both
   through ``compute_labels`` (pyarrow Table in, validation, sigma and Arrow
   output included), and both as kernels alone (sigma computed once, as the
   engine shares it): seconds, candles/min and the ratio (target >= 5x
   through compute_labels).  A row of the grid is checked against the
   single runs on a sample of rows, so the two compute the same labels.
2. The triple barrier (horizon 24) without sides, and with
   ``side="column"`` (every row long or short at random, so every row is
   walked): seconds, candles/min, and the slowdown (target <= 10%).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
sys.path.insert(0, str(BENCH_DIR.parent))

import gpubackfill  # noqa: E402
from gpubackfill import compute_labels  # noqa: E402
from gpubackfill.compute import allocator  # noqa: E402
from kernels import cpu  # noqa: E402
from kernels.flags import TIE_SL, VERTICAL_ZERO  # noqa: E402

TB = "enhanced_triple_barrier"
GRID = "barrier_grid"
PTS = [1.0, 1.5, 2.0]
SLS = [1.0, 1.5, 2.0]
HORIZONS = [12, 24, 48]
TARGET_GRID = 5.0
TARGET_SIDE = 0.10


def candles(n: int, seed: int) -> pa.Table:
    """A random-walk M1 series; ``side`` +1 / -1 at random."""
    rng = np.random.default_rng(seed)
    close = 1.1 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    open_ = np.r_[close[0], close[:-1]]
    wick = np.abs(rng.normal(0, 5e-4, (2, n)))
    return pa.table({"ts": 1_500_000_000_000 + np.arange(n, dtype=np.int64) * 60_000,
                     "open": open_, "high": np.maximum(open_, close) * np.exp(wick[0]),
                     "low": np.minimum(open_, close) * np.exp(-wick[1]), "close": close,
                     "side": rng.choice(np.array([1.0, -1.0]), n)})


def rounds(contenders: dict, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU seconds (of the process: every thread) of each
    contender; one warm-up each, then ``repeats`` rounds in which every
    contender runs once.  On a machine shared with other work the CPU
    seconds are the steadier measure."""
    for fn in contenders.values():
        fn()
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    cpu_s: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu_s[name].append(time.process_time() - c0)
    return ({name: statistics.median(v) for name, v in wall.items()},
            {name: statistics.median(v) for name, v in cpu_s.items()})


def per_min(n: int, s: float) -> str:
    return f"{n / s * 60 / 1e6:,.0f}"


def check_grid(table: pa.Table, grid: pa.Table, rows: np.ndarray) -> int:
    """Elements of the grid that differ from the single runs on ``rows``."""
    g = len(PTS) * len(SLS) * len(HORIZONS)
    got = {c: grid.column(c).take(pa.array(rows)).to_pylist() for c in ("grid_label", "grid_exit_bars")}
    bad = 0
    k = 0
    for pt in PTS:
        for sl in SLS:
            for h in HORIZONS:
                single = compute_labels(table, TB, {TB: {"pt": pt, "sl": sl, "horizon": h}})
                want = {c: single.column(c).take(pa.array(rows)).to_pylist()
                        for c in ("tb_label", "tb_exit_bars")}
                for i in range(len(rows)):
                    bad += got["grid_label"][i][k] != want["tb_label"][i]
                    bad += got["grid_exit_bars"][i][k] != want["tb_exit_bars"][i]
                k += 1
    assert k == g
    return bad


def grid_section(table: pa.Table, repeats: int) -> float:
    n = table.num_rows
    grid_params = {GRID: {"pts": PTS, "sls": SLS, "horizons": HORIZONS}}
    combos = [(pt, sl, h) for pt in PTS for sl in SLS for h in HORIZONS]

    def singles() -> None:
        for pt, sl, h in combos:
            compute_labels(table, TB, {TB: {"pt": pt, "sl": sl, "horizon": h}})

    # Kernels alone: sigma once (the engine computes it once per request).
    cols = {c: table.column(c).to_numpy() for c in ("open", "high", "low", "close")}
    sigma = cpu.ewm_sigma(cols["close"], 100)
    args = (cols["open"], cols["high"], cols["low"], cols["close"], sigma)

    # Outputs from the allocator compute_labels uses (np.empty's would come
    # from glibc, which unmaps what lies above its 2 GiB trim threshold).
    def kernel_singles() -> None:
        for pt, sl, h in combos:
            cpu.triple_barrier(*args, h, pt, sl, TIE_SL, VERTICAL_ZERO, 0.0, empty=allocator.empty)

    def kernel_grid() -> None:
        cpu.barrier_grid(*args, np.array(PTS), np.array(SLS), np.array(HORIZONS, dtype=np.int64),
                         TIE_SL, VERTICAL_ZERO, 0.0, empty=allocator.empty)

    t, c = rounds({"grid": lambda: compute_labels(table, GRID, grid_params), "singles": singles,
                   "kernel grid": kernel_grid, "kernel singles": kernel_singles}, repeats)
    ratio, cratio = t["singles"] / t["grid"], c["singles"] / c["grid"]
    print(f"\n1. barrier_grid, {len(combos)} combinations (pts {PTS}, sls {SLS}, horizons "
          f"{HORIZONS}), {n:,} candles, median of {repeats}")
    print(f"   {'':<44} {'wall s':>7} {'M candles/min':>14} {'ratio':>6} {'CPU s':>7} {'ratio':>6}")
    rows = [("compute_labels: barrier_grid", "grid", "singles"),
            ("compute_labels: 27 x enhanced_triple_barrier", "singles", "singles"),
            ("kernel: barrier_grid (sigma given)", "kernel grid", "kernel singles"),
            ("kernel: 27 x triple_barrier (sigma given)", "kernel singles", "kernel singles")]
    for label, key, ref in rows:
        print(f"   {label:<44} {t[key]:7.2f} {per_min(n, t[key]):>14} {t[ref] / t[key]:5.1f}x "
              f"{c[key]:7.2f} {c[ref] / c[key]:5.1f}x")
    rows = np.sort(np.random.default_rng(1).choice(n, min(n, 2_000), replace=False))
    bad = check_grid(table, compute_labels(table, GRID, grid_params), rows)
    print(f"   check: {len(rows):,} rows x {len(combos)} combinations, label and exit bars: "
          f"{bad} differ from the single runs")
    print(f"   target >= {TARGET_GRID:.0f}x through compute_labels: wall {ratio:.1f}x "
          f"{'PASS' if ratio >= TARGET_GRID else 'MISS'}, CPU {cratio:.1f}x "
          f"{'PASS' if cratio >= TARGET_GRID else 'MISS'}")
    return ratio


def side_section(table: pa.Table, repeats: int) -> float:
    n = table.num_rows
    plain = table.drop_columns(["side"])
    t, c = rounds({"plain": lambda: compute_labels(plain, TB, {TB: {"horizon": 24}}),
                   "side": lambda: compute_labels(table, TB, {TB: {"horizon": 24,
                                                                   "side": "column"}})},
                  repeats)
    slower, cslower = t["side"] / t["plain"] - 1, c["side"] / c["plain"] - 1
    print(f"\n2. the triple barrier (horizon 24) with and without sides, {n:,} candles, "
          f"median of {repeats}")
    print(f"   {'':<44} {'wall s':>7} {'M candles/min':>14} {'CPU s':>7}")
    print(f"   {'enhanced_triple_barrier':<44} {t['plain']:7.3f} {per_min(n, t['plain']):>14} "
          f"{c['plain']:7.3f}")
    print(f"   {'enhanced_triple_barrier, side=column + meta':<44} {t['side']:7.3f} "
          f"{per_min(n, t['side']):>14} {c['side']:7.3f}")
    print(f"   sides add {100 * slower:+.1f}% wall, {100 * cslower:+.1f}% CPU "
          f"(target <= {100 * TARGET_SIDE:.0f}%): {'PASS' if slower <= TARGET_SIDE else 'MISS'} "
          f"wall, {'PASS' if cslower <= TARGET_SIDE else 'MISS'} CPU")
    return slower


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=float, default=1e7)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["grid", "side"], default=None)
    a = ap.parse_args()
    gpubackfill.keep_freed_memory()
    n = int(a.size)
    print(f"gpubackfill grid_speed: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    table = candles(n, seed=7)
    if a.only in (None, "grid"):
        grid_section(table, a.repeats)
    if a.only in (None, "side"):
        side_section(table, a.repeats)
    print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
