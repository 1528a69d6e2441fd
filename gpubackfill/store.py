"""ClickHouse: candles in, labels out.

The same SQL runs on the embedded chDB engine in this process or on a
server over HTTP(S); ``clickhouse.py`` owns the two transports.  Every value
reaches the engine as a query parameter; identifiers (database, instrument,
granularity, label set) are validated before they are used.

Tables (database from settings):
- ``candles``: one row per (instrument, granularity, ts).
- ``labels_<label_set_id>``: one table per label set (its columns depend on
  the parameters), keyed by (instrument, granularity, label_set, ts).
- ``label_sets``: what each label set id means (labels, parameters).
- ``label_chunks``: a manifest of written chunks and the fingerprint of the
  candles they were computed from, so unchanged chunks can be skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from . import clickhouse
from .config import Settings, redact_url
from .errors import DependencyError, InvalidInput
from .labels import ResolvedLabel, label_set_id

_IDENT = re.compile(r"^[A-Za-z0-9_]+$")
_CANDLE_COLS = ("ts", "open", "high", "low", "close", "volume")

_ARROW_TO_CH = {
    pa.int8(): "Int8", pa.int32(): "Int32", pa.uint8(): "UInt8", pa.float64(): "Float64",
}

@dataclass(frozen=True)
class SeriesKey:
    instrument: str
    granularity: str


@dataclass(frozen=True)
class IngestReport:
    rows_read: int
    inserted: int
    updated: int
    unchanged: int
    rejected: list[tuple[int, int, str]]  # (file row, ts, reason)
    sorted: bool = False  # the rows were not in time order and were sorted


def _check_ident(kind: str, value: str) -> str:
    if not _IDENT.match(value):
        raise InvalidInput(f"invalid {kind} {value!r}")
    return value


class Store:
    """Candle source and label sink over a ClickHouse client per thread."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.db = _check_ident("database name", settings.clickhouse_database)
        self._lock = threading.Lock()  # ingest: read-compare-write of one series

    @property
    def client(self):
        # Connect on first use: commands that only touch Redis (status, pause,
        # ...) must not open the embedded engine, which another process may hold.
        return clickhouse.client(self.settings)

    # -- plumbing ----------------------------------------------------------

    def _run(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InvalidInput:
            raise
        except Exception as exc:
            where = (f"chdb://{self.settings.chdb_path}" if self.settings.embedded_clickhouse
                     else redact_url(self.settings.clickhouse_url))
            raise DependencyError(f"ClickHouse at {where} failed: {clickhouse.short_error(exc)}") from exc

    def command(self, sql: str, parameters: dict | None = None) -> None:
        self._run(self.client.command, sql, parameters)

    def rows(self, sql: str, parameters: dict | None = None) -> list[tuple]:
        return self._run(self.client.rows, sql, parameters)

    def arrow(self, sql: str, parameters: dict | None = None) -> pa.Table:
        return self._run(self.client.arrow, sql, parameters)

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        self._run(self.client.insert_arrow, f"{self.db}.{table}", data)

    # -- schema ------------------------------------------------------------

    def init_schema(self) -> None:
        self.command(f"CREATE DATABASE IF NOT EXISTS {self.db}")
        self.command(f"""
            CREATE TABLE IF NOT EXISTS {self.db}.candles (
                instrument LowCardinality(String), granularity LowCardinality(String),
                ts DateTime64(3, 'UTC'),
                open Float64, high Float64, low Float64, close Float64, volume Float64
            ) ENGINE = MergeTree ORDER BY (instrument, granularity, ts)""")
        # Which time ranges of a series each ingest changed (change_stamp).
        self.command(f"""
            CREATE TABLE IF NOT EXISTS {self.db}.candle_changes (
                instrument LowCardinality(String), granularity LowCardinality(String),
                first_ts Int64, last_ts Int64, changed_at Int64
            ) ENGINE = MergeTree ORDER BY (instrument, granularity, first_ts)""")
        self.command(f"""
            CREATE TABLE IF NOT EXISTS {self.db}.label_sets (
                label_set String, labels String, params String, columns String,
                created DateTime64(3, 'UTC') DEFAULT now64(3)
            ) ENGINE = ReplacingMergeTree ORDER BY label_set""")
        self.command(f"""
            CREATE TABLE IF NOT EXISTS {self.db}.label_chunks (
                instrument LowCardinality(String), granularity LowCardinality(String),
                label_set String, start_ts Int64, end_ts Int64,
                input_hash String, rows UInt64, incomplete UInt64, job_id String,
                computed_at DateTime64(3, 'UTC') DEFAULT now64(3)
            ) ENGINE = ReplacingMergeTree(computed_at)
            ORDER BY (instrument, granularity, label_set, start_ts, end_ts)""")

    def ensure_label_table(self, resolved: list[ResolvedLabel]) -> str:
        """Create the label set's table (and registry row); returns its id."""
        set_id = label_set_id(resolved)
        cols = [(name, t) for r in resolved for name, t in r.outputs()]
        col_sql = ",\n".join(f"{name} {_ch_type(t, nullable=name != 'tb_flags')}" for name, t in cols)
        self.command(f"""
            CREATE TABLE IF NOT EXISTS {self.db}.labels_{set_id} (
                instrument LowCardinality(String), granularity LowCardinality(String),
                label_set LowCardinality(String), ts DateTime64(3, 'UTC'),
                {col_sql}
            ) ENGINE = MergeTree ORDER BY (instrument, granularity, label_set, ts)""")
        known = self.rows(f"SELECT count() FROM {self.db}.label_sets WHERE label_set = {{s:String}}",
                          {"s": set_id})[0][0]
        if not known:
            self.insert_arrow("label_sets", pa.table({
                "label_set": [set_id],
                "labels": [json.dumps([r.name for r in resolved])],
                "params": [json.dumps({r.name: r.params for r in resolved}, sort_keys=True)],
                "columns": [json.dumps([c for c, _ in cols])],
            }))
        return set_id

    # -- candles -----------------------------------------------------------

    def _series_where(self) -> str:
        return "instrument = {i:String} AND granularity = {g:String}"

    @staticmethod
    def _series_params(key: SeriesKey, **more) -> dict:
        return {"i": key.instrument, "g": key.granularity, **more}

    def series_summary(self, key: SeriesKey) -> tuple[int, int | None, int | None]:
        """(rows, first ts ms, last ts ms) of a series."""
        n, lo, hi = self.rows(
            f"SELECT count(), min(toUnixTimestamp64Milli(ts)), max(toUnixTimestamp64Milli(ts)) "
            f"FROM {self.db}.candles WHERE {self._series_where()}", self._series_params(key))[0]
        return int(n), (int(lo) if n else None), (int(hi) if n else None)

    def has_series(self, key: SeriesKey) -> bool:
        """Whether the series has any candle (reads one row, not a count)."""
        return bool(self.rows(f"SELECT 1 FROM {self.db}.candles WHERE {self._series_where()} LIMIT 1",
                              self._series_params(key)))

    def instruments(self) -> list[tuple[str, str, int]]:
        return [(i, g, int(n)) for i, g, n in self.rows(
            f"SELECT instrument, granularity, count() FROM {self.db}.candles "
            f"GROUP BY instrument, granularity ORDER BY instrument, granularity")]

    def chunk_starts(self, key: SeriesKey, start_ms: int, end_ms: int, chunk_size: int) -> list[tuple[int, int]]:
        """(first ts, rows) of each run of ``chunk_size`` candles in [start, end)."""
        rows = self.rows(f"""
            SELECT intDiv(rn - 1, {{cs:UInt64}}) AS k, min(t), count()
            FROM (SELECT toUnixTimestamp64Milli(ts) AS t, row_number() OVER (ORDER BY ts) AS rn
                  FROM {self.db}.candles
                  WHERE {self._series_where()}
                    AND ts >= fromUnixTimestamp64Milli({{a:Int64}}, 'UTC')
                    AND ts < fromUnixTimestamp64Milli({{b:Int64}}, 'UTC'))
            GROUP BY k ORDER BY k""", self._series_params(key, a=start_ms, b=end_ms, cs=chunk_size))
        return [(int(t), int(n)) for _, t, n in rows]

    def load(self, key: SeriesKey, start_ms: int, end_ms: int, back: int, ahead: int) -> tuple[pa.Table, int, int]:
        """Candles of [start, end) plus ``back`` rows before and ``ahead`` after.

        Returns (table sorted by ts, index of the first own row, own rows).
        """
        where = self._series_where()
        # One range read in the table's key order (no sort): its bounds are
        # the ts of the farthest halo rows, found by two small scalar
        # subqueries; without halo rows a bound falls back to the chunk's own.
        sql = f"""
            SELECT ts, open, high, low, close, volume FROM {self.db}.candles
            WHERE {where}
              AND ts >= ifNull((SELECT minOrNull(ts) FROM (SELECT ts FROM {self.db}.candles
                    WHERE {where} AND ts < fromUnixTimestamp64Milli({{a:Int64}}, 'UTC')
                    ORDER BY ts DESC LIMIT {{back:UInt64}})),
                  fromUnixTimestamp64Milli({{a:Int64}}, 'UTC'))
              AND ts <= ifNull((SELECT maxOrNull(ts) FROM (SELECT ts FROM {self.db}.candles
                    WHERE {where} AND ts >= fromUnixTimestamp64Milli({{b:Int64}}, 'UTC')
                    ORDER BY ts LIMIT {{ahead:UInt64}})),
                  fromUnixTimestamp64Milli({{b:Int64}} - 1, 'UTC'))
            ORDER BY instrument, granularity, ts"""
        table = _ts_to_ms(self.arrow(sql, self._series_params(key, a=start_ms, b=end_ms, back=back,
                                                              ahead=ahead)))
        ts = table.column("ts").to_numpy()
        first = int(np.searchsorted(ts, start_ms))
        return table, first, int(np.searchsorted(ts, end_ms)) - first

    def load_bars(self, key: SeriesKey, starts: np.ndarray, bar_ms: int,
                  columns: tuple[str, ...] = ("ts", "open", "high", "low", "close", "volume")
                  ) -> pa.Table:
        """Candles of ``key`` inside the bars [s, s + bar_ms) for s in ``starts``,
        and nothing else: the finer candles of a coarse series' ambiguous bars.

        One read of the span's ``ts`` keeps the rows whose bar number
        ``(ts - phase) div bar_ms`` is in the set asked for (a hash lookup
        per row; the price columns are read for those rows only).  Bars of one
        series usually share a phase modulo their length; each distinct
        phase (a session shift, daylight saving) gets its own read.  Ambiguous
        bars are spread over the whole span, so every granule holds some:
        each column asked for is read in full, hence ``columns``."""
        bad = set(columns) - set(_CANDLE_COLS)
        if bad or "ts" not in columns:
            raise ValueError(f"load_bars columns must include ts and be candle columns, got {columns}")
        cols = ", ".join(columns)
        starts = np.unique(np.asarray(starts, dtype=np.int64))
        parts = []
        phases = starts % bar_ms
        for phase in np.unique(phases):
            group = starts[phases == phase]
            parts.append(self.arrow(
                f"SELECT {cols} FROM {self.db}.candles "
                f"WHERE {self._series_where()} "
                f"AND ts >= fromUnixTimestamp64Milli({{a:Int64}}, 'UTC') "
                f"AND ts < fromUnixTimestamp64Milli({{b:Int64}}, 'UTC') "
                f"AND intDiv(toUnixTimestamp64Milli(ts) - {{p:Int64}}, {{w:Int64}}) "
                f"IN {{bars:Array(Int64)}} ORDER BY instrument, granularity, ts",
                self._series_params(key, a=int(group[0]), b=int(group[-1]) + bar_ms,
                                    p=int(phase), w=int(bar_ms),
                                    bars=[int(x) for x in (group - phase) // bar_ms])))
        if not parts:
            parts.append(self.arrow(f"SELECT {cols} FROM {self.db}.candles WHERE 0"))
        table = _ts_to_ms(pa.concat_tables(parts))
        if len(parts) > 1:
            table = table.sort_by("ts")
        return table

    def ingest(self, key: SeriesKey, candles: pa.Table, codes: np.ndarray, reasons) -> IngestReport:
        """Insert valid rows; rows whose ts already exists are replaced when
        their values differ and skipped when identical, so ingesting a file
        twice changes nothing.  ``codes`` are per-row defect codes (0 = ok)."""
        n = candles.num_rows
        rejected = [(int(i), int(candles.column("ts")[int(i)].as_py()), reasons(int(codes[i])))
                    for i in np.flatnonzero(codes)]
        good = candles.filter(pa.array(codes == 0))
        if good.num_rows == 0:
            return IngestReport(n, 0, 0, 0, rejected)
        ts = good.column("ts").to_numpy()
        with self._lock:
            existing = _ts_to_ms(self.arrow(
                f"SELECT ts, open, high, low, close, volume "
                f"FROM {self.db}.candles WHERE {self._series_where()} "
                f"AND ts >= fromUnixTimestamp64Milli({{a:Int64}}, 'UTC') "
                f"AND ts <= fromUnixTimestamp64Milli({{b:Int64}}, 'UTC')",
                self._series_params(key, a=int(ts.min()), b=int(ts.max()))))
            updated = unchanged = 0
            if existing.num_rows:
                old = {c: existing.column(c).to_numpy() for c in _CANDLE_COLS}
                pos = np.searchsorted(ts, old["ts"]) if np.all(np.diff(ts) > 0) else None
                if pos is None:
                    order = np.argsort(ts, kind="stable")
                    pos = order[np.searchsorted(ts, old["ts"], sorter=order)]
                pos = np.clip(pos, 0, len(ts) - 1)
                hit = ts[pos] == old["ts"]
                same = hit.copy()
                for c in _CANDLE_COLS[1:]:
                    same &= good.column(c).to_numpy()[pos] == old[c]
                unchanged = int(same.sum())
                changed_ts = old["ts"][hit & ~same]
                updated = len(changed_ts)
                if updated:
                    self.command(
                        f"DELETE FROM {self.db}.candles WHERE {self._series_where()} "
                        f"AND has({{tss:Array(Int64)}}, toUnixTimestamp64Milli(ts))",
                        self._series_params(key, tss=[int(t) for t in changed_ts]))
                keep = np.ones(len(ts), bool)
                keep[pos[same]] = False
                good = good.filter(pa.array(keep))
            if good.num_rows:
                self.insert_arrow("candles", _with_series(key, good))
                changed = good.column("ts").to_numpy()
                self._record_change(key, int(changed.min()), int(changed.max()))
        return IngestReport(n, good.num_rows - updated, updated, unchanged, rejected)

    def _record_change(self, key: SeriesKey, first_ms: int, last_ms: int) -> None:
        self.insert_arrow("candle_changes", pa.table({
            "instrument": [key.instrument], "granularity": [key.granularity],
            "first_ts": pa.array([first_ms], pa.int64()), "last_ts": pa.array([last_ms], pa.int64()),
            "changed_at": pa.array([time.time_ns() // 1_000_000], pa.int64()),
        }))

    def change_stamp(self, key: SeriesKey, start_ms: int, end_ms: int) -> str:
        """Changes to the candles of ``key`` that touched [start, end), as a
        short stamp: it differs after any ingest that inserted or updated a
        candle there.  Read from the ingest log, not the candles, so a
        coarse chunk that depends on a finer series checks it for free."""
        n, last = self.rows(
            f"SELECT count(), max(changed_at) FROM {self.db}.candle_changes "
            f"WHERE {self._series_where()} AND first_ts < {{b:Int64}} AND last_ts >= {{a:Int64}}",
            self._series_params(key, a=start_ms, b=end_ms))[0]
        return f"{int(n)}:{int(last or 0)}"

    # -- labels ------------------------------------------------------------

    def chunk_record(self, key: SeriesKey, set_id: str, start_ms: int, end_ms: int) -> tuple[str, int] | None:
        """(input hash, incomplete rows) recorded for a written chunk, if any."""
        rows = self.rows(
            f"SELECT input_hash, incomplete FROM {self.db}.label_chunks FINAL "
            f"WHERE {self._series_where()} AND label_set = {{s:String}} "
            f"AND start_ts = {{a:Int64}} AND end_ts = {{b:Int64}}",
            self._series_params(key, s=set_id, a=start_ms, b=end_ms))
        return (rows[0][0], int(rows[0][1])) if rows else None

    def write_labels(self, key: SeriesKey, set_id: str, start_ms: int, end_ms: int,
                     labels: pa.Table, input_hash: str, incomplete: int, job_id: str) -> None:
        """Replace the label rows of [start, end) with ``labels``, exactly once.

        Rows already there (a re-run, a retry after a crash between insert
        and bookkeeping) are deleted first, so repeating this never
        duplicates a row.
        """
        table = f"{self.db}.labels_{_check_ident('label set', set_id)}"
        rng = (f"{self._series_where()} AND label_set = {{s:String}} "
               f"AND ts >= fromUnixTimestamp64Milli({{a:Int64}}, 'UTC') "
               f"AND ts < fromUnixTimestamp64Milli({{b:Int64}}, 'UTC')")
        p = self._series_params(key, s=set_id, a=start_ms, b=end_ms)
        # No lock: a chunk's range is leased to one worker, and writes of
        # different ranges do not interfere.
        present = self.rows(f"SELECT count() FROM {table} WHERE {rng}", p)[0][0]
        if present:
            self.command(f"DELETE FROM {table} WHERE {rng}", p)
        if labels.num_rows:
            out = _with_series(key, labels, set_id)
            self.insert_arrow(f"labels_{set_id}", out)
        self.insert_arrow("label_chunks", pa.table({
            "instrument": [key.instrument], "granularity": [key.granularity],
            "label_set": [set_id], "start_ts": pa.array([start_ms], pa.int64()),
            "end_ts": pa.array([end_ms], pa.int64()), "input_hash": [input_hash],
            "rows": pa.array([labels.num_rows], pa.uint64()),
            "incomplete": pa.array([incomplete], pa.uint64()), "job_id": [job_id],
        }))

    def label_counts(self, key: SeriesKey, set_id: str) -> tuple[int, int]:
        """(count(), uniqExact(ts)) of a series' label rows, without FINAL."""
        table = f"{self.db}.labels_{_check_ident('label set', set_id)}"
        n, u = self.rows(f"SELECT count(), uniqExact(ts) FROM {table} WHERE {self._series_where()} "
                         f"AND label_set = {{s:String}}", self._series_params(key, s=set_id))[0]
        return int(n), int(u)

    def read_labels(self, key: SeriesKey, set_id: str, start_ms: int | None = None,
                    end_ms: int | None = None) -> pa.Table:
        table = f"{self.db}.labels_{_check_ident('label set', set_id)}"
        exists = self.rows("SELECT count() FROM system.tables WHERE database = {d:String} AND name = {t:String}",
                           {"d": self.db, "t": f"labels_{set_id}"})[0][0]
        if not exists:
            return pa.table({"ts": pa.array([], pa.int64())})
        cond, p = self._label_range(key, set_id, start_ms, end_ms)
        return _ts_to_ms(self.arrow(f"SELECT * EXCEPT (instrument, granularity, label_set) "
                                    f"FROM {table} WHERE {cond} ORDER BY ts", p))

    # -- label sets, for export and listing --------------------------------

    def label_set_registry(self) -> list[tuple[str, dict, list[str]]]:
        """(id, {label: full parameters}, columns) of every label set whose table exists."""
        tables = {name for (name,) in self.rows(
            "SELECT name FROM system.tables WHERE database = {d:String}", {"d": self.db})}
        out = []
        for set_id, params, columns in self.rows(
                f"SELECT label_set, any(params), any(columns) FROM {self.db}.label_sets "
                f"GROUP BY label_set ORDER BY label_set"):
            if f"labels_{set_id}" in tables and _IDENT.match(set_id):
                out.append((set_id, json.loads(params), json.loads(columns)))
        return out

    def label_rows_by_series(self, set_id: str, key: SeriesKey | None = None
                             ) -> dict[tuple[str, str], tuple[int, int, int]]:
        """(rows, first ts, last ts) of each series in a label set's table."""
        table = f"{self.db}.labels_{_check_ident('label set', set_id)}"
        where, p = "label_set = {s:String}", {"s": set_id}
        if key is not None:
            where += f" AND {self._series_where()}"
            p = self._series_params(key, s=set_id)
        return {(i, g): (int(n), int(lo), int(hi)) for i, g, n, lo, hi in self.rows(
            f"SELECT instrument, granularity, count(), min(toUnixTimestamp64Milli(ts)), "
            f"max(toUnixTimestamp64Milli(ts)) FROM {table} WHERE {where} "
            f"GROUP BY instrument, granularity", p) if n}

    def _label_range(self, key: SeriesKey, set_id: str, start_ms: int | None,
                     end_ms: int | None, **more) -> tuple[str, dict]:
        cond = f"{self._series_where()} AND label_set = {{s:String}}"
        p = self._series_params(key, s=set_id, **more)
        if start_ms is not None:
            cond += " AND ts >= fromUnixTimestamp64Milli({a:Int64}, 'UTC')"
            p["a"] = start_ms
        if end_ms is not None:
            cond += " AND ts < fromUnixTimestamp64Milli({b:Int64}, 'UTC')"
            p["b"] = end_ms
        return cond, p

    def label_batch_starts(self, key: SeriesKey, set_id: str, start_ms: int | None,
                           end_ms: int | None, batch_rows: int) -> list[int]:
        """First ts of each run of ``batch_rows`` label rows in [start, end)."""
        table = f"{self.db}.labels_{_check_ident('label set', set_id)}"
        cond, p = self._label_range(key, set_id, start_ms, end_ms, n=batch_rows)
        return [int(t) for t, in self.rows(f"""
            SELECT min(t) FROM (SELECT toUnixTimestamp64Milli(ts) AS t,
                                       row_number() OVER (ORDER BY ts) AS rn
                                FROM {table} WHERE {cond})
            GROUP BY intDiv(rn - 1, {{n:UInt64}}) ORDER BY 1""", p)]

    def read_label_range(self, key: SeriesKey, set_id: str, columns: list[str],
                         start_ms: int, end_ms: int | None, with_candles: bool) -> pa.Table:
        """Label rows of [start, end) in ts order, ts first; OHLCV after ts
        when ``with_candles`` (rows without a candle are kept, with NULLs)."""
        table = f"{self.db}.labels_{_check_ident('label set', set_id)}"
        cols = [_check_ident("column", c) for c in columns]
        cond, p = self._label_range(key, set_id, start_ms, end_ms)
        labels_sql = f"SELECT ts, {', '.join(cols)} FROM {table} WHERE {cond}"
        if not with_candles:
            return self.arrow(f"{labels_sql} ORDER BY ts", p)
        candles_cond = cond.replace(" AND label_set = {s:String}", "")
        return self.arrow(f"""
            SELECT l.ts AS ts, {', '.join(f'c.{c} AS {c}' for c in _CANDLE_COLS[1:])},
                   {', '.join(f'l.{c} AS {c}' for c in cols)}
            FROM ({labels_sql}) AS l
            LEFT JOIN (SELECT ts, open, high, low, close, volume FROM {self.db}.candles
                       WHERE {candles_cond}) AS c ON l.ts = c.ts
            ORDER BY ts SETTINGS join_use_nulls = 1""", p)


def _ts_to_ms(table: pa.Table) -> pa.Table:
    i = table.column_names.index("ts")
    return table.set_column(i, "ts", table.column("ts").cast(pa.int64()))


def input_fingerprint(candles: pa.Table) -> str:
    """Hash of the candles a chunk was computed from (its halo included)."""
    h = hashlib.blake2b(digest_size=16)
    for name in ("ts", "open", "high", "low", "close"):
        h.update(np.ascontiguousarray(candles.column(name).to_numpy()).tobytes())
    return h.hexdigest()


def _ch_type(t: pa.DataType, nullable: bool) -> str:
    base = _ARROW_TO_CH[t]
    return f"Nullable({base})" if nullable else base


def _with_series(key: SeriesKey, table: pa.Table, set_id: str | None = None) -> pa.Table:
    """``table`` with its series' key columns in front, ts as a UTC timestamp."""
    # The key columns repeat one value: as dictionaries they cost 4 bytes a
    # row and arrive in the LowCardinality columns without a lookup per row.
    zeros = pa.array(np.zeros(table.num_rows, np.int32))
    keys = {"instrument": key.instrument, "granularity": key.granularity}
    if set_id is not None:
        keys["label_set"] = set_id
    cols: dict[str, Any] = {name: pa.DictionaryArray.from_arrays(zeros, pa.array([value], pa.string()))
                            for name, value in keys.items()}
    cols["ts"] = table.column("ts").cast(pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    for name in table.column_names:
        if name != "ts":
            cols[name] = table.column(name)
    return pa.table(cols)
