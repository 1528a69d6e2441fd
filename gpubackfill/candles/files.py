"""Candle files in, a candle table out (``gpubackfill ingest PATH``).

``read_candles(path, tz=None, layout=None)`` reads CSV (``.csv``, ``.csv.gz``) and Parquet
(``.parquet``, ``.pq``) files and returns a pyarrow Table with ``ts`` (int64
milliseconds UTC), ``open``, ``high``, ``low``, ``close`` and, when the file
has one, ``volume`` and ``side`` (all float64), one row per file row in file order.
``iter_candles(path, tz=None)`` yields the same rows as tables of
``BATCH_ROWS`` rows, holding one batch (and a Parquet row group) at a time:
``gpubackfill ingest`` reads files of any size that way.
Nothing is sorted, dropped or checked against the candle rules here: that is
``gpubackfill.candles.frames.validate``'s job, so the caller can report the rows it
rejects.

A CSV file's separator is the most frequent of ``,;\t|`` in its first line,
and its decimal mark ``,`` when the separator is not a comma and the first
row's prices are written ``1,0716``.  ``Layout`` (``ingest --columns
--date-format --sep --decimal``) says what these defaults cannot: a headerless
file's column names, which column is which field, the format of its times.
Columns are matched ignoring case, surrounding blanks and MetaTrader's angle
brackets (``<CLOSE>``):

- time: the first of ``ts``, ``time``, ``timestamp``, ``datetime``, ``date``,
  ``open_time``, ``gmt time`` (Dukascopy) present.  If the chosen column holds times of day only
  (``03:04:00``) and there is also a ``date`` column, the two are joined, as
  in MetaTrader exports.  A Parquet file written from a pandas frame with an
  unnamed DatetimeIndex has its index used when no column matches.
- ``open``, ``high``, ``low``, ``close``;
- volume (optional): the first of ``volume``, ``vol``, ``tick_volume``,
  ``tickvol``;
- ``side`` (optional): each row's position for labels that take sides
  (+1 long, -1 short, 0 or empty none; NaN in the table where empty); any
  other value is refused, naming its row.

Time values may be:

- epoch numbers (integers or floats): seconds, milliseconds, microseconds or
  nanoseconds, told apart by the median magnitude of the column's first
  ``BATCH_ROWS`` values (below 1e11 seconds, below 1e14 milliseconds, below
  1e17 microseconds, else nanoseconds), one unit for the whole column;
  epochs are UTC whatever ``tz`` says;
- text: ``YYYY-MM-DD`` (also ``.`` or ``/`` between the parts) optionally
  followed by `` HH[:MM[:SS[.fff]]]`` or ``THH...``, and optionally by a zone:
  ``Z``, ``UTC``, ``GMT``, ``+HH:MM``, ``+HHMM`` or ``+HH``; Arrow's ISO 8601
  parser reads it (``pyarrow`` casts, see ``_parse_text``);
- text with the year last, ``DD.MM.YYYY`` or ``MM/DD/YYYY`` (``.``, ``/`` or
  ``-``), then a time as above: day or month first as the first batch's
  rows show (a first number above 12: day first; a second: month first);
  dotted dates where every row reads either way are day first, others are
  refused, naming the ``--date-format`` that settles them;
- text in ``layout.date_format`` (strftime), read by Arrow's strptime, or by
  pandas' where the format has ``%f``;
- Parquet/Arrow timestamps (with or without a zone) and dates.

Times without a zone are taken in ``tz`` (an IANA name such as
``"Europe/London"``) when given, else UTC.  Local times repeated when clocks
go back are resolved by file order (the first pass is the earlier instant);
a local time skipped when clocks go forward is an error.  Sub-millisecond
digits are dropped (floored).

Errors are ``InvalidInput``: an unsupported extension, a missing column (the
message lists the columns found), an unreadable file.  A value that cannot be
read (a time that is missing or does not parse, a price that is not a number)
raises ``InvalidCandles`` naming the first bad row (0-based, as in
``gpubackfill.candles.frames``; for CSV also its line in the file) and the value.
Empty and ``NaN`` prices become NaN and are left to validation.
"""

from __future__ import annotations

import csv
import gzip
import re
import zoneinfo
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ..errors import InvalidCandles, InvalidInput
from .frames import PRICE_COLUMNS
from .layout import TIME_OF_DAY_RE, Layout, guess_decimal, headerless_hint, is_data

__all__ = ["CandleFile", "Layout", "iter_candles", "read_candles"]

TIME_NAMES = ("ts", "time", "timestamp", "datetime", "date", "open_time", "gmt time")
VOLUME_NAMES = ("volume", "vol", "tick_volume", "tickvol")
EXTENSIONS = (".csv", ".csv.gz", ".parquet", ".pq")

_PANDAS_INDEX = "__index_level_0__"
_DELIMITERS = (",", ";", "\t", "|")
_CSV_NULLS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
              "1.#QNAN", "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null"]

_NUMBER_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_MS_PER_DAY = 86_400_000
_MAX_MS = 2**62  # far beyond any date; keeps int64 arithmetic safe


