"""Ingest: candles into the store in batches, so memory does not grow with the input.

``ingest_file`` reads a CSV or Parquet file batch by batch
(``candles.files.iter_candles``); ``ingest_table`` takes a table already in
memory.  Both end in ``_load``, which validates and writes ``BATCH_ROWS`` rows
at a time through ``Store.ingest`` (a row whose ts is stored already replaces
it when its values differ and is skipped when they are the same; each batch
that inserts or updates rows logs their span in ``candle_changes``, which is
what ``update`` reads to find stale chunks).

What holds for the whole input, not for a batch:

- Nothing is written for an input that is refused: a value that does not
  parse, a missing column (``InvalidInput``/``InvalidCandles`` from reading),
  or a spacing that is not the granularity's (``cadence.check_step``, over all
  the rows in time order).  So a file is read in full before anything is
  written: its rows, parsed, go to a temporary Arrow IPC file (``_Spill``,
  about 64 bytes a row, in the system's temporary folder, ``TMPDIR``), which
  the writing pass then reads back.
- Rows are validated and written in time order, stably (of two rows with one
  ts the one earlier in the file comes first, and the other is rejected as a
  duplicate), exactly as if the whole input had been sorted at once: a row is
  checked against the last row kept, across batches too.  A file in time
  order is read back as it is; any other (newest first, shuffled) is spilled
  in sorted runs, one per read batch, that are merged back (``_merged``)
  holding one block of each run.
- Rejected rows are reported by their row in the input, in that order.
  They are found before anything is written (one pass over the sorted rows,
  which also counts the steps of an input not in time order), so that an
  input with more of them than ``max_rejects`` allows (none by default, as a
  database load) is refused whole; ``rejects`` names a CSV file that gets
  every one of them, with its line in the file and the reason, refused or not.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from kernels import core

from ..candles import cadence, frames
from ..candles.files import BATCH_ROWS as READ_ROWS
from ..candles.files import CandleFile, Layout
from ..common.times import iso
from ..errors import DependencyError, InvalidCandles, InvalidInput
from ..labels import Series
from .clickhouse_store import IngestReport, SeriesKey, Store
from .readahead import read_ahead

BATCH_ROWS = 1 << 20    # rows validated and written at a time
BLOCK_ROWS = 1 << 16    # rows per block of the spill file; a merge holds one block per run
CANDLE_COLUMNS = ["ts", "open", "high", "low", "close", "volume"]
# Stored with the candles: each row's position for labels that take sides
# (NaN where the input has none, NULL in the store).
STORED_COLUMNS = [*CANDLE_COLUMNS, "side"]
SPILL_SCHEMA = pa.schema([("row", pa.int64()), ("ts", pa.int64())]
                         + [(c, pa.float64()) for c in STORED_COLUMNS[1:]])


@dataclass(frozen=True)
class RejectLimit:
    """How many rejected rows an ingest accepts (``--max-rejects N|P%``):
    ``count`` rows, or ``percent`` of the rows read."""

    count: int | None = 0
    percent: float | None = None

    @classmethod
    def parse(cls, value: str | int | RejectLimit | None) -> RejectLimit:
        if isinstance(value, RejectLimit):
            return value
        if value is None:
            return cls()
        text = str(value).strip()
        m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*%", text)
        if m and float(m.group(1)) <= 100:
            return cls(None, float(m.group(1)))
        if re.fullmatch(r"\d+", text):
            return cls(int(text))
        raise InvalidInput(f"--max-rejects must be a number of rows (0, 25) or a percentage of "
                           f"the rows read (0.5%, at most 100%), got {value!r}")

    def allows(self, rejected: int, rows: int) -> bool:
        if self.percent is not None:
            return rejected <= math.floor(rows * self.percent / 100 + 1e-9)
        return rejected <= (self.count or 0)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


def check_rejects_path(rejects: str | Path | None, source: str | Path | None = None) -> Path | None:
    """The rejects file, refused before anything is read where it cannot be
    written or would overwrite the input."""
    if rejects is None:
        return None
    out = Path(rejects)
    if out.is_dir():
        raise InvalidInput(f"--rejects {out} is a folder; give a file name")
    if not out.absolute().parent.is_dir():
        raise InvalidInput(f"--rejects {out}: no folder {out.absolute().parent}")
    if source is not None and out.exists() and out.resolve() == Path(source).resolve():
        raise InvalidInput(f"--rejects {out} is the file being ingested")
    return out


def ingest_file(store: Store, key: SeriesKey, path: str | Path, tz: str | None = None, *,
                layout: Layout | None = None, max_rejects: str | int | RejectLimit = 0,
                rejects: str | Path | None = None,
                batch_rows: int = BATCH_ROWS, read_rows: int = READ_ROWS) -> IngestReport:
    """Ingest a CSV or Parquet file (see the module docstring)."""
    limit = RejectLimit.parse(max_rejects)
    out = check_rejects_path(rejects, path)
    source = CandleFile(path, tz=tz, layout=layout, batch_rows=read_rows)
    with _Spill(key.granularity) as spill:
        for part in read_ahead(source, "ingest-parse"):  # the next batch parsed while one is spilled
            spill.add(_candles(part))
        spill.finish()
        steps = None if spill.ascending else cadence.StepCounts(key.granularity)
        found = _Rejects()
        for rows, candles, codes in _validated(spill.sorted_blocks()):
            if steps is not None:
                steps.add(candles.column("ts").to_numpy())
            found.add(rows, candles, codes)
        values, counts = (steps or spill.steps).arrays()
        cadence.check_step_counts(values, counts, key.granularity)
        found.settle(limit, spill.rows, out, source.first_line)
        return _load(store, key, _rebatch(spill.sorted_blocks(), batch_rows), spill.rows,
                     not spill.ascending)


def ingest_table(store: Store, key: SeriesKey, table: pa.Table, *,
                 max_rejects: str | int | RejectLimit = 0, rejects: str | Path | None = None,
                 batch_rows: int = BATCH_ROWS) -> IngestReport:
    """Ingest candles already in memory (``ts`` int64 ms, OHLC, optional volume and side)."""
    limit = RejectLimit.parse(max_rejects)
    out = check_rejects_path(rejects)
    table = _candles(table)
    table, order = cadence.sort_by_time(table)  # newest-first exports are common
    cadence.check_step(table.column("ts").to_numpy(), key.granularity)
    rows = pa.array(np.arange(table.num_rows) if order is None else order, pa.int64())
    table = table.add_column(0, "row", rows)

    def parts() -> Iterator[pa.Table]:
        return (table.slice(start, batch_rows) for start in range(0, table.num_rows, batch_rows))

    found = _Rejects()
    for part_rows, candles, codes in _validated(parts()):
        found.add(part_rows, candles, codes)
    found.settle(limit, table.num_rows, out, None)
    return _load(store, key, parts(), table.num_rows, order is not None)


def _candles(table: pa.Table) -> pa.Table:
    """ts, the five price columns and side: volume 0 where the input has
    none, side NaN (no position); a side other than +1, -1, 0 or NULL is
    refused, naming its row."""
    if "volume" not in table.column_names:
        table = table.append_column("volume", pa.array(np.zeros(table.num_rows)))
    if "side" in table.column_names:
        table = table.set_column(table.column_names.index("side"), "side",
                                 pa.array(frames.side_floats(table.column("side"))))
    else:
        table = table.append_column("side", pa.array(np.full(table.num_rows, np.nan)))
    return table.select(STORED_COLUMNS)


# --------------------------------------------------------------------------
# rejected rows


class _Rejects:
    """The rows that validation rejects, found before anything is written:
    their input row, values and defect code, as Arrow tables."""

    def __init__(self) -> None:
        self.parts: list[pa.Table] = []
        self.count = 0

    def add(self, rows: np.ndarray, candles: pa.Table, codes: np.ndarray) -> None:
        bad = np.flatnonzero(codes)
        if len(bad):
            self.parts.append(candles.take(pa.array(bad))
                              .add_column(0, "row", pa.array(rows[bad], pa.int64()))
                              .append_column("code", pa.array(codes[bad], pa.uint8())))
            self.count += len(bad)

    def table(self) -> pa.Table:
        """Every rejected row in input order: row, ts, prices, code."""
        if not self.parts:
            return pa.schema([*SPILL_SCHEMA, ("code", pa.uint8())]).empty_table()
        table = pa.concat_tables(self.parts).combine_chunks()
        return table.take(pc.sort_indices(table, [("row", "ascending")]))

    def settle(self, limit: RejectLimit, rows_read: int, out: Path | None, first_line: int | None) -> None:
        """Write the rejects file, then refuse the input if there are more
        rejected rows than ``limit`` allows."""
        if out is not None:
            _write_rejects(out, self.table(), first_line)
        if limit.allows(self.count, rows_read):
            return
        table = self.table()
        row, ts, code = (table.column(c)[0].as_py() for c in ("row", "ts", "code"))
        line = f", line {row + first_line}" if first_line is not None else ""
        share = f" ({100 * self.count / rows_read:.3g}%)" if rows_read else ""
        where = (f"all listed in {out}" if out is not None
                 else "--rejects FILE lists them all")
        raise InvalidCandles(
            f"{self.count:,} of {rows_read:,} rows rejected{share}, more than --max-rejects "
            f"{limit} allows: nothing written; the first is row {row}{line} (ts {iso(ts)}): "
            f"{frames.describe(code)}; {where}", row=row)


def _write_rejects(out: Path, table: pa.Table, first_line: int | None) -> None:
    """``row,line,ts,open,high,low,close,volume,reason`` (line: of the file,
    empty for Parquet and tables in memory)."""
    codes = table.column("code").to_numpy()
    kinds = np.unique(codes)
    reasons = pa.array([frames.describe(int(c)) for c in kinds]).take(
        pa.array(np.searchsorted(kinds, codes)))
    rows = table.column("row")
    lines = (pc.add(rows, first_line) if first_line is not None
             else pa.nulls(table.num_rows, pa.int64()))
    ms = table.column("ts").to_numpy()
    exact = bool(np.all(ms % 1000 == 0))  # whole seconds, as times are shown elsewhere
    stamps = pa.array(ms // 1000, pa.timestamp("s")) if exact else pa.array(ms, pa.timestamp("ms"))
    ts = pc.binary_join_element_wise(pc.strftime(stamps, format="%Y-%m-%dT%H:%M:%S"), "Z", "")
    written = pa.table([rows, lines, ts, *(table.column(c) for c in CANDLE_COLUMNS[1:]), reasons],
                       names=["row", "line", "ts", *CANDLE_COLUMNS[1:], "reason"])
    try:
        pcsv.write_csv(written, out)
    except (OSError, pa.ArrowException) as exc:
        raise InvalidInput(f"cannot write --rejects {out}: {exc}") from None


# --------------------------------------------------------------------------
# writing


def _load(store: Store, key: SeriesKey, parts: Iterator[pa.Table], rows_read: int,
          was_sorted: bool) -> IngestReport:
    """Validate and write batches of rows in (ts, input row) order; each has
    the input ``row`` first, then the candle columns.  The next batch is
    read and validated in a thread while one is written (10M candles:
    ~1.5 s less)."""
    inserted = updated = unchanged = 0
    rejected: list[tuple[int, int, str]] = []
    for rows, candles, codes in read_ahead(_validated(parts), "ingest-read"):
        report = store.ingest(key, candles, codes, frames.describe)
        inserted += report.inserted
        updated += report.updated
        unchanged += report.unchanged
        rejected.extend((int(rows[i]), ts, why) for i, ts, why in report.rejected)
    if was_sorted:
        rejected.sort()
    return IngestReport(rows_read, inserted, updated, unchanged, rejected, sorted=was_sorted)


def _validated(parts: Iterator[pa.Table]) -> Iterator[tuple[np.ndarray, pa.Table, np.ndarray]]:
    """(input rows, candles, defect codes) of each batch, every row judged
    against the last row kept before it, in this batch or an earlier one."""
    last_kept: int | None = None
    for part in parts:
        candles = part.select(STORED_COLUMNS)
        series = frames.to_series(candles)
        codes = _defect_codes(series, last_kept)
        kept = np.flatnonzero(codes == 0)
        if len(kept):
            last_kept = int(series.ts[kept[-1]])
        yield part.column("row").to_numpy(), candles, codes


def _defect_codes(series: Series, last_kept: int | None) -> np.ndarray:
    """``frames.defect_codes`` of a batch in time order that follows a row
    kept at ``last_kept``, as if that row were the batch's first: the rows
    up to ``last_kept`` (a prefix, the batch being in time order) are out of
    order whatever else they are, and the rest is judged from its own first
    row on, which comes after ``last_kept``."""
    if last_kept is None:
        return frames.defect_codes(series)
    k = int(np.searchsorted(series.ts, last_kept, "right"))
    if k == 0:
        return frames.defect_codes(series)

    def part(a: int, b: int | None) -> Series:
        return series.rows(a, b)

    codes = np.empty(len(series.ts), np.uint8)
    codes[:k] = frames.defect_codes(part(0, k)) | core.BAD_TS_ORDER
    codes[k:] = frames.defect_codes(part(k, None))
    return codes


def _rebatch(parts: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The same rows in tables of ``rows`` rows (the last one fewer)."""
    pending: list[pa.Table] = []
    count = 0
    for part in parts:
        pending.append(part)
        count += part.num_rows
        while count >= rows:
            joined = pa.concat_tables(pending).combine_chunks()
            yield joined.slice(0, rows)
            rest = joined.slice(rows)
            pending, count = ([rest] if rest.num_rows else []), rest.num_rows
    if count:
        yield pa.concat_tables(pending).combine_chunks()


