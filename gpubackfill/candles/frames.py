"""Candle frames in, validated arrays out.

Accepts a pandas DataFrame (``ts`` column or a DatetimeIndex) or a pyarrow
Table; column names match case-insensitively.  Arrays are handed to the
kernels without copies wherever the input already is contiguous float64.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from kernels import core, cpu

from ..errors import InvalidCandles, InvalidInput
from ..labels import Series

PRICE_COLUMNS = ("open", "high", "low", "close")

_REASONS = (
    (core.BAD_NONFINITE, "a price is missing, NaN or infinite"),
    (core.BAD_NONPOSITIVE, "a price is zero or negative"),
    (core.BAD_HIGH, "high is below max(open, close)"),
    (core.BAD_LOW, "low is above min(open, close)"),
    (core.BAD_TS_ORDER, "ts is not after the previous row's (unsorted or duplicate)"),
    (core.BAD_VOLUME, "volume is negative, NaN or infinite"),
)


def describe(code: int) -> str:
    """Human-readable reasons for a defect code from ``defect_codes``."""
    return "; ".join(text for bit, text in _REASONS if code & bit)


def to_series(candles: Any) -> Series:
    """Extract ts (int64 ms UTC) and float64 OHLC(V) arrays from a frame."""
    if isinstance(candles, pa.RecordBatch):
        candles = pa.Table.from_batches([candles])
    if isinstance(candles, pa.Table):
        return read_only(_from_arrow(candles))
    if isinstance(candles, pd.DataFrame):
        return read_only(_from_pandas(candles))
    raise InvalidCandles(
        f"candles must be a pandas DataFrame or a pyarrow Table, got {type(candles).__name__}"
    )


def read_only(series: Series) -> Series:
    """The same arrays as read-only views (no copy).

    numba compiles, and caches, one specialisation per array mutability.  An
    Arrow column of one record batch converts zero-copy and read-only; one of
    several (every chDB result of more than one block) or from pandas is a
    writable copy.  So the same labels were compiled twice: the demo's first
    job spent ~14 s compiling the writable variants that its warm-up, on a
    one-batch table, had not.  The kernels never write their inputs."""
    def frozen(a):
        if a is None or not a.flags.writeable:
            return a
        view = a.view()
        view.flags.writeable = False
        return view

    return replace(series, ts=frozen(series.ts), open=frozen(series.open), high=frozen(series.high),
                   low=frozen(series.low), close=frozen(series.close), volume=frozen(series.volume))


def _column_map(names: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in names:
        key = str(name).strip().lower()
        if key in out:
            raise InvalidCandles(f"candles have two columns named {key!r} (ignoring case)")
        out[key] = name
    return out


def _require(cols: dict[str, str], names: list[str]) -> None:
    missing = [c for c in PRICE_COLUMNS if c not in cols]
    if missing:
        raise InvalidCandles(
            f"candles lack column(s) {', '.join(missing)} (have: {', '.join(map(str, names)) or 'none'})"
        )


def _from_arrow(table: pa.Table) -> Series:
    cols = _column_map(table.column_names)
    _require(cols, table.column_names)
    if "ts" not in cols:
        raise InvalidCandles(f"candles lack a 'ts' column (have: {', '.join(table.column_names)})")
    ts = _ts_from_arrow(table.column(cols["ts"]))
    arrays = {c: _float_from_arrow(c, table.column(cols[c])) for c in PRICE_COLUMNS}
    volume = _float_from_arrow("volume", table.column(cols["volume"])) if "volume" in cols else None
    return Series(ts=ts, open=arrays["open"], high=arrays["high"], low=arrays["low"],
                  close=arrays["close"], volume=volume)


def _ts_from_arrow(col: pa.ChunkedArray) -> np.ndarray:
    if col.null_count:
        raise InvalidCandles(f"ts has {col.null_count} missing value(s)")
    t = col.type
    if pa.types.is_timestamp(t):
        col = col.cast(pa.timestamp("ms", tz=t.tz), safe=False).cast(pa.int64())
    elif pa.types.is_integer(t):
        col = col.cast(pa.int64())
    else:
        raise InvalidCandles(f"ts must be int64 milliseconds or a timestamp, got {t}")
    return _contiguous(col)


def _float_from_arrow(name: str, col: pa.ChunkedArray) -> np.ndarray:
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)
            or pa.types.is_decimal(col.type)):
        raise InvalidCandles(f"column {name} must be numeric, got {col.type}")
    if col.type != pa.float64():
        col = col.cast(pa.float64())
    if col.null_count:
        col = pc.fill_null(col, np.nan)  # nulls then fail validation by row
    return _contiguous(col)


def _contiguous(col: pa.ChunkedArray) -> np.ndarray:
    """One numpy array over the column: its own buffer when it is one chunk
    (no copy); else the chunks joined once in Arrow's memory pool, which
    keeps freed pages (a chDB result comes in blocks of ~18k rows; numpy's
    join costs 40% more at 1M rows: 6.7 against 4.8 ms for six columns)."""
    arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return np.ascontiguousarray(arr.to_numpy(zero_copy_only=False))


def _from_pandas(df: pd.DataFrame) -> Series:
    cols = _column_map(list(df.columns))
    _require(cols, list(df.columns))
    if "ts" in cols:
        ts = _ts_from_pandas(df[cols["ts"]])
    elif isinstance(df.index, pd.DatetimeIndex):
        ts = _ts_from_pandas(pd.Series(df.index))
    else:
        raise InvalidCandles("candles need a 'ts' column or a DatetimeIndex")
    arrays = {c: _float_from_pandas(c, df[cols[c]]) for c in PRICE_COLUMNS}
    volume = _float_from_pandas("volume", df[cols["volume"]]) if "volume" in cols else None
    return Series(ts=ts, open=arrays["open"], high=arrays["high"], low=arrays["low"],
                  close=arrays["close"], volume=volume)


def _ts_from_pandas(s: pd.Series) -> np.ndarray:
    if s.isna().any():
        raise InvalidCandles(f"ts has {int(s.isna().sum())} missing value(s)")
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        if getattr(s.dt, "tz", None) is not None:
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        return np.ascontiguousarray(s.to_numpy().astype("datetime64[ms]").astype(np.int64))
    if pd.api.types.is_integer_dtype(s.dtype):
        return np.ascontiguousarray(s.to_numpy(dtype=np.int64))
    raise InvalidCandles(f"ts must be int64 milliseconds or datetimes, got {s.dtype}")


def _float_from_pandas(name: str, s: pd.Series) -> np.ndarray:
    if not (pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)):
        raise InvalidCandles(f"column {name} must be numeric, got {s.dtype}")
    return np.ascontiguousarray(s.to_numpy(dtype=np.float64, na_value=np.nan))


def _no_volume(series: Series) -> tuple[np.ndarray, bool]:
    if series.volume is None:
        return series.close, False  # any float64 array; not read
    return series.volume, True


def defect_codes(series: Series) -> np.ndarray:
    """Per-row defect bits (0 = good).  Dropping every non-zero row leaves a
    valid series; ``describe`` turns a code into words."""
    volume, check = _no_volume(series)
    return cpu.defect_codes(series.ts, series.open, series.high, series.low, series.close,
                            volume, check)


def validate(series: Series, on_invalid: str = "raise") -> Series:
    """Return a series that meets the contract, or raise naming the first bad row.

    ``on_invalid="drop"`` drops malformed rows instead (each out-of-order row
    is judged against the last row kept).
    """
    if on_invalid not in ("raise", "drop"):
        raise InvalidInput(f"on_invalid must be 'raise' or 'drop', got {on_invalid!r}")
    volume, check = _no_volume(series)
    first = cpu.first_defect(series.ts, series.open, series.high, series.low, series.close,
                             volume, check)
    if first < 0:
        return series
    if on_invalid == "raise":
        raise InvalidCandles(_row_message(series, first), row=first)
    keep = defect_codes(series) == 0
    return read_only(Series(
        ts=series.ts[keep], open=series.open[keep], high=series.high[keep],
        low=series.low[keep], close=series.close[keep],
        volume=None if series.volume is None else series.volume[keep],
    ))


def _row_message(series: Series, i: int) -> str:
    code = int(core.candle_defects(series.open[i], series.high[i], series.low[i], series.close[i],
                                   0.0 if series.volume is None else series.volume[i],
                                   series.volume is not None))
    if code == 0:
        code = core.BAD_TS_ORDER
    when = pd.Timestamp(int(series.ts[i]), unit="ms", tz="UTC").isoformat()
    values = (f"open={series.open[i]!r} high={series.high[i]!r} "
              f"low={series.low[i]!r} close={series.close[i]!r}")
    if code & core.BAD_VOLUME and series.volume is not None:
        values += f" volume={series.volume[i]!r}"
    if code & core.BAD_TS_ORDER:
        prev = pd.Timestamp(int(series.ts[i - 1]), unit="ms", tz="UTC").isoformat()
        values = f"previous ts {prev}"
    return f"malformed candle at row {i} (ts {when}): {describe(code)} [{values}]"
