"""CSV dates: the engine's time parsing against pyarrow and pandas, side by side.

Issue #14 keeps the hand-written numba date parser of
``gpubackfill/candle_files.py`` only if it beats the libraries by a wide
margin on a 10M-row file.  This script writes a 10M-row candle CSV per
variant into a temporary folder (deleted at the end), and times on that one
file and its one time column.  Variants (``ts`` of the first row):
``iso_z`` 2005-01-01T00:00:00Z; ``offset_frac`` 2005-01-01T02:00:00.250+02:00;
``metatrader`` 2005.01.01 00:00; ``utc_word`` 2005-01-01 00:00:00 UTC;
``mixed_zones`` 2005-01-01T00:00:00Z and 2005-01-01T00:01:00 alternating (the
engine's slower general path); ``dukascopy`` 01.01.2005 00:00:00.000 (day first,
rewritten to ISO 8601 by one regular-expression replacement).  Methods:

column scope -- the ``ts`` column already read as text (as ``read_candles``
reads it), text -> int64 ms UTC:

- ``hand-written (numba) @REV``: ``_parse_time`` of ``candle_files.py`` as it
  was at git revision ``--baseline`` (the numba parser), loaded from git;
- ``engine _parse_time (this tree)``: the same function in the working tree;
- ``pyarrow cast``: ``col.cast(pa.timestamp("ms", "UTC"))`` (naive variants:
  ``pa.timestamp("ms")``; dotted dates get their first two dots replaced by
  dashes first, ``pc.replace_substring(..., max_replacements=2)``);
- ``pyarrow strptime``: ``pc.strptime(col, format=...)`` (no fractions);
- ``pandas to_datetime ISO8601`` and ``pandas to_datetime format=...``: on the
  column as a pandas Series, ``utc=True``, result as int64 ms.

file scope -- path in, int64 ms ``ts`` plus float prices out:

- ``read_candles @REV`` and ``read_candles (this tree)``;
- ``pyarrow.csv column_types``: ``ts`` typed as a timestamp, so the CSV reader
  parses it (Arrow's ISO 8601 parser);
- ``pyarrow.csv timestamp_parsers``: the same with an explicit strptime
  format;
- ``pandas read_csv + to_datetime``: ``pd.read_csv(engine="pyarrow")`` then
  ``to_datetime(format="ISO8601")``.

Every method runs in a fresh subprocess: a warm-up call on 1,000 rows (numba
compile or cache load, lazy imports), then ``--repeats`` timed calls; the
median is reported.  Peak RSS is Linux's VmHWM, reset through
/proc/self/clear_refs just before each call; "increase" is that peak minus
the RSS just before the call (for column scope the column is already in
memory).  "agrees" compares the int64 ms result with the engine's.  On
``iso_z`` the two engine column methods are also timed with the last value
made bad (``2024-02-30T00:00:00Z``): the time it takes to name that row.

Run from the repository root::

    python bench/csv_dates.py                        # 10M rows, 3 repeats, all variants
    python bench/csv_dates.py --rows 1e6 --variants iso_z
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
# Run as a script, this file's folder comes first on sys.path; drop it (see kernels.py).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]

_spec = importlib.util.spec_from_file_location("_bench_report", BENCH_DIR / "report.py")
assert _spec is not None and _spec.loader is not None
_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_report)
cpu_model, human, load_average, mib = _report.cpu_model, _report.human, _report.load_average, _report.mib
print_table, size_name, _status_kb = _report.print_table, _report.size_name, _report._status_kb
_reset_peak_rss = _report.reset_peak_rss

# The last revision whose candle_files.py holds the hand-written numba parser.
BASELINE = "4dd598e9cb1bb07fcd86ffd7712852a865531951"
START_MS = 1_104_537_600_000  # 2005-01-01T00:00:00Z; 10M minutes run to 2024

# variant -> (description, tz of the text (None: zoned or UTC), strptime format, pandas format)
VARIANTS: dict[str, tuple[str, bool, str | None, str]] = {
    "iso_z": ("2005-01-01T00:00:00Z (ISO 8601, Z)", True,
              "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S%z"),
    "offset_frac": ("2005-01-01T02:00:00.250+02:00 (offset, fractional seconds)", True,
                    None, "%Y-%m-%dT%H:%M:%S.%f%z"),
    "metatrader": ("2005.01.01 00:00 (MetaTrader style, naive, read as UTC)", False,
                   "%Y.%m.%d %H:%M", "%Y.%m.%d %H:%M"),
    "utc_word": ("2005-01-01 00:00:00 UTC (zone as a word: no ISO 8601 cast reads it)", False,
                 "%Y-%m-%d %H:%M:%S UTC", "%Y-%m-%d %H:%M:%S UTC"),
    "mixed_zones": ("2005-01-01T00:00:00Z, 2005-01-01T00:01:00, ... (zoned and naive rows alternate)",
                    True, None, "ISO8601"),
    "dukascopy": ("01.01.2005 00:00:00.000 (Dukascopy: day first, milliseconds, naive)", False,
                  None, "%d.%m.%Y %H:%M:%S.%f"),
}
NOT_ISO = ("metatrader", "utc_word", "dukascopy")  # variants that no ISO 8601 parser reads
# Column methods also timed, on iso_z only, with the last value made bad: time to the error.
BAD_LAST = ", last value bad"
BAD_VALUE = "2024-02-30T00:00:00Z"

COLUMN_METHODS = ["hand-written (numba) @REV", "engine _parse_time (this tree)", "pyarrow cast",
                  "pyarrow strptime", "pandas to_datetime ISO8601", "pandas to_datetime format="]
FILE_METHODS = ["read_candles @REV", "read_candles (this tree)", "pyarrow.csv column_types",
                "pyarrow.csv timestamp_parsers", "pandas read_csv + to_datetime"]


# ---------------------------------------------------------------------------
# input


def expected_ms(n: int, variant: str) -> np.ndarray:
    ms = START_MS + np.arange(n, dtype=np.int64) * 60_000
    return ms + 250 if variant == "offset_frac" else ms


def time_text(n: int, variant: str) -> pa.Array:
    ms = expected_ms(n, variant)
    if variant == "iso_z":
        return pc.strftime(pa.array(ms // 1000, pa.timestamp("s")), format="%Y-%m-%dT%H:%M:%SZ")
    if variant == "offset_frac":  # Arrow prints %S of a ms timestamp as SS.fff
        local = pa.array(ms + 2 * 3_600_000, pa.timestamp("ms"))
        return pc.strftime(local, format="%Y-%m-%dT%H:%M:%S+02:00")
    if variant == "mixed_zones":
        zoned = pc.strftime(pa.array(ms // 1000, pa.timestamp("s")), format="%Y-%m-%dT%H:%M:%SZ")
        naive = pc.strftime(pa.array(ms // 1000, pa.timestamp("s")), format="%Y-%m-%dT%H:%M:%S")
        return pc.if_else(pa.array(np.arange(n) % 2 == 0), zoned, naive)
    if variant == "utc_word":
        return pc.strftime(pa.array(ms // 1000, pa.timestamp("s")), format="%Y-%m-%d %H:%M:%S UTC")
    if variant == "dukascopy":  # Arrow prints %S of a ms timestamp as SS.fff
        return pc.strftime(pa.array(ms, pa.timestamp("ms")), format="%d.%m.%Y %H:%M:%S")
    return pc.strftime(pa.array(ms // 1000, pa.timestamp("s")), format="%Y.%m.%d %H:%M")


def write_csv(path: Path, n: int, variant: str, seed: int = 12345) -> None:
    """A random-walk M1 candle CSV: ts, open, high, low, close, volume."""
    rng = np.random.default_rng(seed)
    close = np.round(1.2 * np.exp(np.cumsum(rng.normal(0.0, 2e-4, n))), 5)
    open_ = np.r_[close[:1], close[:-1]]
    high = np.round(np.maximum(open_, close) + np.abs(rng.normal(0.0, 1e-4, n)), 5)
    low = np.round(np.minimum(open_, close) - np.abs(rng.normal(0.0, 1e-4, n)), 5)
    volume = rng.integers(1, 500, n)
    table = pa.table({"ts": time_text(n, variant), "open": open_, "high": high, "low": low,
                      "close": close, "volume": volume})
    pcsv.write_csv(table, path, write_options=pcsv.WriteOptions(quoting_style="none"))


def head_csv(src: Path, dst: Path, lines: int = 1001) -> None:
    with open(src, "rb") as f, open(dst, "wb") as g:
        for _ in range(lines):
            g.write(f.readline())


def load_baseline(rev: str, folder: Path) -> Path:
    """candle_files.py at ``rev``, written into ``folder`` (numba caches next to it)."""
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:gpubackfill/candle_files.py"],
                         capture_output=True, text=True, check=True).stdout
    path = folder / "candle_files_baseline.py"
    path.write_text(src)
    return path


def import_baseline(path: Path) -> Any:
    import gpubackfill  # noqa: F401  (the parent package of the relative imports)

    spec = importlib.util.spec_from_file_location("gpubackfill._candle_files_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
# methods (each returns int64 ms UTC as numpy)


def _ms(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(arr.cast(pa.int64()).to_numpy())


def _pandas_ms(stamps: pd.Series) -> np.ndarray:
    return np.asarray(stamps.array.as_unit("ms").asi8)


def column_method(method: str, variant: str, baseline: Path) -> Callable[[pa.Array], np.ndarray]:
    _, zoned, strptime_fmt, pandas_fmt = VARIANTS[variant]
    stamp = pa.timestamp("ms", "UTC") if zoned else pa.timestamp("ms")
    if method == "hand-written (numba) @REV":
        parse_old = import_baseline(baseline)._parse_time
        return lambda col: parse_old(col, None)
    if method == "engine _parse_time (this tree)":
        from gpubackfill.candles.files import _parse_time

        return lambda col: _parse_time(col, None)
    if method == "pyarrow cast":
        if variant == "utc_word":
            raise NotImplementedError("Arrow's ISO 8601 parser reads no ' UTC'")
        if variant == "dukascopy":
            raise NotImplementedError("Arrow's ISO 8601 parser reads no day-first dates")
        if variant == "mixed_zones":
            raise NotImplementedError("one cast reads naive or zoned text, not both")
        if variant == "metatrader":  # Arrow's ISO 8601 parser wants dashes: replace the first two dots
            return lambda col: _ms(pc.replace_substring(col, ".", "-", max_replacements=2).cast(stamp))
        return lambda col: _ms(col.cast(stamp))
    if method == "pyarrow strptime":
        if strptime_fmt is None:
            raise NotImplementedError("no one strptime format fits")
        return lambda col: _ms(pc.strptime(col, format=strptime_fmt, unit="ms"))
    if method == "pandas to_datetime ISO8601":
        if variant in NOT_ISO:
            raise NotImplementedError("not ISO 8601 to pandas")
        return lambda col: _pandas_ms(pd.to_datetime(col.to_pandas(), format="ISO8601", utc=True))
    if method == "pandas to_datetime format=":
        return lambda col: _pandas_ms(pd.to_datetime(col.to_pandas(), format=pandas_fmt, utc=True))
    raise ValueError(method)


def file_method(method: str, variant: str, baseline: Path) -> Callable[[Path], np.ndarray]:
    _, zoned, strptime_fmt, pandas_fmt = VARIANTS[variant]
    stamp = pa.timestamp("ms", "UTC") if zoned else pa.timestamp("ms")
    prices = {c: pa.float64() for c in ("open", "high", "low", "close", "volume")}
    if method == "read_candles @REV":
        read_old = import_baseline(baseline).read_candles
        return lambda path: _ms(read_old(path)["ts"])
    if method == "read_candles (this tree)":
        from gpubackfill.candles.files import read_candles

        return lambda path: _ms(read_candles(path)["ts"])
    if method == "pyarrow.csv column_types":
        if variant in NOT_ISO:
            raise NotImplementedError("not ISO 8601 to Arrow")
        if variant == "mixed_zones":
            raise NotImplementedError("one column type reads naive or zoned text, not both")
        options = pcsv.ConvertOptions(column_types={"ts": stamp, **prices})
        return lambda path: _ms(pcsv.read_csv(path, convert_options=options)["ts"])
    if method == "pyarrow.csv timestamp_parsers":
        if strptime_fmt is None:
            raise NotImplementedError("no one strptime format fits")
        options = pcsv.ConvertOptions(column_types={"ts": stamp, **prices},
                                      timestamp_parsers=[strptime_fmt])
        return lambda path: _ms(pcsv.read_csv(path, convert_options=options)["ts"])
    if method == "pandas read_csv + to_datetime":
        fmt = pandas_fmt if variant in NOT_ISO else "ISO8601"

        def run(path: Path) -> np.ndarray:
            df = pd.read_csv(path, engine="pyarrow")
            return _pandas_ms(pd.to_datetime(df["ts"], format=fmt, utc=True))

        return run
    raise ValueError(method)


# ---------------------------------------------------------------------------
# child: one method, one variant, fresh process


def _release_free_memory() -> None:
    import ctypes
    import gc

    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def read_time_column(path: Path) -> pa.Array:
    """The ts column as text, as read_candles reads it."""
    options = pcsv.ConvertOptions(column_types={"ts": pa.string()}, include_columns=["ts"],
                                  strings_can_be_null=False)
    return pcsv.read_csv(path, convert_options=options)["ts"].combine_chunks()


def _error_row(fn: Callable[[Any], np.ndarray]) -> Callable[[Any], np.ndarray]:
    """``fn`` that returns [row] of the bad value it raises on (-1 if it raises none)."""

    def run(arg: Any) -> np.ndarray:
        try:
            fn(arg)
        except Exception as exc:  # the module's own _BadValue
            return np.array([getattr(exc, "row", -2)])
        return np.array([-1])

    return run


def child(args: argparse.Namespace) -> None:
    scope, method = args.child.split(":", 1)
    path, warm = Path(args.file), Path(args.warm)
    out: dict[str, Any] = {"method": method, "scope": scope}
    try:
        if scope == "column":
            fn: Callable[[Any], np.ndarray] = column_method(method.removesuffix(BAD_LAST), args.variant,
                                                            Path(args.baseline))
            arg: Any = read_time_column(path)
            fn(read_time_column(warm))
            if method.endswith(BAD_LAST):
                arg = pa.concat_arrays([arg.slice(0, len(arg) - 1), pa.array([BAD_VALUE])])
                fn = _error_row(fn)
        else:
            fn = file_method(method, args.variant, Path(args.baseline))
            arg = path
            fn(warm)
    except NotImplementedError as exc:
        out["skip"] = str(exc)
        print(json.dumps(out))
        return
    times, peaks, increases = [], [], []
    result = None
    for _ in range(args.repeats):
        result = None
        _release_free_memory()
        hwm = _reset_peak_rss()
        before = (_status_kb("VmRSS") or 0) * 1024
        t0 = time.perf_counter()
        result = fn(arg)
        times.append(time.perf_counter() - t0)
        peak = (_status_kb("VmHWM") or 0) * 1024 if hwm else 0
        peaks.append(peak)
        increases.append(peak - before)
    assert result is not None
    result = np.ascontiguousarray(result, dtype=np.int64)
    out.update(times=times, peak=max(peaks), increase=max(increases), rows=len(result),
               sha1=hashlib.sha1(result.tobytes()).hexdigest(),
               right=bool(np.array_equal(result, expected_ms(len(result), args.variant))),
               error_row=int(result[0]) if method.endswith(BAD_LAST) else None)
    print(json.dumps(out))


def run_child(scope: str, method: str, variant: str, path: Path, warm: Path, baseline: Path,
              repeats: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", f"{scope}:{method}",
           "--variant", variant, "--file", str(path), "--warm", str(warm),
           "--baseline-file", str(baseline), "--repeats", str(repeats)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"method": method, "scope": scope, "skip": f"failed (exit {res.returncode}): "
                f"{res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ''}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# main


def print_header(args: argparse.Namespace) -> None:
    import numba
    import psutil

    import gpubackfill

    cores = os.cpu_count()
    print("gpubackfill CSV dates benchmark (issue #14)")
    print(f"command   : {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine   : {cpu_model()}; {cores} logical cores ({psutil.cpu_count(logical=False)} physical); "
          f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM; {platform.system()} {platform.release()}")
    print(f"python    : {platform.python_version()}; numpy {np.__version__}, pyarrow {pa.__version__}, "
          f"pandas {pd.__version__}, numba {numba.__version__}, gpubackfill {gpubackfill.__version__}")
    print(f"load avg  : {load_average()} (1/5/15 min at start; other processes slow every number)")
    print(f"settings  : rows = {size_name(args.rows)}; repeats = {args.repeats} (median reported); "
          f"baseline @REV = {args.baseline[:12]}; temp dir = {args.dir or tempfile.gettempdir()}")


def report(variant: str, n: int, size: int, results: list[dict[str, Any]], rev: str) -> None:
    reference = next((r.get("sha1") for r in results if r["method"] == "read_candles (this tree)"), None)
    rows = []
    for r in results:
        name = r["method"].replace("@REV", f"@{rev[:7]}")
        if "skip" in r:
            rows.append([r["scope"], name, "-", "-", "-", "-", "-", f"n/a: {r['skip']}"])
            continue
        med = statistics.median(r["times"])
        if r.get("error_row") is not None:
            rows.append([r["scope"], name, f"{med:.3f}", f"{min(r['times']):.3f}", human(n / med),
                         mib(r["peak"]), mib(r["increase"]), f"error at row {r['error_row']:,}"])
            continue
        agree = "yes" if r["sha1"] == reference else "NO"
        rows.append([r["scope"], name, f"{med:.3f}", f"{min(r['times']):.3f}", human(n / med),
                     mib(r["peak"]), mib(r["increase"]), f"{agree}{'' if r['right'] else ' (WRONG)'}"])
    print_table(["scope", "method", "median s", "min s", "rows/s", "peak RSS MiB", "increase MiB",
                 "agrees"], rows,
                title=f"{variant}: {VARIANTS[variant][0]}; {size_name(n)} rows, file {size / 2**20:,.0f} MiB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=lambda s: int(float(s)), default=10_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma separated, of {', '.join(VARIANTS)}")
    p.add_argument("--baseline", default=BASELINE,
                   help="git revision whose gpubackfill/candle_files.py is the hand-written parser")
    p.add_argument("--dir", default=None, help="folder for the temporary CSV files")
    # internal: one measurement in a fresh process
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--warm", help=argparse.SUPPRESS)
    p.add_argument("--baseline-file", dest="baseline_file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.baseline = args.baseline_file
        child(args)
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}")
    print_header(args)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="csv_dates_", dir=args.dir))
    try:
        baseline = load_baseline(args.baseline, tmp)
        for variant in variants:
            path, warm = tmp / f"{variant}.csv", tmp / f"{variant}_warm.csv"
            t0 = time.perf_counter()
            write_csv(path, args.rows, variant)
            head_csv(path, warm)
            print(f"\n[{variant}] wrote {path.stat().st_size / 2**20:,.0f} MiB in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            bad = [m + BAD_LAST for m in COLUMN_METHODS[:2]] if variant == "iso_z" else []
            results = [run_child(scope, m, variant, path, warm, baseline, args.repeats)
                       for scope, methods in (("column", COLUMN_METHODS + bad), ("file", FILE_METHODS))
                       for m in methods]
            report(variant, args.rows, path.stat().st_size, results, args.baseline)
            sys.stdout.flush()
            path.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load avg at end {load_average()}; "
          f"temporary files removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