class _BadValue(Exception):
    """A value at ``row`` that cannot be read; turned into InvalidCandles by the caller."""

    def __init__(self, row: int, value: object, reason: str):
        super().__init__(reason)
        self.row, self.value, self.reason = row, value, reason


class _BadType(Exception):
    """A column whose type cannot hold the values asked of it."""


# --------------------------------------------------------------------------
# entry points

# Rows per batch that ``iter_candles`` yields (Parquet: at most this many).
# Bounds what reading holds, with the Parquet row group being read.
BATCH_ROWS = 1 << 20
_CSV_BLOCK_BYTES = 1 << 21  # Arrow parses this much at a time, reading a few dozen ahead


def read_candles(path: str | Path, *, tz: str | None = None, layout: Layout | None = None) -> pa.Table:
    """Read a CSV or Parquet candle file; see the module docstring."""
    reader = CandleFile(path, tz=tz, layout=layout)
    parts = list(reader)
    return pa.concat_tables(parts) if parts else reader.empty()


def iter_candles(path: str | Path, *, tz: str | None = None, layout: Layout | None = None,
                 batch_rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """``read_candles`` batch by batch, in file order, for files larger than memory."""
    return iter(CandleFile(path, tz=tz, layout=layout, batch_rows=batch_rows))


class CandleFile:
    """A candle file opened for reading in batches (``read_candles``, ``iter_candles``).

    Opening checks the extension, the time zone, that the file exists and that
    it has the columns; iterating yields tables of about ``batch_rows`` rows
    (``ts``, ``open``, ``high``, ``low``, ``close``, and ``volume`` and
    ``side`` where the file has them), each parsed as the module docstring says.  Rows named in
    errors are rows of the file.  What the whole column decides is taken from
    the first batch and kept: the unit of epoch numbers (the median magnitude
    of the first ``batch_rows`` rows).  A run of repeated local times (clocks
    going back) may span batches: the file order decides as in one batch.
    """

    def __init__(self, path: str | Path, *, tz: str | None = None, layout: Layout | None = None,
                 batch_rows: int = BATCH_ROWS):
        self.path = path = Path(path)
        self.kind = _file_kind(path)
        self.zone = _check_tz(tz)
        self.layout = layout = layout or Layout()
        if not path.is_file():
            raise InvalidInput(f"no such file: {path}")
        self.batch_rows = max(int(batch_rows), 1)
        self.decimal = "."
        if self.kind == "csv":
            self._csv = _CsvLayout(path, layout)
            self.cols = self._csv.cols
            self.decimal = self._csv.decimal
        else:
            layout.for_parquet(path)
            self.cols = _parquet_columns(path, dict(layout.mapping or ()))
        self.names = ["ts", *(f for f in (*PRICE_COLUMNS, "volume", "side") if f in self.cols)]

    @property
    def first_line(self) -> int | None:
        """The line of the file that holds row 0 (None: a Parquet file)."""
        if self.kind != "csv":
            return None
        return 1 if self.layout.names is not None else 2

    @property
    def has_volume(self) -> bool:
        return "volume" in self.cols

    def empty(self) -> pa.Table:
        return pa.table({n: pa.array([], pa.int64() if n == "ts" else pa.float64()) for n in self.names})

    def __iter__(self) -> Iterator[pa.Table]:
        state = _TimeState(self.layout.date_format)
        raw = (self._csv.batches(self.batch_rows) if self.kind == "csv"
               else _parquet_batches(self.path, self.cols, self.batch_rows))
        offset = 0
        for batch in raw:
            if batch.num_rows:
                yield self._convert(batch, offset, state)
                offset += batch.num_rows

    def _convert(self, batch: pa.RecordBatch, offset: int, state: _TimeState) -> pa.Table:
        path, cols = self.path, self.cols
        line_offset = self.first_line or 0

        def where(column: str, row: int) -> str:
            line = f" (line {offset + row + line_offset})" if line_offset else ""
            return f"{path}: column {column!r}, row {offset + row}{line}"

        try:
            date_col = batch.column(cols["date"]) if "date" in cols else None
            ts = _parse_time(batch.column(cols["time"]), self.zone, date_col, state)
        except _BadValue as bad:
            raise InvalidCandles(f"{where(cols['time'], bad.row)}: {bad.reason}: {bad.value!r}",
                                 row=offset + bad.row) from None
        except _BadType as bad:
            raise InvalidInput(f"{path}: column {cols['time']!r} {bad}") from None
        arrays = [pa.array(ts, pa.int64())]
        for field in self.names[1:]:
            try:
                arrays.append(_to_float(batch.column(cols[field]), self.decimal))
            except _BadValue as bad:
                raise InvalidCandles(f"{where(cols[field], bad.row)}: {bad.reason}: {bad.value!r}",
                                     row=offset + bad.row) from None
            except _BadType as bad:
                raise InvalidInput(f"{path}: column {cols[field]!r} {bad}") from None
        if "side" in cols:
            bad_side = _bad_side(arrays[-1])
            if bad_side is not None:
                raise InvalidCandles(f"{where(cols['side'], bad_side)}: a side must be +1, -1, 0 or "
                                     f"empty: {arrays[-1][bad_side].as_py()!r}",
                                     row=offset + bad_side)
        return pa.Table.from_arrays(arrays, names=self.names)


def _bad_side(side: pa.Array) -> int | None:
    """The first row whose side is not +1, -1, 0 or NaN (empty), if any."""
    values = side.to_numpy(zero_copy_only=False)
    ok = np.isnan(values) | (values == 1.0) | (values == -1.0) | (values == 0.0)
    return None if ok.all() else int(np.flatnonzero(~ok)[0])


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    ext = "".join(path.suffixes[-2:]) if path.suffixes else ""
    raise InvalidInput(
        f"cannot read {path}: unsupported file type {ext or '(no extension)'!r}; "
        f"use {', '.join(EXTENSIONS)}"
    )


def _check_tz(tz: str | None) -> str | None:
    if tz is None:
        return None
    if not isinstance(tz, str) or not tz.strip():
        raise InvalidInput(f"tz must be an IANA time zone name such as 'Europe/London', got {tz!r}")
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"unknown time zone {tz!r}; use an IANA name such as 'UTC' or 'Europe/London'"
        ) from None
    return None if tz.upper() in ("UTC", "ETC/UTC", "Z", "GMT", "ETC/GMT") else tz


