"""Candle frames in, validated arrays out.

Accepts a pandas DataFrame (``ts`` column or a DatetimeIndex), a polars
DataFrame or a pyarrow Table; column names match case-insensitively.  Arrays
are handed to the kernels without copies wherever the input already is
contiguous float64.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from kernels import core, cpu

from ..errors import InvalidCandles, InvalidInput, shown
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


def kind(candles: Any) -> str | None:
    """'pandas', 'polars' or 'arrow' for a frame ``to_series`` reads, else None."""
    if isinstance(candles, (pa.Table, pa.RecordBatch)):
        return "arrow"
    if isinstance(candles, pd.DataFrame):
        return "pandas"
    # By module name: polars is optional, and only a polars frame imports it.
    if type(candles).__module__.split(".")[0] == "polars" and type(candles).__name__ == "DataFrame":
        return "polars"
    return None


def to_series(candles: Any, optional: tuple[str, ...] = (), side: bool = False) -> Series:
    """Extract ts (int64 ms UTC) and float64 OHLC(V) arrays from a frame.

    ``optional``: price columns the frame may lack (None in the series);
    every other one of open/high/low/close must be there.  ``side``: also
    read the frame's ``side`` column, where it has one (see ``side_values``)."""
    frame_kind = kind(candles)
    if frame_kind == "polars":
        candles = candles.to_arrow()
    if isinstance(candles, pa.RecordBatch):
        candles = pa.Table.from_batches([candles])
    if isinstance(candles, pa.Table):
        series = _from_arrow(candles, optional)
        cols = _column_map(candles.column_names)
        if side and "side" in cols:
            series = replace(series, side=_side_from_arrow(candles.column(cols["side"])))
        return read_only(series)
    if isinstance(candles, pd.DataFrame):
        series = _from_pandas(candles, optional)
        cols = _column_map(list(candles.columns))
        if side and "side" in cols:
            series = replace(series, side=_side_from_pandas(candles[cols["side"]]))
        return read_only(series)
    raise InvalidCandles(
        "candles must be a pandas or polars DataFrame or a pyarrow Table, got "
        f"{type(candles).__name__}"
    )


def column_names(candles: Any) -> list[str]:
    """The frame's column names, as given."""
    names = candles.column_names if isinstance(candles, (pa.Table, pa.RecordBatch)) else candles.columns
    return [str(n) for n in names]


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
                   low=frozen(series.low), close=frozen(series.close), volume=frozen(series.volume),
                   side=frozen(series.side))


def _column_map(names: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in names:
        key = str(name).strip().lower()
        if key in out:
            raise InvalidCandles(f"candles have two columns named {key!r} (ignoring case)")
        out[key] = name
    return out


def _require(cols: dict[str, str], names: list[str], optional: tuple[str, ...]) -> None:
    missing = [c for c in PRICE_COLUMNS if c not in cols and c not in optional]
    if missing:
        raise InvalidCandles(
            f"candles lack column(s) {', '.join(missing)} (have: {', '.join(map(str, names)) or 'none'})"
        )


def _from_arrow(table: pa.Table, optional: tuple[str, ...]) -> Series:
    cols = _column_map(table.column_names)
    _require(cols, table.column_names, optional)
    if "ts" not in cols:
        raise InvalidCandles(f"candles lack a 'ts' column (have: {', '.join(table.column_names)})")
    ts = _ts_from_arrow(table.column(cols["ts"]))
    arrays = {c: _float_from_arrow(c, table.column(cols[c])) for c in PRICE_COLUMNS if c in cols}
    volume = _float_from_arrow("volume", table.column(cols["volume"])) if "volume" in cols else None
    return Series(ts=ts, open=arrays.get("open"), high=arrays.get("high"), low=arrays.get("low"),
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


def _float_from_arrow(name: str, col: pa.ChunkedArray, numeric: str = "numeric") -> np.ndarray:
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)
            or pa.types.is_decimal(col.type)):
        raise InvalidCandles(f"column {name} must be {numeric}, got {col.type}")
    if col.type != pa.float64():
        col = col.cast(pa.float64())
    if col.null_count:
        col = pc.fill_null(col, np.nan)  # nulls then fail validation by row
    return _contiguous(col)


def _contiguous(col: pa.ChunkedArray) -> np.ndarray:
    """One numpy array over the column: its own buffer when it is one chunk
    (no copy); else the chunks copied once into an array from the kernels'
    allocator (a chDB result comes in blocks of ~18k rows).

    Not Arrow's ``combine_chunks``: its pool hands a 1M-row column's pages
    back soon after they are freed, so each chunk of a job faulted its
    copies in afresh, 8-128 ms of CPU for six columns where the copy itself
    takes 6 (bench/RESULTS.md, "Memory a chunk reuses")."""
    if col.num_chunks == 1:
        return np.ascontiguousarray(col.chunk(0).to_numpy(zero_copy_only=False))
    if col.null_count or not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        return np.ascontiguousarray(col.combine_chunks().to_numpy(zero_copy_only=False))
    # Imported here: the compute package imports this module.
    from ..compute.allocator import empty

    out = empty(len(col), col.type.to_pandas_dtype())
    at = 0
    for chunk in col.chunks:
        n = len(chunk)
        out[at:at + n] = chunk.to_numpy(zero_copy_only=True)
        at += n
    return out


