"""ClickHouse: candles in, labels out.

The same SQL runs on the embedded chDB engine in this process or on a
server over HTTP(S); ``clickhouse.py`` owns the two transports.  Every value
reaches the engine as a query parameter; identifiers (database, instrument,
granularity, label set) are validated before they are used.

Tables (database from settings):
- ``candles``: one row per (instrument, granularity, ts); ``side`` (NULL:
  none) is each row's position for labels that take sides.
- ``labels_<label_set_id>``: one table per label set (its columns depend on
  the parameters), keyed by (instrument, granularity, label_set, ts).
- ``label_sets``: what each label set id means (labels, parameters).
- ``label_chunks``: a manifest of written chunks and the fingerprint of the
  candles they were computed from, so unchanged chunks can be skipped.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from ..common.granularity import GRANULARITIES
from ..config import Settings, redact_url
from ..errors import DependencyError, InvalidInput
from ..jobs.spec import EVER
from ..labels import ResolvedLabel, label_set_id
from ..sources import fingerprint
from ..sources.source import Source
from . import clickhouse_client as clickhouse

_IDENT = re.compile(r"^[A-Za-z0-9_]+$")
_CANDLE_COLS = ("ts", "open", "high", "low", "close", "volume")
# Read with the candles only for labels that take sides (``load(side=True)``).
SIDE = "side"

_TAIL_SETTINGS = re.compile(r"\s+SETTINGS\s+\w+\s*=\s*\w+(\s*,\s*\w+\s*=\s*\w+)*\s*$")

_ARROW_TO_CH = {
    pa.int8(): "Int8", pa.int32(): "Int32", pa.uint8(): "UInt8", pa.float64(): "Float64",
}

@dataclass(frozen=True)
class SeriesKey:
    instrument: str
    granularity: str
    source: str = ""  # a registered source's name; "": the built-in candles table
    # The store table that holds a job's copy of its derived bars (``copy_bars``),
    # read in place of the source's aggregation; not part of the series' identity.
    bars: str = field(default="", compare=False)


@dataclass(frozen=True)
class IngestReport:
    rows_read: int
    inserted: int
    updated: int
    unchanged: int
    rejected: list[tuple[int, int, str]]  # (file row, ts, reason)
    sorted: bool = False  # the rows were not in time order and were sorted


class _Reader:
    """Reads candles: through the store's client, or a source's own server.
    Only SELECT-like statements pass: a source is never written."""

    def __init__(self, store: Store, client, url: str | None = None):
        self._store, self._client = store, client
        self._at = redact_url(url) if url else None

    @property
    def may_set(self) -> bool:
        """Whether statements may carry settings: not for a user with
        ``readonly = 1`` on a source's server (ClickHouse refuses such a
        user any setting, a statement's SETTINGS clause included)."""
        if self._client is None:
            return True
        known = self._store._may_set
        if self._client not in known:
            (level,), = self._store._run(self._client.rows, "SELECT getSetting('readonly')", at=self._at)
            known[self._client] = str(level) != "1"
        return known[self._client]

    def _check(self, sql: str) -> str:
        if not sql.lstrip().upper().startswith(("SELECT", "WITH", "DESCRIBE", "EXPLAIN", "(")):
            raise ValueError(f"a source is only read: {sql[:40]!r}")
        if not self.may_set:
            # Only speed settings end a statement here (``_in_order``);
            # a read whose result needs one asks ``may_set`` first.
            sql = _TAIL_SETTINGS.sub("", sql)
        return sql

    def rows(self, sql: str, parameters: dict | None = None) -> list[tuple]:
        if self._client is None:
            return self._store.rows(self._check(sql), parameters)
        return self._store._run(self._client.rows, self._check(sql), parameters, at=self._at)

    def arrow(self, sql: str, parameters: dict | None = None) -> pa.Table:
        if self._client is None:
            return self._store.arrow(self._check(sql), parameters)
        return self._store._run(self._client.arrow, self._check(sql), parameters, at=self._at)


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
        self._sources: dict[str, Source] = {}
        self._may_set: dict[Any, bool] = {}  # a source server's client: may its statements set settings

    @property
    def client(self):
        # Connect on first use: commands that only touch Redis (status, pause,
        # ...) must not open the embedded engine, which another process may hold.
        return clickhouse.client(self.settings)

    # -- plumbing ----------------------------------------------------------

    def _run(self, fn, *args, at: str | None = None, **kwargs):
        """``fn(*args, **kwargs)``, its failure named by where it ran (``at``:
        a source's server; default, the store's)."""
        try:
            return fn(*args, **kwargs)
        except InvalidInput:
            raise
        except Exception as exc:
            where = at or (f"chdb://{self.settings.chdb_path}" if self.settings.embedded_clickhouse
                           else redact_url(self.settings.clickhouse_url or ""))
            raise DependencyError(f"ClickHouse at {where} failed: {clickhouse.short_error(exc)}") from exc

    def command(self, sql: str, parameters: dict | None = None) -> None:
        self._run(self.client.command, sql, parameters)

    def rows(self, sql: str, parameters: dict | None = None) -> list[tuple]:
        return self._run(self.client.rows, sql, parameters)

    def arrow(self, sql: str, parameters: dict | None = None) -> pa.Table:
        return self._run(self.client.arrow, sql, parameters)

    def insert_arrow(self, table: str, data: pa.Table, constants: dict[str, str] | None = None) -> None:
        self._run(self.client.insert_arrow, f"{self.db}.{table}", data, constants)

    # -- sources -----------------------------------------------------------

    def add_source(self, src: Source) -> None:
        if self.rows(f"SELECT count() FROM {self.db}.sources WHERE name = {{n:String}}",
                     {"n": src.name})[0][0]:
            raise InvalidInput(f"source {src.name} exists already (`gpubackfill source remove "
                               f"{src.name}` first)")
        self.insert_arrow("sources", pa.table({"name": [src.name], "definition": [src.to_json()]}))
        self._sources.pop(src.name, None)

    def sources(self) -> list[Source]:
        return [Source.from_json(d) for _, d in self.rows(
            f"SELECT name, definition FROM {self.db}.sources ORDER BY name")]

    def source(self, name: str) -> Source:
        """A registered source (cached: a definition never changes in place)."""
        if name not in self._sources:
            found = self.rows(f"SELECT definition FROM {self.db}.sources WHERE name = {{n:String}}",
                              {"n": name})
            if not found:
                known = [s.name for s in self.sources()]
                raise InvalidInput(f"no source named {name!r} (known: {', '.join(known) or 'none'}; "
                                   f"add one with `gpubackfill source add`)")
            self._sources[name] = Source.from_json(found[0][0])
        return self._sources[name]

    def remove_source(self, name: str) -> None:
        self.source(name)
        self.command(f"DELETE FROM {self.db}.sources WHERE name = {{n:String}}", {"n": name})
        self._sources.pop(name, None)

    def source_reader(self, src: Source) -> _Reader:
        """What reads a source: this store's ClickHouse, or the source's own."""
        if not src.clickhouse_url:
            return _Reader(self, None)
        # The store's own credentials are not the source's: a source's
        # server is reached as its URL says (user:password@), else as default.
        return _Reader(self, clickhouse.client(self.settings.model_copy(
            update={"clickhouse_url": src.clickhouse_url, "clickhouse_user": "default",
                    "clickhouse_password": ""})), src.clickhouse_url)

    def source_sided(self, key: SeriesKey) -> bool:
        """Whether ``key`` is a source's series whose source maps a side
        (then the side is part of its window prints)."""
        return bool(key.source) and "side" in self.source(key.source).columns

    def _rel(self, keys: SeriesKey | list[SeriesKey]) -> str:
        """The relation that holds the candles of ``keys``: the built-in
        table, a source's subquery (one arm per granularity asked for), or
        for derived series a job copied, that copy (``_copy``)."""
        keys = [keys] if isinstance(keys, SeriesKey) else keys
        names = {k.source for k in keys}
        if names == {""} or not names:
            return f"{self.db}.candles"
        if len(names) > 1:
            raise InvalidInput(f"one source at a time, got {', '.join(sorted(n or '(built-in)' for n in names))}")
        src = self.source(names.pop())
        copy = self._copy(keys)
        arms = list(dict.fromkeys(
            f"{self.db}.{copy}" if copy and g in src.derived() else src.relation_for(g)
            for g in dict.fromkeys(k.granularity for k in keys)))
        return arms[0] if len(arms) == 1 else "(" + " UNION ALL ".join(f"SELECT * FROM {a}" for a in arms) + ")"

    def _copy(self, keys: list[SeriesKey]) -> str | None:
        """The bars table ``keys``' derived series are read from, or None
        (their source's aggregation).  All or nothing: a statement reads
        one place, and a source on another server cannot join the store's
        copy, so there a copy serves only statements over copied series."""
        derived = [k for k in keys if self.derives(k)]
        names = {k.bars for k in derived}
        if not derived or len(names) != 1 or "" in names:
            return None
        if len(derived) < len(keys) and self.source(keys[0].source).clickhouse_url:
            return None
        return _check_ident("bars table", names.pop())

    def derives(self, key: SeriesKey) -> bool:
        """Whether ``key`` is a series its source aggregates at read time."""
        return bool(key.source) and key.granularity in self.source(key.source).derived()

    def _in_order(self, keys: SeriesKey | list[SeriesKey]) -> str:
        """The SETTINGS of a statement over ``keys``' relation: a derived
        series is aggregated in its source's key order where that order
        allows (``DERIVED_SETTINGS``), any other read as it is."""
        keys = [keys] if isinstance(keys, SeriesKey) else keys
        if self._copy(keys):
            return ""
        return f" SETTINGS {DERIVED_SETTINGS}" if any(self.derives(k) for k in keys) else ""

    def _reader(self, keys: SeriesKey | list[SeriesKey]) -> _Reader:
        keys = [keys] if isinstance(keys, SeriesKey) else keys
        key = keys[0] if keys else SeriesKey("", "")
        if not key.source or self._copy(keys):
            return _Reader(self, None)
        return self.source_reader(self.source(key.source))

    # -- a job's copy of its derived bars ------------------------------------

    def copy_bars(self, table: str, keys: list[SeriesKey], sizes: Mapping[SeriesKey, int]) -> None:
        """Aggregate the derived series ``keys`` (one source) once, into
        ``table`` in the store's database: each bar as the source's
        ``relation_for`` gives it (ts, OHLCV, side, our types), sorted by
        ts, so that planning and every chunk read bars with a plain range
        read instead of aggregating the source again.  ``sizes``: each
        series' candles in its source, which batches are cut by.

        A source on the store's ClickHouse is copied by ``INSERT ...
        SELECT`` (the bars never leave ClickHouse); one on another server
        is read there, a page of at most ``BATCH_ROWS`` bars at a time, and
        inserted here.  Either way the source only sees SELECTs."""
        table = _check_ident("bars table", table)
        self.command(f"""
            CREATE TABLE IF NOT EXISTS {self.db}.{table} (
                instrument LowCardinality(String), granularity LowCardinality(String),
                ts DateTime64(3, 'UTC') CODEC(Delta, LZ4),
                open Float64, high Float64, low Float64, close Float64, volume Float64,
                side Nullable(Float64)
            ) ENGINE = MergeTree ORDER BY (instrument, granularity, ts)""")
        cols = "instrument, granularity, ts, open, high, low, close, volume, side"
        plain = [replace(k, bars="") for k in keys]
        for part in _batches(plain, {k: sizes[k] for k in plain}, COUNT_ROWS):
            src = self.source(part[0].source)
            where = _in_keys(part)
            if not src.clickhouse_url:
                self.command(f"INSERT INTO {self.db}.{table} ({cols}) SELECT {cols} "
                             f"FROM {self._rel(part)} WHERE {where}{self._in_order(part)}",
                             _keys_params(part))
                continue
            reader = self._reader(part)
            for k in part:
                for a, b in self._pages(k, sizes[k]):
                    bars = reader.arrow(
                        f"SELECT {cols} FROM {self._rel(k)} WHERE {self._series_where()} "
                        f"AND ts >= fromUnixTimestamp64Milli({{a:Int64}}, 'UTC') "
                        f"AND ts < fromUnixTimestamp64Milli({{b:Int64}}, 'UTC'){self._in_order(k)}",
                        self._series_params(k, a=a, b=b))
                    if bars.num_rows:
                        self.insert_arrow(table, bars)

    def _pages(self, key: SeriesKey, candles: int) -> list[tuple[int, int]]:
        """[a, b) ranges of bar starts that split a derived series into
        reads of at most about ``BATCH_ROWS`` bars (its base candles over
        the bar's length in them; one range where that is small)."""
        src = self.source(key.source)
        bars = candles * GRANULARITIES[src.granularity or key.granularity] // GRANULARITIES[key.granularity]
        n = -(-bars // BATCH_ROWS)
        if n <= 1:
            return [EVER]
        base = replace(key, granularity=src.granularity or key.granularity)
        span = self.series_spans([base]).get(base)
        if span is None:
            return []
        cuts = np.linspace(span[0], span[1] + 1, n + 1).astype(np.int64).tolist()
        return [(EVER[0] if i == 0 else cuts[i], EVER[1] if i == n - 1 else cuts[i + 1]) for i in range(n)]

    def has_table(self, table: str) -> bool:
        return bool(self.rows("SELECT count() FROM system.tables WHERE database = {d:String} "
                              "AND name = {t:String}", {"d": self.db, "t": table})[0][0])

    def tables_named(self, prefix: str) -> list[tuple[str, int]]:
        """(name, seconds since its metadata last changed) of the store's
        tables whose names start with ``prefix``."""
        return [(n, int(age)) for n, age in self.rows(
            "SELECT name, toInt64(now() - metadata_modification_time) FROM system.tables "
            "WHERE database = {d:String} AND startsWith(name, {p:String}) ORDER BY name",
            {"d": self.db, "p": prefix})]

    def drop_table(self, table: str) -> None:
        self.command(f"DROP TABLE IF EXISTS {self.db}.{_check_ident('table', table)}")

    # -- schema ------------------------------------------------------------

    def init_schema(self) -> None:
        self.command(f"CREATE DATABASE IF NOT EXISTS {self.db}")
        # Granules of 1,024 rows, each column's compressed in blocks of about
        # one granule (8 KiB): the finer candles of a coarse series' ambiguous
        # bars (load_bars) are read from the granules that hold them, not from
        # every 8,192-row granule of the span.  ts is stored as deltas, which
        # take that storage back (regular steps compress to almost nothing).
        self.command(f"""
            CREATE TABLE IF NOT EXISTS {self.db}.candles (
                instrument LowCardinality(String), granularity LowCardinality(String),
                ts DateTime64(3, 'UTC') CODEC(Delta, LZ4),
                open Float64, high Float64, low Float64, close Float64, volume Float64,
                side Nullable(Int8)
            ) ENGINE = MergeTree ORDER BY (instrument, granularity, ts)
            SETTINGS index_granularity = 1024, min_compress_block_size = 8192""")
        # Stores made before sides: a column of NULLs (no position), in metadata only.
        self.command(f"ALTER TABLE {self.db}.candles ADD COLUMN IF NOT EXISTS side Nullable(Int8)")
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
        # Labels of a source's series are kept apart from the built-in
        # table's by a source column ('' for the built-in table), added to
        # tables made before it at the end of their key.
        self._add_source_column("label_chunks", key=True)
        self.command(f"""
            CREATE TABLE IF NOT EXISTS {self.db}.sources (
                name String, definition String, created DateTime64(3, 'UTC') DEFAULT now64(3)
            ) ENGINE = MergeTree ORDER BY name""")

    def _label_part_settings(self, table: str) -> None:
        """``LABEL_TABLE_SETTINGS`` on a label table made before (some of)
        them were its own (read from its definition: one metadata change,
        once)."""
        full = self.rows("SELECT engine_full FROM system.tables WHERE database = {d:String} "
                         "AND name = {t:String}", {"d": self.db, "t": table})[0][0]
        missing = [f"{name} = {value}" for name, value in LABEL_TABLE_SETTINGS.items() if name not in full]
        if missing:
            self.command(f"ALTER TABLE {self.db}.{table} MODIFY SETTING {', '.join(missing)}")

    def _add_source_column(self, table: str, key: bool = False) -> None:
        has = self.rows("SELECT count() FROM system.columns WHERE database = {d:String} "
                        "AND table = {t:String} AND name = 'source'", {"d": self.db, "t": table})[0][0]
        if has:
            return
        sorting = self.rows("SELECT sorting_key FROM system.tables WHERE database = {d:String} "
                            "AND name = {t:String}", {"d": self.db, "t": table})[0][0]
        more = f", MODIFY ORDER BY ({sorting}, source)" if key else ""
        # No DEFAULT: a column with one cannot join the sorting key; a
        # String's own default ('') is the built-in table's name.
        self.command(f"ALTER TABLE {self.db}.{table} ADD COLUMN source LowCardinality(String){more}")

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
            ) ENGINE = MergeTree ORDER BY (instrument, granularity, label_set, ts)
            SETTINGS {LABEL_PART_SETTINGS}""")
        self._add_source_column(f"labels_{set_id}")
        self._label_part_settings(f"labels_{set_id}")
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

    def _label_where(self) -> str:
        """A series' rows of a label table or the manifest (its source's own)."""
        return "instrument = {i:String} AND granularity = {g:String} AND source = {src:String}"

    @staticmethod
    def _series_params(key: SeriesKey, **more) -> dict:
        return {"i": key.instrument, "g": key.granularity, "src": key.source, **more}

    def series_summary(self, key: SeriesKey) -> tuple[int, int | None, int | None]:
        """(rows, first ts ms, last ts ms) of a series."""
        n, lo, hi = self._reader(key).rows(
            f"SELECT count(), min(toUnixTimestamp64Milli(ts)), max(toUnixTimestamp64Milli(ts)) "
            f"FROM {self._rel(key)} WHERE {self._series_where()}", self._series_params(key))[0]
        return int(n), (int(lo) if n else None), (int(hi) if n else None)

    def chart_bars(self, key: SeriesKey, lo: int, hi: int, most: int
                   ) -> tuple[int, int, list[tuple[int, float, float, float, float]]]:
        """A window [lo, hi) of a series to draw: (bars in it, bucket width
        in ms, rows of ts, open, high, low, close).  Past ``most`` bars the
        rows are buckets of equal time (0: every bar), aggregated where the
        candles are, a source's included; a gap such as a weekend stays a gap."""
        rel, reader = self._rel(key), self._reader(key)
        where = (f"{self._series_where()} AND ts >= fromUnixTimestamp64Milli({{lo:Int64}}, 'UTC') "
                 f"AND ts < fromUnixTimestamp64Milli({{hi:Int64}}, 'UTC')")
        p = self._series_params(key, lo=lo, hi=hi)
        (count,) = reader.rows(f"SELECT count() FROM {rel} WHERE {where}{self._in_order(key)}", p)[0]
        if int(count) <= most:
            return int(count), 0, reader.rows(
                f"SELECT toUnixTimestamp64Milli(ts), open, high, low, close FROM {rel} WHERE {where} "
                f"ORDER BY ts{self._in_order(key)}", p)
        bucket = -(-(hi - lo) // most)
        return int(count), bucket, reader.rows(
            f"SELECT min(toUnixTimestamp64Milli(ts)), argMin(open, ts), max(high), min(low), argMax(close, ts) "
            f"FROM {rel} WHERE {where} GROUP BY intDiv(toUnixTimestamp64Milli(ts) - {{lo:Int64}}, {{b:Int64}}) "
            f"ORDER BY 1{self._in_order(key)}", {**p, "b": bucket})

    def series_table(self) -> list[tuple[str, str, int, int, int]]:
        """(instrument, granularity, candles, first ts ms, last ts ms) of every series."""
        return [(i, g, int(n), int(lo), int(hi)) for i, g, n, lo, hi in self.rows(
            f"SELECT instrument, granularity, count(), min(toUnixTimestamp64Milli(ts)), "
            f"max(toUnixTimestamp64Milli(ts)) FROM {self.db}.candles "
            f"GROUP BY instrument, granularity ORDER BY instrument, granularity")]

    def manifest(self, source: str = "") -> list[tuple[str, str, str, int, int, int, int, int]]:
        """Every computed chunk range of a source's series (default: the
        built-in table's): (instrument, granularity, label set, start ms,
        end ms, rows, incomplete rows, computed at ms)."""
        return [(i, g, s, int(a), int(b), int(n), int(inc), int(at)) for i, g, s, a, b, n, inc, at
                in self.rows(f"SELECT instrument, granularity, label_set, start_ts, end_ts, rows, "
                             f"incomplete, toUnixTimestamp64Milli(computed_at) "
                             f"FROM {self.db}.label_chunks FINAL WHERE source = {{src:String}}",
                             {"src": source})]

    def halo_windows(self, items: list[tuple[SeriesKey, int, int, int, int]]
                     ) -> list[tuple[int, int]]:
        """For each (key, first ts, last ts, back, ahead) of a change: the ts
        of the candle ``ahead`` bars before ``first`` and of the candle
        ``back`` bars after ``last`` (the change's own bounds where the
        series has fewer).  A chunk whose range meets that window read a
        changed candle, in its own rows or its halo.  One query for all."""
        if not items:
            return []
        selects, params = [], {}
        rel = self._rel([it[0] for it in items])
        for n, (key, first, last, back, ahead) in enumerate(items):
            where = f"instrument = {{i{n}:String}} AND granularity = {{g{n}:String}}"
            params.update({f"i{n}": key.instrument, f"g{n}": key.granularity, f"f{n}": first,
                           f"l{n}": last, f"b{n}": max(back, 1), f"a{n}": max(ahead, 1)})
            selects.append(
                f"SELECT {n} AS n, "
                f"ifNull((SELECT minOrNull(t) FROM (SELECT toUnixTimestamp64Milli(ts) AS t FROM {rel} "
                f"WHERE {where} AND ts < fromUnixTimestamp64Milli({{f{n}:Int64}}, 'UTC') "
                f"ORDER BY ts DESC LIMIT {{a{n}:UInt64}})), {{f{n}:Int64}}) AS lo, "
                f"ifNull((SELECT maxOrNull(t) FROM (SELECT toUnixTimestamp64Milli(ts) AS t FROM {rel} "
                f"WHERE {where} AND ts > fromUnixTimestamp64Milli({{l{n}:Int64}}, 'UTC') "
                f"ORDER BY ts LIMIT {{b{n}:UInt64}})), {{l{n}:Int64}}) AS hi")
        out: dict[int, tuple[int, int]] = {}
        for start in range(0, len(selects), 200):  # bounded statements
            part = selects[start:start + 200]
            for n, lo, hi in self._reader(items[0][0]).rows(" UNION ALL ".join(part), params):
                out[int(n)] = (int(lo), int(hi))
        return [out[n] for n in range(len(items))]

    def changes(self) -> list[tuple[str, str, int, int, int]]:
        """The ingest log: (instrument, granularity, first ts, last ts, changed at ms)."""
        return [(i, g, int(a), int(b), int(t)) for i, g, a, b, t in self.rows(
            f"SELECT instrument, granularity, first_ts, last_ts, changed_at "
            f"FROM {self.db}.candle_changes")]

    def has_series(self, key: SeriesKey) -> bool:
        """Whether the series has any candle (reads one row, not a count)."""
        return bool(self._reader(key).rows(
            f"SELECT 1 FROM {self._rel(key)} WHERE {self._series_where()} LIMIT 1", self._series_params(key)))

    def instruments(self, source: str = "", granularities: set[str] | None = None
                    ) -> list[tuple[str, str, int]]:
        """(instrument, granularity, candles) of every series (of a source:
        its stored granularities and those it derives, or those of them in
        ``granularities``: each derived one is an aggregation of the base)."""
        if source:
            src = self.source(source)
            keys = [SeriesKey("", g, source) for g in (*src.stored, *src.derived())
                    if granularities is None or g in granularities]
            if not keys:
                return []
            rel = self._rel(keys)
        else:
            keys, rel = [SeriesKey("", "")], f"{self.db}.candles"
        return [(i, g, int(n)) for i, g, n in self._reader(keys).rows(
            f"SELECT instrument, granularity, count() FROM {rel} "
            f"GROUP BY instrument, granularity ORDER BY instrument, granularity {_IN_ORDER}")]

    def chunk_starts(self, key: SeriesKey, start_ms: int, end_ms: int, chunk_size: int) -> list[tuple[int, int]]:
        """(first ts, rows) of each run of ``chunk_size`` candles in [start, end)."""
        rows = self._reader(key).rows(f"""
            SELECT intDiv(rn - 1, {{cs:UInt64}}) AS k, min(t), count()
            FROM (SELECT toUnixTimestamp64Milli(ts) AS t, row_number() OVER (ORDER BY ts) AS rn
                  FROM {self._rel(key)}
                  WHERE {self._series_where()}
                    AND ts >= fromUnixTimestamp64Milli({{a:Int64}}, 'UTC')
                    AND ts < fromUnixTimestamp64Milli({{b:Int64}}, 'UTC'))
            GROUP BY k ORDER BY k""", self._series_params(key, a=start_ms, b=end_ms, cs=chunk_size))
        return [(int(t), int(n)) for _, t, n in rows]

    def chunk_marks(self, keys: list[SeriesKey], start_ms: int, end_ms: int, chunk_size: int,
                    back: int, ahead: int, counts: dict[SeriesKey, int],
                    firsts: Mapping[SeriesKey, int] | None = None) -> dict[SeriesKey, dict[int, int]]:
        """The ts of the candles that start a run of ``chunk_size`` or bound
        a halo of ``back``/``ahead`` rows, by 1-based row number in [start,
        end), per series with candles there (``counts``: ``range_counts``
        over the same range); ``jobs.plan.series_runs`` cuts the runs.

        A numbered read of each series with more than one chunk keeps only
        those rows; the series that fit one chunk are read once together
        for their first ts, unless ``firsts`` has it (the first ts in the
        same range, as ``small_series_counts`` gives it)."""
        out: dict[SeriesKey, dict[int, int]] = {}
        p: dict[str, Any] = {"a": start_ms, "b": end_ms, "cs": chunk_size, "back": back, "ahead": ahead}
        known = firsts or {}
        for k in keys:
            if 0 < counts[k] <= chunk_size and k in known:
                out[k] = {1: known[k]}
        small = [k for k in keys if 0 < counts[k] <= chunk_size and k not in known]
        total = [k for k in keys if counts[k] > chunk_size]
        if small:
            # Only the small series' rows are read here (the key prunes the rest).
            first_ts = {(i, g): int(t) for i, g, t in self._reader(small).rows(
                f"SELECT instrument, granularity, min(toUnixTimestamp64Milli(ts)) FROM {self._rel(small)} "
                f"WHERE {_in_keys(small)} AND ts >= fromUnixTimestamp64Milli({{a:Int64}}, 'UTC') "
                f"AND ts < fromUnixTimestamp64Milli({{b:Int64}}, 'UTC') GROUP BY instrument, granularity "
                f"{_IN_ORDER}", {**p, **_keys_params(small)})}
            for k in small:
                out[k] = {1: first_ts[(k.instrument, k.granularity)]}
        # Series of a few chunks are numbered together, a batch a statement
        # (one statement a series cost ~20 ms each: 30 min for 100k series).
        # A source's server that allows no setting (a read-only user) cannot
        # run the one-thread numbering below: its series are all numbered so.
        whole = self._reader(total).may_set if total else True
        batched = [k for k in total if counts[k] <= SMALL_SERIES or not whole]
        numbered = set(batched)
        for part in _batches(batched, counts, BATCH_ROWS):
            for i, g, rn, t in self._reader(part).rows(f"""
                    SELECT instrument, granularity, rn, t FROM (
                        SELECT instrument, granularity, toUnixTimestamp64Milli(ts) AS t,
                               row_number() OVER (PARTITION BY instrument, granularity ORDER BY ts) AS rn
                        FROM {self._rel(part)}
                        WHERE {_in_keys(part)} AND ts >= fromUnixTimestamp64Milli({{a:Int64}}, 'UTC')
                          AND ts < fromUnixTimestamp64Milli({{b:Int64}}, 'UTC'))
                    WHERE (rn - 1) % {{cs:Int64}} = 0 OR (rn - 1 + {{back:Int64}}) % {{cs:Int64}} = 0
                       OR (rn - {{ahead:Int64}}) % {{cs:Int64}} = 0""", {**p, **_keys_params(part)}):
                out.setdefault(SeriesKey(i, g, part[0].source), {})[int(rn)] = int(t)
        for key in (k for k in total if k not in numbered):
            # Rows numbered in key order by one thread (rowNumberInAllBlocks
            # counts rows as they stream by, so the stream must be one):
            # several times faster than row_number() over a window.
            out[key] = {int(rn): int(t) for rn, t in self._reader(key).rows(f"""
                    SELECT rn, t FROM (
                        SELECT t, toInt64(rowNumberInAllBlocks()) + 1 AS rn
                        FROM (SELECT toUnixTimestamp64Milli(ts) AS t FROM {self._rel(key)}
                              WHERE {self._series_where()}
                                AND ts >= fromUnixTimestamp64Milli({{a:Int64}}, 'UTC')
                                AND ts < fromUnixTimestamp64Milli({{b:Int64}}, 'UTC')
                              ORDER BY instrument, granularity, ts))
                    WHERE (rn - 1) % {{cs:Int64}} = 0 OR (rn - 1 + {{back:Int64}}) % {{cs:Int64}} = 0
                       OR (rn - {{ahead:Int64}}) % {{cs:Int64}} = 0
                    SETTINGS max_threads = 1""", self._series_params(key, **{k: p[k] for k in
                                                                            ("a", "b", "cs", "back", "ahead")}))}
        return out

    def bar_times(self, keys: list[SeriesKey], start_ms: int, end_ms: int,
                  sizes: Mapping[SeriesKey, int]) -> Iterator[tuple[SeriesKey, np.ndarray]]:
        """(key, the ts of its bars in [start, end), sorted) of each of
        ``keys`` with bars there, one batch of series a statement.

        For the series a source derives: their counts, bounds and chunk
        marks all come from this one read, where ``range_counts``,
        ``series_spans`` and ``chunk_marks`` would each aggregate the
        source again.  Only the buckets' ts are asked for, so ClickHouse
        computes no OHLCV aggregate.  ``sizes``: each series' candles in
        its source (at least its bars), which batches are cut by."""
        for part in _batches(keys, sizes, BATCH_ROWS):
            table = self._reader(part).arrow(
                f"SELECT indexOf({{keys:Array(Tuple(String, String))}}, (instrument, granularity)) AS k, "
                f"toUnixTimestamp64Milli(ts) AS t FROM {self._rel(part)} WHERE {_in_keys(part)} "
                f"AND ts >= fromUnixTimestamp64Milli({{a:Int64}}, 'UTC') "
                f"AND ts < fromUnixTimestamp64Milli({{b:Int64}}, 'UTC') ORDER BY k, t{self._in_order(part)}",
                {"a": start_ms, "b": end_ms, **_keys_params(part)})
            k = table.column("k").to_numpy()
            t = table.column("t").to_numpy()
            edges = np.flatnonzero(k[1:] != k[:-1]) + 1
            for a, b in zip(np.concatenate([[0], edges]), np.concatenate([edges, [len(k)]])):
                if b > a:
                    yield part[int(k[a]) - 1], t[a:b]

    def range_counts(self, table: str, keys: list[SeriesKey], start_ms: int, end_ms: int,
                     label_set: str | None = None) -> dict[SeriesKey, int]:
        """Rows of each series in [start, end) of ``table`` (candles, or a
        label table with ``label_set``).  One count per series, joined by
        UNION ALL: a count whose filter is a range of the primary key is
        answered from the index and its edge granules (milliseconds for
        millions of rows), where a GROUP BY over several series, or a tuple
        IN, reads every row."""
        out: dict[SeriesKey, int] = {}
        cond = "ts >= fromUnixTimestamp64Milli({a:Int64}, 'UTC') AND ts < fromUnixTimestamp64Milli({b:Int64}, 'UTC')"
        if label_set is not None:
            cond += " AND label_set = {s:String}"
        for at in range(0, len(keys), 64):
            part = keys[at:at + 64]
            p: dict[str, Any] = {"a": start_ms, "b": end_ms, "s": label_set}
            arms = []
            for n, k in enumerate(part):
                rel = self._rel(k) if table == "candles" else f"{self.db}.{table}"
                own = f" AND source = {{src{n}:String}}" if label_set is not None else ""
                arms.append(f"SELECT {n} AS k, count() AS n FROM {rel} "
                            f"WHERE instrument = {{i{n}:String}} AND granularity = {{g{n}:String}} AND {cond}{own}")
                p.update({f"i{n}": k.instrument, f"g{n}": k.granularity})
                if label_set is not None:
                    p[f"src{n}"] = k.source
            run = self._reader(part) if table == "candles" else self
            for n, c in run.rows(" UNION ALL ".join(arms), p):
                out[part[int(n)]] = int(c)
        return out

    def small_series_counts(self, keys: list[SeriesKey], start_ms: int, end_ms: int,
                            sizes: dict[SeriesKey, int]) -> dict[SeriesKey, tuple[int, int, int]]:
        """(rows in [start, end), first ts, last ts) of series of at most
        ``SMALL_SERIES`` candles in all (``sizes``), read together in
        batches: for them one statement over their rows is cheaper than
        ``range_counts``' and ``series_spans``' arm per series (~10 ms each)."""
        out: dict[SeriesKey, tuple[int, int, int]] = {}
        small = [k for k in keys if 0 < sizes.get(k, 0) <= SMALL_SERIES]
        for part in _batches(small, sizes, COUNT_ROWS):
            for i, g, n, lo, hi in self._reader(part).rows(
                    f"SELECT instrument, granularity, count(), min(toUnixTimestamp64Milli(ts)), "
                    f"max(toUnixTimestamp64Milli(ts)) FROM {self._rel(part)} WHERE {_in_keys(part)} "
                    f"AND ts >= fromUnixTimestamp64Milli({{a:Int64}}, 'UTC') "
                    f"AND ts < fromUnixTimestamp64Milli({{b:Int64}}, 'UTC') GROUP BY instrument, granularity "
                    f"{_IN_ORDER}", {"a": start_ms, "b": end_ms, **_keys_params(part)}):
                out[SeriesKey(i, g, part[0].source)] = (int(n), int(lo), int(hi))
        return out

    def series_spans(self, keys: list[SeriesKey]) -> dict[SeriesKey, tuple[int, int]]:
        """(first ts, last ts) of each series that has candles.  Each end is
        read from one granule of the primary key (min/max would read every
        row); 64 series to a statement, as in ``range_counts``."""
        out: dict[SeriesKey, tuple[int, int]] = {}
        for at in range(0, len(keys), 64):
            part = keys[at:at + 64]
            p: dict[str, Any] = {}
            arms = []
            for n, k in enumerate(part):
                where = f"instrument = {{i{n}:String}} AND granularity = {{g{n}:String}}"
                rel = self._rel(k)
                arms.append(f"SELECT {n} AS k, "
                            f"(SELECT toUnixTimestamp64Milli(ts) FROM {rel} WHERE {where} "
                            f"ORDER BY ts LIMIT 1) AS lo, "
                            f"(SELECT toUnixTimestamp64Milli(ts) FROM {rel} WHERE {where} "
                            f"ORDER BY ts DESC LIMIT 1) AS hi")
                p.update({f"i{n}": k.instrument, f"g{n}": k.granularity})
            for n, lo, hi in self._reader(part).rows(" UNION ALL ".join(arms), p):
                if lo is not None and hi is not None:
                    out[part[int(n)]] = (int(lo), int(hi))
        return out

    def load(self, key: SeriesKey, start_ms: int, end_ms: int, back: int, ahead: int,
             lo_ms: int = 0, hi_ms: int = 0, *, side: bool = False) -> tuple[pa.Table, int, int]:
        """Candles of [start, end) plus ``back`` rows before and ``ahead`` after
        (and their ``side`` column with ``side``).

        Returns (table sorted by ts, index of the first own row, own rows).
        ``lo_ms``/``hi_ms``: the ts of the farthest halo rows when the plan
        knows them (``chunk_plan``): the load is then one plain range read.
        Rows found there since the plan are cut off; rows missing since then
        send the load back to finding its bounds itself.
        """
        where, rel = self._series_where(), self._rel(key)
        # One range read in the table's key order (no sort).  Bounds the plan
        # does not know are the ts of the farthest halo rows, found by two
        # small scalar subqueries; without halo rows a bound falls back to
        # the chunk's own.
        lower = ("fromUnixTimestamp64Milli({lo:Int64}, 'UTC')" if lo_ms else f"""
            ifNull((SELECT minOrNull(ts) FROM (SELECT ts FROM {rel}
                    WHERE {where} AND ts < fromUnixTimestamp64Milli({{a:Int64}}, 'UTC')
                    ORDER BY ts DESC LIMIT {{back:UInt64}})),
                  fromUnixTimestamp64Milli({{a:Int64}}, 'UTC'))""")
        upper = ("fromUnixTimestamp64Milli({hi:Int64}, 'UTC')" if hi_ms else f"""
            ifNull((SELECT maxOrNull(ts) FROM (SELECT ts FROM {rel}
                    WHERE {where} AND ts >= fromUnixTimestamp64Milli({{b:Int64}}, 'UTC')
                    ORDER BY ts LIMIT {{ahead:UInt64}})),
                  fromUnixTimestamp64Milli({{b:Int64}} - 1, 'UTC'))""")
        sql = f"""
            SELECT {_candle_select(side)} FROM {rel}
            WHERE {where} AND ts >= {lower} AND ts <= {upper}
            ORDER BY instrument, granularity, ts{self._in_order(key)}"""
        table = _ts_to_ms(self._reader(key).arrow(sql, self._series_params(key, a=start_ms, b=end_ms, back=back,
                                                              ahead=ahead, lo=lo_ms, hi=hi_ms)))
        ts = table.column("ts").to_numpy()
        first, last = int(np.searchsorted(ts, start_ms)), int(np.searchsorted(ts, end_ms))
        if (lo_ms and first < back) or (hi_ms and len(ts) - last < ahead):
            return self.load(key, start_ms, end_ms, back, ahead, side=side)  # rows gone since the plan
        if lo_ms or hi_ms:
            keep_from, keep_to = max(first - back, 0), min(last + ahead, len(ts))
            if keep_from or keep_to < len(ts):
                table = table.slice(keep_from, keep_to - keep_from)
                first, last = first - keep_from, last - keep_from
        return table, first, last - first

    def load_many(self, parts: list[tuple], back: int, ahead: int, *, side: bool = False
                  ) -> list[tuple[pa.Table, int, int]]:
        """``load`` for several series ranges (a pack of small series): one
        result per part, in order, in one or two queries.

        ``load`` finds its halo bounds with two subqueries, which cost more
        than the read itself for a small series.  Here one read takes every
        range widened by a time margin (the halo in bars at twice the bar
        length, plus a week for closed markets); each part is then cut to
        exactly ``back`` and ``ahead`` rows.  A part with fewer rows than
        that on a side is exact when the series has no rows beyond the
        margin there (one query asks, for all such parts at once); the rare
        part that has some (a gap longer than the margin) is loaded by
        ``load``.  ``parts``: (key, start, end), or (key, start, end, lo,
        hi) with the plan's halo bounds, which a lone part reads by."""
        if len(parts) == 1:
            key, a, b, *bounds = parts[0]
            return [self.load(key, a, b, back, ahead, *bounds, side=side)]
        parts = [(p[0], p[1], p[2]) for p in parts]  # a pack's rows are bounded by its margins
        week = 7 * 86_400_000
        bounds = []
        for key, a, b in parts:
            bar = GRANULARITIES.get(key.granularity, 60_000)
            bounds.append((a - 2 * back * bar - week, b + 2 * ahead * bar + week))
        where, params = self._ranges_where(
            [(k, lo, hi) for (k, _, _), (lo, hi) in zip(parts, bounds)],
            "ts >= fromUnixTimestamp64Milli({a%d:Int64}, 'UTC') "
            "AND ts < fromUnixTimestamp64Milli({b%d:Int64}, 'UTC')")
        insts = sorted({k.instrument for k, _, _ in parts})
        grans = sorted({k.granularity for k, _, _ in parts})
        params.update(insts=insts, grans=grans, ni=list(range(len(insts))), ng=list(range(len(grans))))
        pkeys = [k for k, _, _ in parts]
        # Each row's series as a number: two lookups of one LowCardinality
        # value each (a tuple per row looked up in an array tripled the
        # read's CPU).
        table = _ts_to_ms(self._reader(pkeys).arrow(
            f"SELECT transform(instrument, {{insts:Array(String)}}, {{ni:Array(UInt32)}}, toUInt32(0)) "
            f"* {len(grans)} + transform(granularity, {{grans:Array(String)}}, {{ng:Array(UInt32)}}, "
            f"toUInt32(0)) AS k, {_candle_select(side)} FROM {self._rel(pkeys)} WHERE {where} "
            f"ORDER BY instrument, granularity, ts{self._in_order(pkeys)}", params))
        k = table.column("k").to_numpy()
        keys = {insts.index(key.instrument) * len(grans) + grans.index(key.granularity):
                (key.instrument, key.granularity) for key in pkeys}
        table = table.select([*_CANDLE_COLS, *([SIDE] if side else [])])
        # Rows are ordered by series: each series is one contiguous run.
        edges = np.flatnonzero(k[1:] != k[:-1]) + 1
        starts = np.concatenate([[0], edges]).astype(np.int64)
        ends = np.concatenate([edges, [len(k)]]).astype(np.int64)
        rows_of = {keys[int(k[s])]: (int(s), int(e)) for s, e in zip(starts, ends) if len(k)}
        ts_all = table.column("ts").to_numpy()
        out: list[Any] = []
        unsure: list[tuple[int, str]] = []
        for n, (key, a, b) in enumerate(parts):
            s0, e0 = rows_of.get((key.instrument, key.granularity), (0, 0))
            ts = ts_all[s0:e0]
            i0, i1 = int(np.searchsorted(ts, a)), int(np.searchsorted(ts, b))
            first, last = max(i0 - back, 0), min(i1 + ahead, len(ts))
            out.append((table.slice(s0 + first, last - first), i0 - first, i1 - i0))
            if i0 - first < back:
                unsure.append((n, "before"))
            if last - i1 < ahead:
                unsure.append((n, "after"))
        if unsure:
            # One grouped read of the rows past the margins (none, usually).
            terms, p = [], {}
            for m, (n, edge) in enumerate(unsure):
                op = "<" if edge == "before" else ">="
                t = bounds[n][0] if edge == "before" else bounds[n][1]
                terms.append(f"(instrument = {{i{m}:String}} AND granularity = {{g{m}:String}} "
                             f"AND ts {op} fromUnixTimestamp64Milli({{t{m}:Int64}}, 'UTC'))")
                p.update({f"i{m}": parts[n][0].instrument, f"g{m}": parts[n][0].granularity, f"t{m}": t})
            past = {(i, g): (int(lo), int(hi)) for i, g, lo, hi in self._reader(pkeys).rows(
                f"SELECT instrument, granularity, min(toUnixTimestamp64Milli(ts)), "
                f"max(toUnixTimestamp64Milli(ts)) FROM {self._rel(pkeys)} WHERE {' OR '.join(terms)} "
                f"GROUP BY instrument, granularity", p)}
            for n, edge in unsure:
                key, a, b = parts[n]
                seen = past.get((key.instrument, key.granularity))
                if seen and (seen[0] < bounds[n][0] if edge == "before" else seen[1] >= bounds[n][1]):
                    out[n] = self.load(key, a, b, back, ahead, side=side)  # more rows past the margin
        return out

    def load_bars(self, key: SeriesKey, starts: np.ndarray, bar_ms: int,
                  columns: tuple[str, ...] = ("ts", "open", "high", "low", "close", "volume")
                  ) -> pa.Table:
        """Candles of ``key`` inside the bars [s, s + bar_ms) for s in ``starts``,
        and nothing else: the finer candles of a coarse series' ambiguous bars.

        One read keeps the rows whose bar number ``(ts - phase) div bar_ms``
        is in the set asked for.  The primary key prunes by that set: only
        the 1,024-row granules that hold one of the bars are read (a third
        of a 4-year M1 span for ~700 ambiguous H1 bars; with the 8,192-row
        granules of stores made before, every granule holds one and the
        span is read in full), then a hash lookup per row.  Bars of
        one series usually share a phase modulo their length; each distinct
        phase (a session shift, daylight saving) gets its own read.  Every
        column asked for is decompressed for each granule read, hence
        ``columns``."""
        bad = set(columns) - set(_CANDLE_COLS)
        if bad or "ts" not in columns:
            raise ValueError(f"load_bars columns must include ts and be candle columns, got {columns}")
        cols = ", ".join(columns)
        starts = np.unique(np.asarray(starts, dtype=np.int64))
        parts = []
        phases = starts % bar_ms
        for phase in np.unique(phases):
            group = starts[phases == phase]
            # Bar numbers count from the group's first bar: ts - a >= 0 on the
            # rows kept, where intDiv (which truncates toward zero) is the
            # floor even before 1970.
            parts.append(self._reader(key).arrow(
                f"SELECT {cols} FROM {self._rel(key)} "
                f"WHERE {self._series_where()} "
                f"AND ts >= fromUnixTimestamp64Milli({{a:Int64}}, 'UTC') "
                f"AND ts < fromUnixTimestamp64Milli({{b:Int64}}, 'UTC') "
                f"AND intDiv(toUnixTimestamp64Milli(ts) - {{a:Int64}}, {{w:Int64}}) "
                f"IN {{bars:Array(Int64)}} ORDER BY instrument, granularity, ts",
                self._series_params(key, a=int(group[0]), b=int(group[-1]) + bar_ms, w=int(bar_ms),
                                    bars=[int(x) for x in (group - group[0]) // bar_ms])))
        if not parts:
            parts.append(self._reader(key).arrow(f"SELECT {cols} FROM {self._rel(key)} WHERE 0"))
        table = _ts_to_ms(pa.concat_tables(parts))
        if len(parts) > 1:
            # Bars of two phases can overlap (a daylight-saving shift): their
            # shared candles come once.
            table = table.sort_by("ts")
            ts = table.column("ts").to_numpy()
            once = np.ones(len(ts), dtype=bool)
            once[1:] = ts[1:] != ts[:-1]
            if not once.all():
                table = table.filter(pa.array(once))
        return table

    def ingest(self, key: SeriesKey, candles: pa.Table, codes: np.ndarray, reasons) -> IngestReport:
        """Insert valid rows; rows whose ts already exists are replaced when
        their values (side included) differ and skipped when identical, so
        ingesting a file twice changes nothing.  ``codes`` are per-row defect
        codes (0 = ok); ``candles`` may have a float64 ``side`` column (NaN:
        no position, stored as NULL)."""
        n = candles.num_rows
        rejected = [(int(i), int(candles.column("ts")[int(i)].as_py()), reasons(int(codes[i])))
                    for i in np.flatnonzero(codes)]
        good = candles.filter(pa.array(codes == 0)) if len(rejected) else candles  # (a copy)
        if good.num_rows == 0:
            return IngestReport(n, 0, 0, 0, rejected)
        good = _stored_side(good)
        ts = good.column("ts").to_numpy()
        with self._lock:
            existing = _ts_to_ms(self.arrow(
                f"SELECT ts, open, high, low, close, volume, side "
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
                new_side, old_side = (_side_floats(t.column(SIDE)) for t in (good, existing))
                same &= (new_side[pos] == old_side) | (np.isnan(new_side[pos]) & np.isnan(old_side))
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
        coarse chunk that depends on a finer series checks it for free.
        A source has no ingest log: its stamp is the count and an
        order-independent hash of the candles there, computed in ClickHouse."""
        if key.source:
            return self.window_prints(key, [(start_ms, end_ms)])[0]
        n, last = self.rows(
            f"SELECT count(), max(changed_at) FROM {self.db}.candle_changes "
            f"WHERE {self._series_where()} AND first_ts < {{b:Int64}} AND last_ts >= {{a:Int64}}",
            self._series_params(key, a=start_ms, b=end_ms))[0]
        return f"{int(n)}:{int(last or 0)}"

    def window_prints(self, key: SeriesKey, windows: list[tuple[int, int]]) -> list[str]:
        """The count and row-hash sum (``sources.fingerprint``) of the
        candles of ``key`` in each [lo, hi) of ``windows``, in one grouped
        read: each candle is grouped by the elementary interval between
        window bounds that holds it, counted and summed in ClickHouse, and
        each window adds up its own.

        The interval is named by its lower bound, ``roundDown(t, bounds)``:
        a binary search of the sorted constant array per row, vectorised
        (a linear scan under 32 bounds), exact for any layout since it
        compares the integers themselves.  An ASOF JOIN of every row to the
        bounds did the same lookup at ~3x the cost of hashing the rows."""
        if not windows:
            return []
        bounds = sorted({b for w in windows for b in w})
        upper = (" AND ts < fromUnixTimestamp64Milli({hi:Int64}, 'UTC')"
                 if bounds[-1] < EVER[1] else "")
        row_hash = fingerprint.row_hash_sql(self.source_sided(key))
        # Rows before the first bound are filtered out, so roundDown's
        # clamp to the first bound never names a row's interval wrongly.
        rows = self._reader(key).rows(f"""
            SELECT roundDown(toUnixTimestamp64Milli(ts), {{bs:Array(Int64)}}) AS b,
                   count(), sumWithOverflow({row_hash})
            FROM {self._rel(key)} WHERE {self._series_where()}
              AND ts >= fromUnixTimestamp64Milli({{lo:Int64}}, 'UTC'){upper}
            GROUP BY b""", self._series_params(key, lo=max(bounds[0], EVER[0]), hi=bounds[-1], bs=bounds))
        index = {b: j for j, b in enumerate(bounds)}
        return fingerprint.combine(windows, bounds, {index[int(b)]: (int(n), int(s)) for b, n, s in rows})

    def chunk_prints(self, source: str) -> dict[tuple[str, str, str, int, int], str]:
        """The input fingerprint of every computed chunk of a source's
        series: (label set, instrument, granularity, start ms, end ms) -> print."""
        return {(s, i, g, int(a), int(b)): h for s, i, g, a, b, h in self.rows(
            f"SELECT label_set, instrument, granularity, start_ts, end_ts, input_hash "
            f"FROM {self.db}.label_chunks FINAL WHERE source = {{src:String}}", {"src": source})}

    # -- labels ------------------------------------------------------------

    def chunk_record(self, key: SeriesKey, set_id: str, start_ms: int, end_ms: int) -> tuple[str, int] | None:
        """(input hash, incomplete rows) recorded for a written chunk, if any."""
        rows = self.rows(
            f"SELECT input_hash, incomplete FROM {self.db}.label_chunks FINAL "
            f"WHERE {self._label_where()} AND label_set = {{s:String}} "
            f"AND start_ts = {{a:Int64}} AND end_ts = {{b:Int64}}",
            self._series_params(key, s=set_id, a=start_ms, b=end_ms))
        return (rows[0][0], int(rows[0][1])) if rows else None

    def chunk_records(self, parts: list[tuple[SeriesKey, int, int]], set_id: str
                      ) -> list[tuple[str, int] | None]:
        """``chunk_record`` of several ranges in one query, in order."""
        if len(parts) == 1:
            return [self.chunk_record(parts[0][0], set_id, parts[0][1], parts[0][2])]
        where, params = self._ranges_where(parts, "start_ts = {a%d:Int64} AND end_ts = {b%d:Int64}", True)
        params["s"] = set_id
        found = {(i, g, src, int(a), int(b)): (h, int(n)) for i, g, src, a, b, h, n in self.rows(
            f"SELECT instrument, granularity, source, start_ts, end_ts, input_hash, incomplete "
            f"FROM {self.db}.label_chunks FINAL WHERE label_set = {{s:String}} AND ({where})", params)}
        return [found.get((k.instrument, k.granularity, k.source, a, b)) for k, a, b in parts]

    @staticmethod
    def _ranges_where(parts: list[tuple[SeriesKey, int, int]], cond: str,
                      labels: bool = False) -> tuple[str, dict]:
        """An OR of (series and ``cond``) per part, with its parameters;
        ``labels``: of a label table or the manifest, which has the source."""
        terms, params = [], {}
        for n, (key, a, b) in enumerate(parts):
            own = f"source = {{src{n}:String}} AND " if labels else ""
            terms.append(f"(instrument = {{i{n}:String}} AND granularity = {{g{n}:String}} AND {own}"
                         + cond.replace("%d", str(n)) + ")")
            params.update({f"i{n}": key.instrument, f"g{n}": key.granularity, f"a{n}": a, f"b{n}": b})
            if labels:
                params[f"src{n}"] = key.source
        return " OR ".join(terms), params

    def write_labels_many(self, set_id: str, writes: list[tuple], job_id: str, fresh: bool = False,
                          record: bool = True) -> None:
        """``write_labels`` for several series ranges: one count, at most one
        delete, one insert of label rows and one of manifest rows.
        ``writes``: (key, start_ms, end_ms, labels, input_hash, incomplete)."""
        if len(writes) == 1:
            key, a, b, labels, h, inc = writes[0]
            self.write_labels(key, set_id, a, b, labels, h, inc, job_id, fresh, record)
            return
        table = f"{self.db}.labels_{_check_ident('label set', set_id)}"
        parts = [(w[0], w[1], w[2]) for w in writes]
        where, p = self._ranges_where(parts, "ts >= fromUnixTimestamp64Milli({a%d:Int64}, 'UTC') "
                                             "AND ts < fromUnixTimestamp64Milli({b%d:Int64}, 'UTC')", True)
        rng = f"label_set = {{s:String}} AND ({where})"
        p["s"] = set_id
        present = not fresh and self.rows(f"SELECT count() FROM {table} WHERE {rng}", p)[0][0]
        if present:
            self.command(f"DELETE FROM {table} WHERE {rng}", p)
        tables = [w[3] for w in writes]
        if any(t.num_rows for t in tables):
            self.insert_arrow(f"labels_{set_id}", *_with_many_series([w[0] for w in writes], tables, set_id))
        if record:
            now = time.time_ns() // 1_000_000
            self.write_records(set_id, [(w[0], w[1], w[2], w[4], w[3].num_rows, w[5], now, job_id)
                                        for w in writes])

    def write_records(self, set_id: str, records: list[tuple]) -> None:
        """Manifest rows, in one insert: (key, start_ms, end_ms, input_hash,
        rows, incomplete, computed_at_ms, job_id) each.  Inserting one twice
        is harmless (the table keeps the latest per range)."""
        if not records:
            return
        self.insert_arrow("label_chunks", pa.table({
            "instrument": [r[0].instrument for r in records],
            "granularity": [r[0].granularity for r in records],
            "source": [r[0].source for r in records],
            "label_set": [set_id] * len(records),
            "start_ts": pa.array([r[1] for r in records], pa.int64()),
            "end_ts": pa.array([r[2] for r in records], pa.int64()),
            "input_hash": [r[3] for r in records],
            "rows": pa.array([r[4] for r in records], pa.uint64()),
            "incomplete": pa.array([r[5] for r in records], pa.uint64()),
            "job_id": [r[7] for r in records],
            "computed_at": pa.array([r[6] for r in records], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        }))

    def write_labels(self, key: SeriesKey, set_id: str, start_ms: int, end_ms: int,
                     labels: pa.Table, input_hash: str, incomplete: int, job_id: str,
                     fresh: bool = False, record: bool = True) -> None:
        """Replace the label rows of [start, end) with ``labels``, exactly once.

        Rows already there (a re-run, a retry after a crash between insert
        and bookkeeping) are deleted first, so repeating this never
        duplicates a row.  ``fresh``: the caller knows there are none (the
        first run of a chunk planned over a range without label rows, under
        its job's writer claim), so nothing is asked.  ``record``: insert
        the manifest row too (a job's chunks leave it to their driver, which
        inserts them in batches: ``write_records``).
        """
        table = f"{self.db}.labels_{_check_ident('label set', set_id)}"
        rng = (f"{self._label_where()} AND label_set = {{s:String}} "
               f"AND ts >= fromUnixTimestamp64Milli({{a:Int64}}, 'UTC') "
               f"AND ts < fromUnixTimestamp64Milli({{b:Int64}}, 'UTC')")
        p = self._series_params(key, s=set_id, a=start_ms, b=end_ms)
        # No lock: a chunk's range is leased to one worker, and writes of
        # different ranges do not interfere.
        present = not fresh and self.rows(f"SELECT count() FROM {table} WHERE {rng}", p)[0][0]
        if present:
            self.command(f"DELETE FROM {table} WHERE {rng}", p)
        if labels.num_rows:
            self.insert_arrow(f"labels_{set_id}", _with_ts(labels),
                              {"instrument": key.instrument, "granularity": key.granularity,
                               "label_set": set_id, "source": key.source})
        if record:
            self.write_records(set_id, [(key, start_ms, end_ms, input_hash, labels.num_rows, incomplete,
                                         time.time_ns() // 1_000_000, job_id)])

    def label_spans(self, set_id: str, keys: list[SeriesKey], start_ms: int, end_ms: int
                    ) -> dict[SeriesKey, tuple[int, int]]:
        """(first, last) ts of each series' label rows in [start, end), for
        the series that have any: a chunk outside that span has none.
        Counted from the index first; only series with rows are read, at
        their two ends."""
        name = f"labels_{_check_ident('label set', set_id)}"
        out: dict[SeriesKey, tuple[int, int]] = {}
        # A first backfill's table is empty: one read, not one per series.
        if not self.rows(f"SELECT 1 FROM {self.db}.{name} LIMIT 1"):
            return out
        for key, n in self.range_counts(name, keys, start_ms, end_ms, set_id).items():
            if not n:
                continue
            p = self._series_params(key, s=set_id, a=start_ms, b=end_ms)
            ends = []
            for order in ("", " DESC"):
                ends.append(int(self.rows(
                    f"SELECT toUnixTimestamp64Milli(ts) FROM {self.db}.{name} WHERE {self._label_where()} "
                    f"AND label_set = {{s:String}} AND ts >= fromUnixTimestamp64Milli({{a:Int64}}, 'UTC') "
                    f"AND ts < fromUnixTimestamp64Milli({{b:Int64}}, 'UTC') "
                    f"ORDER BY instrument, granularity, label_set, ts{order} LIMIT 1", p)[0][0]))
            out[key] = (ends[0], ends[1])
        return out

    def label_counts(self, key: SeriesKey, set_id: str) -> tuple[int, int]:
        """(count(), uniqExact(ts)) of a series' label rows, without FINAL."""
        table = f"{self.db}.labels_{_check_ident('label set', set_id)}"
        n, u = self.rows(f"SELECT count(), uniqExact(ts) FROM {table} WHERE {self._label_where()} "
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
        return _ts_to_ms(self.arrow(f"SELECT * EXCEPT (instrument, granularity, label_set, source) "
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

    def label_rows_by_series(self, set_id: str, key: SeriesKey | None = None, source: str = ""
                             ) -> dict[tuple[str, str], tuple[int, int, int]]:
        """(rows, first ts, last ts) of each series in a label set's table
        (of ``key``, or of every series of ``source``)."""
        table = f"{self.db}.labels_{_check_ident('label set', set_id)}"
        where, p = "label_set = {s:String}", {"s": set_id, "src": source}
        if key is not None:
            n, lo, hi = self._count_first_last(table, f"{self._label_where()} AND {where}",
                                               self._series_params(key, s=set_id))
            return {(key.instrument, key.granularity): (n, lo, hi)} if n else {}
        return {(i, g): (int(n), int(lo), int(hi)) for i, g, n, lo, hi in self.rows(
            f"SELECT instrument, granularity, count(), min(toUnixTimestamp64Milli(ts)), "
            f"max(toUnixTimestamp64Milli(ts)) FROM {table} WHERE {where} AND source = {{src:String}} "
            f"GROUP BY instrument, granularity", p) if n}

    def _count_first_last(self, table: str, cond: str, p: dict) -> tuple[int, int, int]:
        """(rows, first ts, last ts) where ``cond``; ``cond`` on a prefix of
        the table's key, so the count comes from the index and the first and
        last ts from one granule each (min/max of ts read every row: 0.15 s
        for 10M)."""
        n, lo, hi = self.rows(
            f"SELECT count(), "
            f"(SELECT toUnixTimestamp64Milli(ts) FROM {table} WHERE {cond} ORDER BY ts LIMIT 1), "
            f"(SELECT toUnixTimestamp64Milli(ts) FROM {table} WHERE {cond} ORDER BY ts DESC LIMIT 1) "
            f"FROM {table} WHERE {cond}", p)[0]
        return (int(n), int(lo), int(hi)) if n else (0, 0, 0)

    def _label_range(self, key: SeriesKey, set_id: str, start_ms: int | None,
                     end_ms: int | None, **more) -> tuple[str, dict]:
        cond = f"{self._label_where()} AND label_set = {{s:String}}"
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
        """Starts of consecutive ts ranges, the first at the first label row of
        [start, end), each holding at most ``batch_rows`` of its rows (the last
        range ends at ``end``).

        From counts of rows per time interval (a GROUP BY over ts, no sort):
        about eight intervals to a batch, joined while they fit, and an
        interval with more rows than a batch split the same way again.
        Numbering every row in ts order (``row_number()``) to cut exact
        batches took 1.4 s of a 10M-row export, a tenth of it."""
        table = f"{self.db}.labels_{_check_ident('label set', set_id)}"
        cond, p = self._label_range(key, set_id, start_ms, end_ms)
        n, lo, hi = self._count_first_last(table, cond, p)
        if not n:
            return []
        return self._batch_starts(table, cond, p, lo, hi + 1, n, max(int(batch_rows), 1))

    def _batch_starts(self, table: str, cond: str, p: dict, lo: int, hi: int, n: int,
                      batch_rows: int) -> list[int]:
        """``label_batch_starts`` of the rows in [lo, hi) (``n`` of them)."""
        if n <= batch_rows or hi - lo <= 1:
            return [lo]
        parts = min(8 * n // batch_rows + 1, 1 << 16)
        width = -(-(hi - lo) // parts)
        counts = self.rows(
            f"SELECT intDiv(toUnixTimestamp64Milli(ts) - {{lo:Int64}}, {{w:Int64}}) AS k, count() "
            f"FROM {table} WHERE {cond} AND ts >= fromUnixTimestamp64Milli({{lo:Int64}}, 'UTC') "
            f"AND ts < fromUnixTimestamp64Milli({{hi:Int64}}, 'UTC') GROUP BY k ORDER BY k",
            {**p, "lo": lo, "hi": hi, "w": width})
        starts: list[int] = []
        rows = 0  # in the batch begun at starts[-1]
        for k, count in counts:
            a = lo + int(k) * width
            if count > batch_rows:  # too many for one batch: split it, and start afresh after it
                starts += self._batch_starts(table, cond, p, a, min(a + width, hi), int(count), batch_rows)
                rows = batch_rows
            elif not starts or rows + count > batch_rows:
                starts.append(a)
                rows = int(count)
            else:
                rows += int(count)
        return starts

    def read_label_range(self, key: SeriesKey, set_id: str, columns: list[str],
                         start_ms: int, end_ms: int | None, with_candles: bool) -> pa.Table:
        """Label rows of [start, end) in ts order, ts first; OHLCV after ts
        when ``with_candles`` (rows without a candle are kept, with NULLs)."""
        table = f"{self.db}.labels_{_check_ident('label set', set_id)}"
        cols = [_check_ident("column", c) for c in columns]
        cond, p = self._label_range(key, set_id, start_ms, end_ms)
        labels_sql = f"SELECT ts, {', '.join(cols)} FROM {table} WHERE {cond}"
        if not with_candles:
            # Blocks of up to 100 MB, not ~8k rows: a 500k-row batch comes
            # back as ~8 Arrow record batches instead of ~60, which saves
            # about a sixth of the read's CPU time.
            return self.arrow(f"{labels_sql} ORDER BY ts SETTINGS preferred_block_size_bytes = 100000000", p)
        candles_cond = cond.replace(" AND label_set = {s:String}", "").replace(
            " AND source = {src:String}", "")
        if key.source and self.source(key.source).clickhouse_url:
            raise InvalidInput(f"source {key.source} is on another ClickHouse: export its labels "
                               f"without --with-candles")
        return self.arrow(f"""
            SELECT l.ts AS ts, {', '.join(f'c.{c} AS {c}' for c in _CANDLE_COLS[1:])},
                   {', '.join(f'l.{c} AS {c}' for c in cols)}
            FROM ({labels_sql}) AS l
            LEFT JOIN (SELECT ts, open, high, low, close, volume FROM {self._rel(key)}
                       WHERE {candles_cond}) AS c ON l.ts = c.ts
            ORDER BY ts SETTINGS join_use_nulls = 1""", p)


# A derived series' GROUP BY runs in its source's sort key order where the
# key allows it (a table ordered by (symbol, time) or time): H1 from 10M M1
# candles took 0.41-0.45 CPU seconds so, 0.71-0.72 through a hash table.
DERIVED_SETTINGS = "optimize_aggregation_in_order = 1"
# A label table's own MergeTree settings:
# - min_bytes_for_wide_part: parts are written in ClickHouse's compact format
#   (one file for every column) up to 256 MiB, wide (a file per column)
#   above: a part costs its insert a fixed ~50 ms of CPU wide against ~16
#   compact, and 1M label rows (67 MB on disk) 228 against 159 ms in all;
#   reading them back, every column or two, costs the same.  Merges make
#   the large parts wide.
# - min_parts_to_merge_at_once: a merge waits for ten parts.  A job writes
#   a part a chunk, and merging label rows costs chDB two to three times
#   what inserting them does (1 against 0.2-0.4 CPU us a row), so the
#   default selector, which merged the first few parts of a job and then
#   merged the result again, spent 0.5-0.8 CPU s of a 10M-candle job's
#   two cores on it; at ten parts a row is merged once each tenfold growth
#   (bench/RESULTS.md, "What merging label rows costs").
LABEL_TABLE_SETTINGS = {"min_bytes_for_wide_part": 268_435_456, "min_parts_to_merge_at_once": 10}
LABEL_PART_SETTINGS = ", ".join(f"{name} = {value}" for name, value in LABEL_TABLE_SETTINGS.items())

# A series of at most this many candles is read whole with others of its
# kind (planning), in statements of at most BATCH_ROWS candles.
SMALL_SERIES = 200_000
BATCH_ROWS = 2_000_000
BATCH_SERIES = 2_000  # a longer IN list costs more to parse than the batch saves
# Counted in key order, a batch's rows cost no memory: larger batches, fewer statements.
COUNT_ROWS = 20_000_000


def _batches(keys: list[SeriesKey], sizes: Mapping[SeriesKey, int], rows: int) -> list[list[SeriesKey]]:
    """``keys`` in batches of one granularity, at most ``rows`` candles
    (``sizes``) and ``BATCH_SERIES`` series each (consecutive within a
    granularity)."""
    out: list[list[SeriesKey]] = []
    n = 0
    for k in sorted(keys, key=lambda k: k.granularity):
        if (not out or n + sizes[k] > rows or len(out[-1]) >= BATCH_SERIES
                or out[-1][0].granularity != k.granularity):
            out.append([])
            n = 0
        out[-1].append(k)
        n += sizes[k]
    return out


def _in_keys(keys: list[SeriesKey]) -> str:
    """The rows of a batch of series (``_keys_params``): the IN lists prune
    by the primary key.  Where they name exactly the batch's pairs (one
    granularity: ``_batches``) no per-row test of the pair is added, which
    cost more CPU than the rest of the read."""
    exact = ({(k.instrument, k.granularity) for k in keys}
             == {(i, g) for i in {k.instrument for k in keys} for g in {k.granularity for k in keys}})
    return ("instrument IN {insts:Array(String)} AND granularity IN {grans:Array(String)}"
            + ("" if exact else " AND (instrument, granularity) IN {keys:Array(Tuple(String, String))}"))


# A GROUP BY over the key's prefix reads its rows in key order and
# aggregates each group as it ends: 10-30x less CPU than hashing every row.
_IN_ORDER = "SETTINGS optimize_aggregation_in_order = 1"


def _keys_params(keys: list[SeriesKey]) -> dict[str, Any]:
    return {"insts": sorted({k.instrument for k in keys}), "grans": sorted({k.granularity for k in keys}),
            "keys": [(k.instrument, k.granularity) for k in keys]}


def _ts_to_ms(table: pa.Table) -> pa.Table:
    i = table.column_names.index("ts")
    return table.set_column(i, "ts", table.column("ts").cast(pa.int64()))


def input_fingerprint(candles: pa.Table) -> str:
    """Hash of the candles a chunk was computed from (its halo included).

    Not a security boundary: it only tells whether the candles changed since
    the chunk was written.  xxh3-128 hashes at memory speed (blake2b took
    ~8% of a chunk's time).  The columns' buffers are hashed as they are,
    without a copy when a column is one contiguous array.  A ``side``
    column (loaded for labels that take sides) counts too, NULLs as such."""
    h = xxhash.xxh3_128()
    for name in ("ts", "open", "high", "low", "close"):
        for chunk in candles.column(name).chunks:
            h.update(chunk.to_numpy(zero_copy_only=False))
    if SIDE in candles.column_names:
        h.update(np.nan_to_num(_side_floats(candles.column(SIDE)), nan=2.0))
    return h.hexdigest()


def _candle_select(side: bool) -> str:
    return ", ".join((*_CANDLE_COLS, *([SIDE] if side else [])))


def _side_floats(col: pa.ChunkedArray) -> np.ndarray:
    """A side column as float64, NaN where NULL."""
    return col.cast(pa.float64()).fill_null(np.nan).to_numpy()


def _stored_side(candles: pa.Table) -> pa.Table:
    """``candles`` with side as the store keeps it: Int8, NULL where NaN
    (or a column of NULLs where the input has none)."""
    if SIDE not in candles.column_names:
        return candles.append_column(SIDE, pa.nulls(candles.num_rows, pa.int8()))
    values = _side_floats(candles.column(SIDE))
    missing = np.isnan(values)
    side = pa.array(np.where(missing, 0, values).astype(np.int8), mask=missing)
    return candles.set_column(candles.column_names.index(SIDE), SIDE, side)


def _ch_type(t: pa.DataType, nullable: bool) -> str:
    """A label column's ClickHouse type; a list output is an Array (never
    NULL itself) of nullable elements, read back as Arrow's list<T>."""
    if pa.types.is_list(t):
        return f"Array({_ch_type(t.value_type, True)})"
    base = _ARROW_TO_CH[t]
    return f"Nullable({base})" if nullable else base


def _with_ts(table: pa.Table) -> pa.Table:
    """``table`` with ts first, as a UTC timestamp."""
    cols: dict[str, Any] = {"ts": table.column("ts").cast(pa.int64()).cast(pa.timestamp("ms", tz="UTC"))}
    for name in table.column_names:
        if name != "ts":
            cols[name] = table.column(name)
    return pa.table(cols)


def _with_series(key: SeriesKey, table: pa.Table) -> pa.Table:
    """``table`` with its series' key columns in front, ts as a UTC timestamp."""
    return clickhouse.with_constants(_with_ts(table), {"instrument": key.instrument, "granularity": key.granularity})


def _with_many_series(keys: list[SeriesKey], tables: list[pa.Table], set_id: str
                      ) -> tuple[pa.Table, dict[str, str]]:
    """Label rows of several series in one table, and the constants of the
    insert (``insert_arrow``): a key column with one value for all of
    them (the granularity, the source, the label set, usually) is a literal
    of the statement, the others go in front as dictionary columns (chDB
    converts each such column row by row in the inserting thread).  The
    series' own columns go as they are, a chunk each: chDB reads them in
    place (combined, a million rows were an 80 MB copy)."""
    body = pa.concat_tables(tables)
    counts = np.array([t.num_rows for t in tables])

    def keyed(values: list[str]) -> pa.DictionaryArray:
        names = list(dict.fromkeys(values))
        codes = np.repeat(np.array([names.index(v) for v in values], np.int32), counts)
        return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(names, pa.string()))

    values = {"instrument": [k.instrument for k in keys], "granularity": [k.granularity for k in keys],
              "source": [k.source for k in keys]}
    constants = {name: v[0] for name, v in values.items() if len(set(v)) == 1}
    constants["label_set"] = set_id
    cols: dict[str, Any] = {name: keyed(v) for name, v in values.items() if name not in constants}
    cols["ts"] = body.column("ts").cast(pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    for name in body.column_names:
        if name != "ts":
            cols[name] = body.column(name)
    return pa.table(cols), constants