# --------------------------------------------------------------------------
# columns


def _key(name: str) -> str:
    return str(name).strip().strip("<>").strip().lower()


def _choose_columns(names: list[str], path: Path, mapping: dict[str, str] | None = None) -> dict[str, str]:
    """Map time/open/high/low/close[/volume][/side][/date] to the file's column names;
    ``mapping`` (field -> column, ``--columns time=Gmt time``) first."""
    mapping = dict(mapping or {})
    if "date" in mapping and "time" not in mapping:
        mapping = {"time": mapping.pop("date"), **mapping}  # a date column alone is the time
    by_key: dict[str, str] = {}
    for name in names:
        key = _key(name)
        if key in by_key:
            raise InvalidInput(
                f"{path} has two columns named {key!r} (ignoring case): "
                f"{by_key[key]!r} and {name!r}"
            )
        by_key[key] = name
    cols: dict[str, str] = {}
    for field, column in mapping.items():
        found = column if column in names else by_key.get(_key(column))
        if found is None:
            raise InvalidInput(f"--columns maps {field} to {column!r}, which {path} lacks; "
                               f"found: {', '.join(repr(n) for n in names) or 'none'}")
        cols[field] = found
    taken = set(cols.values())
    by_key = {k: n for k, n in by_key.items() if n not in taken}
    if "time" not in cols:
        time_key = next((k for k in TIME_NAMES if k in by_key), None)
        if time_key is not None:
            cols["time"] = by_key[time_key]
            if time_key == "time" and "date" in by_key and "date" not in cols:
                cols["date"] = by_key["date"]  # used only if 'time' holds times of day
        elif _PANDAS_INDEX in names:
            cols["time"] = _PANDAS_INDEX
    for field in PRICE_COLUMNS:
        if field in by_key and field not in cols:
            cols[field] = by_key[field]
    volume_key = next((k for k in VOLUME_NAMES if k in by_key), None)
    if volume_key is not None and "volume" not in cols:
        cols["volume"] = by_key[volume_key]
    if "side" in by_key and "side" not in cols:
        cols["side"] = by_key["side"]
    missing = [f for f in ("time", *PRICE_COLUMNS) if f not in cols]
    if missing:
        found = ", ".join(repr(n) for n in names) or "none"
        hint = f" (time may be named {', '.join(TIME_NAMES)})" if "time" in missing else ""
        raise InvalidInput(f"{path} lacks column(s) {', '.join(missing)}{hint}; found: {found}; "
                           f"name them with --columns FIELD=COLUMN,...")
    return cols


# --------------------------------------------------------------------------
# readers