def _from_pandas(df: pd.DataFrame, optional: tuple[str, ...]) -> Series:
    cols = _column_map(list(df.columns))
    _require(cols, list(df.columns), optional)
    if "ts" in cols:
        ts = _ts_from_pandas(df[cols["ts"]])
    elif isinstance(df.index, pd.DatetimeIndex):
        ts = _ts_from_pandas(pd.Series(df.index))
    else:
        raise InvalidCandles("candles need a 'ts' column or a DatetimeIndex")
    arrays = {c: _float_from_pandas(c, df[cols[c]]) for c in PRICE_COLUMNS if c in cols}
    volume = _float_from_pandas("volume", df[cols["volume"]]) if "volume" in cols else None
    return Series(ts=ts, open=arrays.get("open"), high=arrays.get("high"), low=arrays.get("low"),
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


_SIDE_WORDS = "+1 long, -1 short, 0 or NULL no position"


def _side_from_arrow(col: pa.ChunkedArray) -> np.ndarray:
    return side_values(_float_from_arrow("side", col, f"numeric ({_SIDE_WORDS})"))


def _side_from_pandas(s: pd.Series) -> np.ndarray:
    if not (pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)):
        raise InvalidCandles(f"column side must be numeric ({_SIDE_WORDS}), got {s.dtype}")
    return side_values(np.ascontiguousarray(s.to_numpy(dtype=np.float64, na_value=np.nan)))


def side_floats(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A side column as float64 (NaN where NULL), checked as ``side_values``
    checks it: what ``ingest`` stores beside the candles."""
    if isinstance(col, pa.Array):
        col = pa.chunked_array([col])
    values = _float_from_arrow("side", col, f"numeric ({_SIDE_WORDS})")
    side_values(values)
    return values


def side_values(side: np.ndarray) -> np.ndarray:
    """Positions (int8: +1 long, -1 short, 0 none) from a float64 side
    column, or InvalidCandles naming the first row whose value is not +1,
    -1, 0 or NULL/NaN."""
    out = np.empty(side.shape[0], np.int8)
    if cpu.positions(side, out):
        return out
    bad = ~(np.isnan(side) | (side == 1.0) | (side == -1.0) | (side == 0.0))
    i = int(np.flatnonzero(bad)[0])
    raise InvalidCandles(f"side at row {i} is {shown(side[i])}: a side must be {_SIDE_WORDS} "
                         f"({int(bad.sum())} such row(s))", row=i)


def _no_volume(series: Series) -> tuple[np.ndarray, bool]:
    if series.volume is None:
        return series.close, False  # any float64 array; not read
    return series.volume, True


def _prices(series: Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """open, high, low, close for the candle rules.  A missing column stands
    in as the value no rule can fault (open as close, high as max(open, close),
    low as min(open, close)), so only the rules between present columns apply."""
    close = series.close
    open_ = close if series.open is None else series.open
    high, low = series.high, series.low
    if high is None:
        high = close if series.open is None else np.maximum(open_, close)
    if low is None:
        low = close if series.open is None else np.minimum(open_, close)
    return open_, high, low, close


def defect_codes(series: Series) -> np.ndarray:
    """Per-row defect bits (0 = good).  Dropping every non-zero row leaves a
    valid series; ``describe`` turns a code into words."""
    volume, check = _no_volume(series)
    return cpu.defect_codes(series.ts, *_prices(series), volume, check)


def validate(series: Series, on_invalid: str = "raise") -> Series:
    """Return a series that meets the contract, or raise naming the first bad row.

    ``on_invalid="drop"`` drops malformed rows instead (each out-of-order row
    is judged against the last row kept).
    """
    return validate_rows(series, on_invalid)[0]


def validate_rows(series: Series, on_invalid: str = "raise") -> tuple[Series, np.ndarray | None]:
    """``validate``, and which input rows the series kept (None: all)."""
    if on_invalid not in ("raise", "drop"):
        raise InvalidInput(f"on_invalid must be 'raise' or 'drop', got {on_invalid!r}")
    volume, check = _no_volume(series)
    first = cpu.first_defect(series.ts, *_prices(series), volume, check)
    if first < 0:
        return series, None
    if on_invalid == "raise":
        raise InvalidCandles(_row_message(series, first), row=first)
    keep = defect_codes(series) == 0

    def kept(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[keep]

    return read_only(Series(
        ts=series.ts[keep], open=kept(series.open), high=kept(series.high),
        low=kept(series.low), close=series.close[keep], volume=kept(series.volume),
        side=kept(series.side),
    )), keep


def _row_message(series: Series, i: int) -> str:
    o, h, lo, c = _prices(series)
    code = int(core.candle_defects(o[i], h[i], lo[i], c[i],
                                   0.0 if series.volume is None else series.volume[i],
                                   series.volume is not None))
    if code == 0:
        code = core.BAD_TS_ORDER
    when = pd.Timestamp(int(series.ts[i]), unit="ms", tz="UTC").isoformat()
    present = (("open", series.open), ("high", series.high), ("low", series.low), ("close", series.close))
    values = " ".join(f"{name}={shown(a[i])}" for name, a in present if a is not None)
    if code & core.BAD_VOLUME and series.volume is not None:
        values += f" volume={shown(series.volume[i])}"
    if code & core.BAD_TS_ORDER:
        prev = pd.Timestamp(int(series.ts[i - 1]), unit="ms", tz="UTC").isoformat()
        values = f"previous ts {prev}"
    return f"malformed candle at row {i} (ts {when}): {describe(code)} [{values}]"
