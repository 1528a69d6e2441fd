"""Labels handed back as the caller's kind of frame.

``compute_series`` makes an Arrow table: ``ts`` (int64 ms UTC), then each
label's columns with NULL where a value is undefined.  ``compute_labels``
returns it as it is, or as a pandas or polars DataFrame:

- pandas: the input's index (the rows kept), so ``candles.join(labels)``
  lines up; integer labels as pandas' nullable ``Int8``/``Int32``/``UInt8``
  (NULL stays ``<NA>``, not a float), floats as float64 with NaN for NULL.
  A ``ts`` column only when the input had one (as the input gave it); time
  from a DatetimeIndex stays in the index.  List columns (``barrier_grid``)
  keep their Arrow type (``pd.ArrowDtype``): each cell a list, NULL
  elements as None.
- polars: the Arrow types as they are (NULL stays null); ``ts`` as the input
  gave it (from a DatetimeIndex: its values).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..candles import frames
from ..errors import InvalidInput

OUTPUTS = ("arrow", "pandas", "polars")

_NULLABLE_INTS = {
    pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(), pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(), pa.uint64(): pd.UInt64Dtype(),
}


def choose(candles: Any, output: str | None) -> str:
    """The kind of frame to return: ``output``, else the input's own kind."""
    if output is None:
        return frames.kind(candles) or "arrow"  # not a frame: to_series says so
    if output not in OUTPUTS:
        raise InvalidInput(f"output must be one of {', '.join(map(repr, OUTPUTS))}, got {output!r}")
    if output == "polars":
        _polars()
    return output


def _polars() -> Any:
    """polars, an optional dependency (the ``polars`` extra)."""
    try:
        import polars
    except ImportError:
        raise InvalidInput("output='polars' needs polars: pip install 'gpubackfill[polars]'") from None
    return polars


def shape(table: pa.Table, candles: Any, keep: np.ndarray | None, output: str) -> Any:
    """``table`` (from ``candles``, whose rows ``keep`` were kept; None: all)
    as ``output``."""
    if output == "arrow":
        return table
    if output == "pandas":
        return _to_pandas(table, candles, keep)
    pl = _polars()
    ts = _ts_as_arrow(candles)
    if ts is not None:
        table = table.set_column(0, "ts", ts if keep is None else ts.filter(pa.array(keep)))
    return pl.from_arrow(table)


def _to_pandas(table: pa.Table, candles: Any, keep: np.ndarray | None) -> pd.DataFrame:
    out = table.drop_columns(["ts"]).to_pandas(types_mapper=_pandas_type)
    if isinstance(candles, pd.DataFrame):
        index = candles.index
        name = _ts_name(candles)
        ts = None if name is None else candles[name].array
    else:
        index = pd.RangeIndex(_num_rows(candles))
        ts = _ts_as_arrow(candles).to_pandas().array  # type: ignore[union-attr]
    out.index = index if keep is None else index[keep]
    if ts is not None:
        out.insert(0, "ts", ts if keep is None else ts[keep])
    return out


def _pandas_type(t: pa.DataType) -> Any:
    if pa.types.is_list(t):
        return pd.ArrowDtype(t)
    return _NULLABLE_INTS.get(t)


def _ts_name(candles: Any) -> str | None:
    for name in frames.column_names(candles):
        if name.strip().lower() == "ts":
            return name
    return None


def _num_rows(candles: Any) -> int:
    return int(candles.num_rows if isinstance(candles, (pa.Table, pa.RecordBatch)) else len(candles))


def _ts_as_arrow(candles: Any) -> pa.Array | pa.ChunkedArray | None:
    """The input's time as it gave it: its ts column, else its DatetimeIndex."""
    name = _ts_name(candles)
    if isinstance(candles, pd.DataFrame):
        return pa.array(candles.index if name is None else candles[name])
    if isinstance(candles, (pa.Table, pa.RecordBatch)):
        return candles.column(name)
    return None if name is None else candles.get_column(name).to_arrow()  # polars