class _CsvLayout:
    """A CSV file's delimiter, decimal mark and columns, and its rows in blocks."""

    def __init__(self, path: Path, layout: Layout):
        self.path = path
        lines = _csv_first_lines(path)
        header = lines[0]
        self.delimiter = layout.sep or (max(_DELIMITERS, key=header.count)
                                        if any(d in header for d in _DELIMITERS) else ",")
        fields = next(csv.reader([header], delimiter=self.delimiter), [])
        self.names = list(layout.names) if layout.names is not None else None
        if self.names is not None:
            if len(self.names) != len(fields):
                raise InvalidInput(f"--columns names {len(self.names)} columns but the first line of "
                                   f"{path} has {len(fields)} (separated by {self.delimiter!r}): "
                                   f"{header[:80]!r}")
            first_row = fields
        else:
            first_row = (next(csv.reader([lines[1]], delimiter=self.delimiter), [])
                         if len(lines) > 1 else [])
        try:
            self.cols = _choose_columns(self.names or fields, path, dict(layout.mapping or ()))
        except InvalidInput:
            if self.names is None and is_data(fields):
                raise InvalidInput(headerless_hint(path, header, fields)) from None
            raise
        self.decimal = layout.decimal or guess_decimal(self.delimiter, first_row,
                                                        self.names or fields, self.cols)
        if self.decimal == self.delimiter:
            raise InvalidInput(f"{path}: --decimal and the separator are both {self.delimiter!r}; "
                               f"give --sep")

    def _options(self, text_only: bool) -> tuple[pcsv.ParseOptions, pcsv.ConvertOptions]:
        cols = self.cols
        text_cols = {cols["time"], *([cols["date"]] if "date" in cols else [])}
        types = {name: (pa.string() if text_only or name in text_cols else pa.float64())
                 for name in cols.values()}
        convert = pcsv.ConvertOptions(
            column_types=types, include_columns=list(dict.fromkeys(cols.values())),
            null_values=_CSV_NULLS, strings_can_be_null=False, decimal_point=self.decimal,
        )
        return pcsv.ParseOptions(delimiter=self.delimiter), convert

    def _read_options(self) -> pcsv.ReadOptions:
        return pcsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, column_names=self.names)

    def batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Record batches of ``batch_rows`` rows (the last one fewer).

        Arrow's streaming reader parses blocks of ``_CSV_BLOCK_BYTES`` and
        reads a few dozen ahead, so blocks are kept small and joined here.
        Prices are read as numbers; from a block where one is not, the rest
        of the file is read as text, so that the caller names the row
        (``_to_float``)."""
        done, text_only = 0, False
        while True:
            parse, convert = self._options(text_only)
            skip = done
            pending: list[pa.RecordBatch] = []
            rows = 0
            try:
                with pcsv.open_csv(self.path, read_options=self._read_options(),
                                   parse_options=parse, convert_options=convert) as reader:
                    for batch in reader:
                        if skip >= batch.num_rows:
                            skip -= batch.num_rows
                            continue
                        if skip:
                            batch, skip = batch.slice(skip), 0
                        pending.append(batch)
                        rows += batch.num_rows
                        while rows >= batch_rows:
                            joined = _one_batch(pending)
                            yield joined.slice(0, batch_rows)
                            done += batch_rows
                            rest = joined.slice(batch_rows)
                            pending, rows = ([rest] if rest.num_rows else []), rest.num_rows
                if rows:
                    yield _one_batch(pending)
                    done += rows
                return
            except pa.ArrowInvalid as exc:
                if text_only or "conversion error" not in str(exc):
                    raise InvalidInput(f"cannot read {self.path} as CSV: {exc}") from None
                text_only = True  # a price that is not a number: read on as text


def _one_batch(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def _csv_first_lines(path: Path) -> list[str]:
    """The file's first line (the header, or the first row of a headerless
    file) and, when there is one, the next."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as raw:
            lines = [raw.readline(1 << 20), raw.readline(1 << 20)]
    except (OSError, EOFError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None
    text = [lines[0].decode("utf-8-sig", errors="replace").rstrip("\r\n"),
            lines[1].decode("utf-8", errors="replace").rstrip("\r\n")]
    if not text[0].strip():
        raise InvalidInput(f"{path} is empty or has no header line")
    return text if text[1].strip() else text[:1]


def _parquet_columns(path: Path, mapping: dict[str, str]) -> dict[str, str]:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"cannot read {path} as Parquet: {exc}") from None
    return _choose_columns(list(schema.names), path, mapping)


def _parquet_batches(path: Path, cols: dict[str, str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The file's rows, ``batch_rows`` at a time (a row group at most is held)."""
    try:
        # pre_buffer (the default) reads whole row groups ahead: RSS rose by
        # ~250 MB for a file of 1M-row groups; buffered reads stay flat.
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"cannot read {path} as Parquet: {exc}") from None
    with pf:
        batches = pf.iter_batches(batch_size=batch_rows, columns=list(dict.fromkeys(cols.values())))
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:
                raise InvalidInput(f"cannot read {path} as Parquet: {exc}") from None
            yield batch


# --------------------------------------------------------------------------
# prices


def _to_float(col: pa.ChunkedArray, decimal: str = ".") -> pa.Array:
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = col.type
    if (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t)
            or pa.types.is_null(t)):
        out = col.cast(pa.float64())
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        text = pc.utf8_trim_whitespace(col.cast(pa.string()))
        is_null = pc.is_in(text, value_set=pa.array(_CSV_NULLS))
        text = pc.if_else(is_null, pa.scalar(None, pa.string()), text)
        if decimal == ".":
            out = _cast_or_locate(text, pa.float64(), "not a number")
        else:  # Arrow's cast reads a decimal point only
            try:
                out = _cast_or_locate(pc.replace_substring(pc.replace_substring(text, ".", "\x00"),
                                                           decimal, "."), pa.float64(), "not a number")
            except _BadValue as bad:
                raise _BadValue(bad.row, text[bad.row].as_py(), bad.reason) from None
    else:
        raise _BadType(f"holds {t}, not numbers")
    out = out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out
    if out.null_count:
        out = pc.fill_null(out, np.nan)
    return out