# --------------------------------------------------------------------------
# the spill file


class _Spill:
    """The input's rows, parsed, in a temporary Arrow IPC file: each read
    batch is one run, sorted by (ts, row) and written in blocks of
    ``BLOCK_ROWS`` rows.  ``ascending``: the input was in time order, so
    the runs, one after another, are the sorted rows (and ``steps`` counts
    their steps)."""

    def __init__(self, granularity: str | None = None) -> None:
        self.rows = 0
        self.ascending = True
        self.steps = cadence.StepCounts(granularity)
        self.runs: list[range] = []  # block numbers of each run
        self._blocks = 0
        self._last: int | None = None
        self._dir: str | None = None
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._reader: pa.ipc.RecordBatchFileReader | None = None

    def __enter__(self) -> _Spill:
        self._dir = tempfile.mkdtemp(prefix="gpubackfill-ingest-")
        self._path = str(Path(self._dir) / "candles.arrow")
        self._guard(lambda: setattr(self, "_writer", pa.ipc.new_file(self._path, SPILL_SCHEMA)))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _guard(self, action: Callable[[], object]) -> object:
        try:
            return action()
        except OSError as exc:
            raise DependencyError(f"cannot write the ingest's temporary file in "
                                  f"{tempfile.gettempdir()} (set TMPDIR to a folder with room "
                                  f"for about 64 bytes a candle): {exc}") from None

    def add(self, candles: pa.Table) -> None:
        n = candles.num_rows
        if n == 0:
            return
        ts = candles.column("ts").to_numpy()
        in_order = bool(np.all(ts[1:] >= ts[:-1]))
        if self.ascending and in_order and (self._last is None or ts[0] >= self._last):
            self.steps.add(ts)
        else:
            self.ascending = False
        self._last = int(ts[-1])
        table = candles.add_column(0, "row", pa.array(np.arange(self.rows, self.rows + n), pa.int64()))
        if not in_order:
            table = table.take(pa.array(np.argsort(ts, kind="stable")))
        first = self._blocks
        writer = self._writer
        assert writer is not None
        for batch in table.combine_chunks().to_batches(max_chunksize=BLOCK_ROWS):
            self._guard(partial(writer.write_batch, batch))
            self._blocks += 1
        self.runs.append(range(first, self._blocks))
        self.rows += n

    def finish(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            self._guard(writer.close)
        self._reader = pa.ipc.open_file(pa.OSFile(self._path, "rb"))

    def _block(self, i: int) -> pa.Table:
        assert self._reader is not None
        return pa.Table.from_batches([self._reader.get_batch(i)])

    def sorted_blocks(self) -> Iterator[pa.Table]:
        """Every row in (ts, row) order, in pieces of at most a few blocks."""
        if self.ascending:
            return (self._block(i) for run in self.runs for i in run)
        return _merged([iter(run) for run in self.runs], self._block)


def _merged(runs: list[Iterator[int]], block: Callable[[int], pa.Table]) -> Iterator[pa.Table]:
    """Sorted runs of blocks merged into (ts, row) order.

    Each round takes, from the current block of every run, the rows up to the
    smallest of the blocks' last (ts, row), which no row still unread can
    precede; that block is then used up, so every round makes progress."""
    heads: list[tuple[pa.Table, Iterator[int]]] = []
    for run in runs:
        first = next(run, None)
        if first is not None:
            heads.append((block(first), run))
    while heads:
        last = [(int(t.column("ts")[-1].as_py()), int(t.column("row")[-1].as_py())) for t, _ in heads]
        bound_ts, bound_row = min(last)
        taken, kept = [], []
        for table, run in heads:
            ts = table.column("ts").to_numpy()
            lo = int(np.searchsorted(ts, bound_ts, "left"))
            hi = int(np.searchsorted(ts, bound_ts, "right"))
            upto = lo + int(np.searchsorted(table.column("row").to_numpy()[lo:hi], bound_row, "right"))
            if upto:
                taken.append(table.slice(0, upto))
            if upto < table.num_rows:
                kept.append((table.slice(upto), run))
            else:
                nxt = next(run, None)
                if nxt is not None:
                    kept.append((block(nxt), run))
        heads = kept
        out = pa.concat_tables(taken).combine_chunks()
        if len(taken) > 1:
            order = np.lexsort((out.column("row").to_numpy(), out.column("ts").to_numpy()))
            out = out.take(pa.array(order))
        yield out