def _cast_or_locate(arr: pa.Array | pa.ChunkedArray, to: pa.DataType, reason: str) -> pa.Array:
    """``arr.cast(to)``, or _BadValue at the first element that does not cast."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    try:
        return arr.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    lo, hi = 0, len(arr)  # the first bad element is in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            arr.slice(lo, mid - lo).cast(to)
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    raise _BadValue(lo, arr[lo].as_py(), reason)


# --------------------------------------------------------------------------
# times


class _TimeState:
    """What the first batch of a time column decided, for the batches after
    it: the unit of epoch numbers (units per ms), and where the last row left
    a run of repeated local times (``_localize``)."""

    def __init__(self, date_format: str | None = None) -> None:
        self.unit: float | None = None
        self.dst: tuple[bool, int, bool] | None = None  # ambiguous, early ms, run stepped back
        self.date_format = date_format  # the user's; grows a time of day for a separate time column
        self.day_first: bool | None = None  # of dates written DD.MM.YYYY or MM/DD/YYYY


def _parse_time(col: pa.ChunkedArray | pa.Array, tz: str | None,
                date_col: pa.ChunkedArray | pa.Array | None = None,
                state: _TimeState | None = None) -> np.ndarray:
    """A time column of any supported form -> int64 ms UTC (numpy).  ``state``
    carries what one batch decides to the next (``CandleFile``)."""
    state = state if state is not None else _TimeState()
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = col.type
    if len(col) == 0:
        return np.empty(0, np.int64)
    if pa.types.is_time(t) and date_col is not None:
        return _parse_text(_join_date_time(date_col, col.cast(pa.string())), tz, state)
    if col.null_count:
        first = int(np.argmax(~col.is_valid().to_numpy(zero_copy_only=False)))
        raise _BadValue(first, None, "missing time")
    if pa.types.is_timestamp(t):
        ms = _int64_ms(col.cast(pa.int64()).to_numpy(), _UNIT_PER_MS[t.unit])
        return ms if t.tz is not None else _localize(ms, tz, state=state)
    if pa.types.is_date(t):
        days = col.cast(pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64)
        return _localize(days * _MS_PER_DAY, tz, state=state)
    if pa.types.is_integer(t):
        return _epoch_int(col.cast(pa.int64()).to_numpy(), state)
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return _epoch_float(col.cast(pa.float64()).to_numpy(), state)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = pc.utf8_trim_whitespace(col.cast(pa.string()))
        if date_col is not None and _looks(text, TIME_OF_DAY_RE):
            if state.date_format is not None and not re.search("%[HIT]", state.date_format):
                # --date-format the date column's alone: add the time of day's
                state.date_format += " " + _time_of_day_format(_first(text))
            text = _join_date_time(date_col, text)
        return _parse_text(text, tz, state)
    raise _BadType(f"holds {t}, not times")


def _first(text: pa.Array) -> str:
    return next((v for v in text.slice(0, 1000).to_pylist() if v), "")


def _time_of_day_format(value: str) -> str:
    """The strftime format of a time of day such as ``09:00`` or ``09:00:00.000``."""
    fraction = re.search(r":\d\d([.,])\d+$", value)
    return "%H:%M" + (":%S" if value.count(":") >= 2 else "") + (f"{fraction.group(1)}%f" if fraction else "")


_UNIT_PER_MS = {"s": 1 / 1000, "ms": 1, "us": 1000, "ns": 1_000_000}


def _int64_ms(values: np.ndarray, per_ms: float) -> np.ndarray:
    """Integers in some unit -> int64 ms, flooring finer units."""
    if per_ms == 1:
        return values.astype(np.int64, copy=False)
    if per_ms < 1:  # seconds
        factor = int(round(1 / per_ms))
        bad = np.abs(values) > _MAX_MS // factor
        if bad.any():
            i = int(np.argmax(bad))
            raise _BadValue(i, int(values[i]), "time out of range")
        return values.astype(np.int64) * factor
    return np.floor_divide(values.astype(np.int64, copy=False), int(per_ms))


def _epoch_unit(magnitude: float) -> float:
    """Units per millisecond of an epoch column, from its median magnitude."""
    if magnitude < 1e11:
        return 1 / 1000  # seconds (1e11 s is the year 5138)
    if magnitude < 1e14:
        return 1         # milliseconds (1e14 ms is the year 5138)
    if magnitude < 1e17:
        return 1000      # microseconds
    return 1_000_000     # nanoseconds


def _state_unit(state: _TimeState | None, magnitudes: Callable[[], np.ndarray]) -> float:
    """The column's epoch unit: the first batch's, from its median magnitude."""
    if state is not None and state.unit is not None:
        return state.unit
    unit = _epoch_unit(float(np.median(magnitudes())))
    if state is not None:
        state.unit = unit
    return unit


def _epoch_int(values: np.ndarray, state: _TimeState | None = None) -> np.ndarray:
    unit = _state_unit(state, lambda: np.abs(values.astype(np.float64)))
    return _int64_ms(values, unit)


def _epoch_float(values: np.ndarray, state: _TimeState | None = None) -> np.ndarray:
    finite = np.isfinite(values)
    if not finite.all():
        i = int(np.argmax(~finite))
        raise _BadValue(i, float(values[i]), "not a time")
    unit = _state_unit(state, lambda: np.abs(values))
    ms = np.floor(values / unit) if unit > 1 else np.rint(values * (1 / unit))
    bad = np.abs(ms) > _MAX_MS
    if bad.any():
        i = int(np.argmax(bad))
        raise _BadValue(i, float(values[i]), "time out of range")
    return ms.astype(np.int64)


def _looks(text: pa.Array, pattern: re.Pattern) -> bool:
    """Whether the first non-empty value matches ``pattern`` in full."""
    for value in text.slice(0, 1000).to_pylist():
        if value:
            return pattern.fullmatch(value) is not None
    return False


def _join_date_time(date_col: pa.ChunkedArray, time_text: pa.Array) -> pa.Array:
    date_col = date_col.combine_chunks() if isinstance(date_col, pa.ChunkedArray) else date_col
    if pa.types.is_dictionary(date_col.type):
        date_col = date_col.cast(date_col.type.value_type)
    date_text = pc.utf8_trim_whitespace(date_col.cast(pa.string()))
    return pc.binary_join_element_wise(date_text, time_text, " ")


# Text times are read by Arrow.  The fast path casts the column (in slices)
# with Arrow's ISO 8601 parser (YYYY-MM-DD, then "T" or " " and
# HH[:MM[:SS[.fff]]], then Z, +HH, +HHMM or +HH:MM), to the unit and the
# naive-or-zoned type that the first value needs, after two literal rewrites
# that the first value asks for: dotted or slashed dates (MetaTrader) get
# dashes, a zone written UTC or GMT becomes Z.  The first row that cast
# rejects (found by bisection in its slice) is checked alone: if it does not
# read either, it is the first bad row and is named; if it does, the column
# has rows in another form (naive and zoned rows mixed, one-digit fields, a
# comma before the fraction, ...) and every value is taken apart by one
# regular expression, put together again as ISO 8601 and cast, several times
# slower than the fast path (bench/RESULTS.md, "CSV dates").
_TEXT_TIME_RE = (
    r"^(?P<y>\d{4})[-./](?P<mo>\d{1,2})[-./](?P<d>\d{1,2})"
    r"(?:(?:[Tt]| +)(?P<h>\d{1,2})(?::(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d+))?)?)?"
    r"(?: *(?P<z>[Zz]|UTC|GMT|[+-]\d{2}(?::?\d{2})?))?)?$"
)
_ISO_TYPES = [pa.timestamp(unit, zone) for unit in ("ms", "us", "ns") for zone in (None, "UTC")]


def _parse_text(text: pa.Array, tz: str | None, state: _TimeState | None = None) -> np.ndarray:
    """Text times -> int64 ms UTC: epoch numbers, or dates/times with or without zones."""
    if text.null_count:
        first = int(np.argmax(~text.is_valid().to_numpy(zero_copy_only=False)))
        raise _BadValue(first, None, "missing time")
    if state is not None and state.date_format is not None:
        return _parse_format(text, state.date_format, tz, state)
    if _looks(text, _DAY_MONTH_RE):  # rewritten as YYYY-MM-DD..., then read as ISO 8601
        day_first = _day_first(text, state)
        iso = pc.replace_substring_regex(text, pattern=r"^(\d{1,2})[./-](\d{1,2})[./-](\d{4})",
                                         replacement=r"\3-\2-\1" if day_first else r"\3-\1-\2")
        try:
            return _parse_text(iso, tz, state)
        except _BadValue as bad:
            raise _BadValue(bad.row, text[bad.row].as_py(), bad.reason) from None
    if _looks(text, _NUMBER_RE):
        try:
            return _epoch_int(text.cast(pa.int64()).to_numpy(), state)
        except pa.ArrowInvalid:
            return _epoch_float(_cast_or_locate(text, pa.float64(), "not a time").to_numpy(), state)
    iso = _as_iso(text, text[0].as_py())
    stamp = _iso_type(iso[0].as_py())
    odd = 0  # the first row the fast path does not read
    if stamp is not None:
        values = _cast_iso(iso, stamp)
        if not isinstance(values, int):
            ms = _int64_ms(values, _UNIT_PER_MS[stamp.unit])
            return ms if stamp.tz is not None else _localize(ms, tz, state=state)
        odd = values
    try:
        _parse_text_parts(text.slice(odd, 1))
    except _BadValue:
        raise _BadValue(odd, text[odd].as_py(), "not a time") from None
    ms, naive = _parse_text_parts(text)
    return _localize(ms, tz, where=naive, state=state)


# Dates written day or month first (19.04.2017, 04/19/2017), the year last.
_DAY_MONTH_RE = re.compile(r"(\d{1,2})([./-])(\d{1,2})\2(\d{4})(?:[ Tt].*)?")


def _leading_numbers(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The first and second numbers of every row's date (0 where there is none)."""
    try:  # by position, several times faster where every row has two digits each
        return (pc.utf8_slice_codeunits(text, 0, 2).cast(pa.int32()).to_numpy(),
                pc.utf8_slice_codeunits(text, 3, 5).cast(pa.int32()).to_numpy())
    except pa.ArrowInvalid:
        pass  # a row written otherwise
    parts = pc.extract_regex(text, r"^(?P<a>\d{1,2})[./-](?P<b>\d{1,2})")
    return tuple(pc.fill_null(parts.field(f).cast(pa.int32()), 0).to_numpy()  # type: ignore[return-value]
                 for f in ("a", "b"))


def _day_first(text: pa.Array, state: _TimeState | None) -> bool:
    """Whether dates written ``NN?NN?YYYY`` give the day first: the rows say
    so when one has a first number above 12 (day first) or a second one
    (month first); the first batch decides for the file.  Where every row
    could be either, dotted dates are day first (no one writes 04.19.2017)
    and the others are refused, naming the formats to choose from."""
    if state is not None and state.day_first is not None:
        return state.day_first
    a, b = _leading_numbers(text)
    a_big, b_big = np.flatnonzero(a > 12), np.flatnonzero(b > 12)
    if len(a_big) or len(b_big):
        day_first = bool(len(a_big) and (not len(b_big) or a_big[0] < b_big[0]))
    else:
        sample = _first(text)
        if _DAY_MONTH_RE.match(sample).group(2) != ".":  # type: ignore[union-attr]
            raise _BadType(
                f"holds dates such as {sample!r} that read either way (day and month are both 12 "
                f"or less in every row): say which comes first with --date-format "
                f"{_suggest_format(sample, False)!r} or {_suggest_format(sample, True)!r}")
        day_first = True
    if state is not None:
        state.day_first = day_first
    return day_first


def _suggest_format(value: str, day_first: bool) -> str:
    """A strftime format for ``value`` (``04/05/2017 09:00``), day or month first."""
    m = _DAY_MONTH_RE.match(value)
    assert m is not None
    sep = m.group(2)
    date = sep.join(["%d", "%m", "%Y"] if day_first else ["%m", "%d", "%Y"])
    rest = value[m.end(4):]
    time = re.match(r"([ T]+)(\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)", rest)
    return date + (time.group(1) + _time_of_day_format(time.group(2)) if time else "")


def _parse_format(text: pa.Array, fmt: str, tz: str | None, state: _TimeState | None) -> np.ndarray:
    """Text times in a strftime format -> int64 ms UTC.  Arrow's strptime
    where it can (it reads no %f), else pandas'; both vectorised."""
    zoned = "%z" in fmt or "%Z" in fmt
    if "%f" not in fmt:
        try:
            stamps = pc.strptime(text, format=fmt, unit="ms", error_is_null=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise _BadType(f"cannot be read with --date-format {fmt!r}: {exc}") from None
        ms = stamps.cast(pa.int64()).to_numpy(zero_copy_only=False)
        bad = ~stamps.is_valid().to_numpy(zero_copy_only=False)
        zoned = stamps.type.tz is not None
    else:
        import pandas as pd

        try:
            parsed = pd.to_datetime(text.to_pandas(), format=fmt, errors="coerce", utc=zoned)
        except ValueError as exc:
            raise _BadType(f"cannot be read with --date-format {fmt!r}: {exc}") from None
        bad = parsed.isna().to_numpy()
        ms = parsed.array.as_unit("ms").asi8 if len(parsed) else np.empty(0, np.int64)
    if bad.any():
        i = int(np.argmax(bad))
        raise _BadValue(i, text[i].as_py(), f"does not match --date-format {fmt!r}")
    ms = np.asarray(ms, np.int64)
    return ms if zoned else _localize(ms, tz, state=state)


_CAST_ROWS = 1 << 16


def _cast_iso(iso: pa.Array, stamp: pa.DataType) -> np.ndarray | int:
    """Arrow's cast of ``iso`` to ``stamp`` as int64, or the first row it rejects.

    Cast in slices: a failing cast costs about a microsecond per row it
    rejects, so a column of another form is given up after one slice.
    """
    out = np.empty(len(iso), np.int64)
    for start in range(0, len(iso), _CAST_ROWS):
        piece = iso.slice(start, _CAST_ROWS)
        try:
            out[start:start + len(piece)] = piece.cast(stamp).cast(pa.int64()).to_numpy()
        except pa.ArrowInvalid:
            try:
                _cast_or_locate(piece, stamp, "not a time")
            except _BadValue as bad:
                return start + bad.row
            raise
    return out


def _as_iso(text: pa.Array, first: str) -> pa.Array:
    """Literal rewrites towards ISO 8601 that the first value asks for."""
    if first[4:5] in (".", "/") and first[7:8] == first[4]:
        text = pc.replace_substring(text, first[4], "-", max_replacements=2)
    for word in (" UTC", " GMT", "UTC", "GMT"):
        if first.endswith(word):
            return pc.replace_substring(text, word, "Z", max_replacements=1)
    return text


def _iso_type(value: str) -> pa.DataType | None:
    """The first of ms/us/ns, naive/UTC timestamps that Arrow casts ``value`` to."""
    for stamp in _ISO_TYPES:
        try:
            pa.array([value]).cast(stamp)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        return stamp
    return None


def _parse_text_parts(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Every value through _TEXT_TIME_RE, rebuilt as ISO 8601 and cast.

    Returns int64 ms (UTC for rows with a zone, local for the rest) and the
    mask of rows without a zone; _BadValue at the first row that does not
    read.  In slices, so that the text made on the way stays small.
    """
    ms = np.empty(len(text), np.int64)
    naive = np.empty(len(text), bool)
    for start in range(0, len(text), _PARTS_ROWS):
        piece = text.slice(start, _PARTS_ROWS)
        try:
            ms[start:start + len(piece)], naive[start:start + len(piece)] = _parse_parts(piece)
        except _BadValue as bad:
            raise _BadValue(start + bad.row, bad.value, bad.reason) from None
    return ms, naive


_PARTS_ROWS = 1 << 20
_UTC_WORDS = pa.array(["", "z", "Z", "UTC", "GMT"])  # "": naive, read as UTC here


def _parse_parts(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    parts = pc.extract_regex(text, _TEXT_TIME_RE)
    matched = parts.is_valid().to_numpy(zero_copy_only=False)
    end = len(text) if matched.all() else int(np.argmax(~matched))

    def two(name: str) -> pa.Array:  # two digits; an absent part ("") is "00"
        return pc.utf8_lpad(parts.field(name), width=2, padding="0")

    fraction = pc.utf8_rpad(pc.utf8_slice_codeunits(parts.field("f"), 0, 3), width=3, padding="0")
    zone = parts.field("z")
    naive = pc.equal(zone, "").to_numpy(zero_copy_only=False)
    zone = pc.if_else(pc.is_in(zone, value_set=_UTC_WORDS), "+00:00", zone)
    iso = pc.binary_join_element_wise(parts.field("y"), "-", two("mo"), "-", two("d"), "T", two("h"), ":",
                                      two("mi"), ":", two("s"), ".", fraction, zone, "")
    try:
        stamps = _cast_or_locate(iso.slice(0, end), pa.timestamp("ms", "UTC"), "not a time")
    except _BadValue as bad:
        raise _BadValue(bad.row, text[bad.row].as_py(), bad.reason) from None
    if end < len(text):
        raise _BadValue(end, text[end].as_py(), "not a time")
    return stamps.cast(pa.int64()).to_numpy(), naive


def _localize(ms: np.ndarray, tz: str | None, where: np.ndarray | None = None,
              state: _TimeState | None = None) -> np.ndarray:
    """Naive local ms -> UTC ms in ``tz`` (None: already UTC).

    A local time that occurs twice (clocks going back) is the earlier instant
    unless the file has already passed it: within each run of such rows, rows
    from the first step backwards in time on are the later instant.  A local
    time that does not exist (clocks going forward) raises _BadValue.
    ``state.dst`` carries a run from the batch before (``CandleFile``) and is
    left where this batch's last row leaves it.
    """
    ms = np.asarray(ms, dtype=np.int64)
    if tz is None:
        return ms
    rows = np.arange(len(ms)) if where is None else np.flatnonzero(where)
    if len(rows) == 0:
        return ms
    local = pa.array(ms[rows], pa.timestamp("ms"))
    early = pc.assume_timezone(local, timezone=tz, ambiguous="earliest",
                               nonexistent="earliest").cast(pa.int64()).to_numpy()
    late = pc.assume_timezone(local, timezone=tz, ambiguous="latest",
                              nonexistent="latest").cast(pa.int64()).to_numpy()
    diff = late - early
    gap = (diff > 0) & (diff < 60_000)  # nonexistent: the instants either side of the jump
    if gap.any():
        j = int(np.argmax(gap))
        local_ms = int(ms[rows[j]])
        unit = "s" if local_ms % 1000 == 0 else "ms"
        value = str(np.datetime64(local_ms, "ms").astype(f"datetime64[{unit}]")).replace("T", " ")
        raise _BadValue(int(rows[j]), value,
                        f"local time does not exist in {tz} (clocks went forward)")
    result = early
    ambiguous = diff >= 60_000
    # The row before this batch's first (in the batch before, if any).
    prev_ambiguous, prev_early, prev_backed = (state.dst if state is not None and state.dst
                                               else (False, 0, False))
    if ambiguous.any():
        # A run of ambiguous rows: the repeat starts where local time steps back.
        back = np.zeros(len(early), bool)
        back[1:] = early[1:] <= early[:-1]
        back[0] = prev_ambiguous and bool(early[0] <= prev_early)
        back &= ambiguous
        back[1:] &= ambiguous[:-1]
        run_start = ambiguous & ~np.r_[prev_ambiguous, ambiguous[:-1]]
        run_id = np.cumsum(run_start)  # 0: a run that began in the batch before
        backs = np.cumsum(back)
        backs_before_run = np.zeros(run_id[-1] + 1, np.int64)
        starts = np.flatnonzero(run_start)
        backs_before_run[run_id[starts]] = backs[starts] - back[starts]
        later = ambiguous & ((backs - backs_before_run[run_id] > 0) | ((run_id == 0) & prev_backed))
        result = np.where(later, late, early)
        last_backed = bool(later[-1])
    else:
        last_backed = False
    if state is not None:
        state.dst = (bool(ambiguous[-1]), int(early[-1]), last_backed)
    out = ms.copy()
    out[rows] = result
    return out
