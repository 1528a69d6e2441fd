"""The two ways the Store reaches ClickHouse, behind the same four calls.

- Embedded (no ``CLICKHOUSE_URL``): chDB called directly. Results come back as
  Arrow from chDB's own buffers, and inserts read Arrow tables in place
  through the ``Python()`` table function. clickhouse-connect's chDB backend
  writes every insert to a temporary Native file first, which made a 1M-row
  label insert take about twice as long, and decodes every result from Native.
- ``http(s)://``: a clickhouse-connect client.

Both bind query parameters with clickhouse-connect's ``bind_query``, so a
value reaches either engine in the same escaped form and is never formatted
into the SQL text.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import tempfile
import threading
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import Settings, redact_url
from ..errors import DependencyError


class HttpClient:
    """A ClickHouse server, through clickhouse-connect."""

    def __init__(self, settings: Settings):
        import clickhouse_connect

        url = settings.clickhouse_url or ""
        # No session: clickhouse-connect refuses a second query of a session
        # while one runs, and one client serves every thread of the process
        # (the serve scheduler's jobs, the API, a chunk's read-ahead).  Nothing
        # here keeps state in a session between statements.
        kwargs: dict[str, Any] = {"dsn": url, "compress": False, "autogenerate_session_id": False}
        if settings.clickhouse_user and "@" not in url:
            kwargs["username"] = settings.clickhouse_user
        if settings.clickhouse_password:
            kwargs["password"] = settings.clickhouse_password
        try:
            self._client = clickhouse_connect.get_client(**kwargs)
        except Exception as exc:  # connection refused, DNS, auth...
            raise DependencyError(f"cannot connect to ClickHouse at {redact_url(url)}: "
                                  f"{short_error(exc)}") from None

    def command(self, sql: str, parameters: dict | None = None) -> None:
        self._client.command(sql, parameters=parameters)

    def rows(self, sql: str, parameters: dict | None = None) -> list[tuple]:
        return [tuple(r) for r in self._client.query(sql, parameters=parameters).result_rows]

    def arrow(self, sql: str, parameters: dict | None = None) -> pa.Table:
        return self._client.query_arrow(sql, parameters=parameters)

    def insert_arrow(self, table: str, data: pa.Table, constants: dict[str, str] | None = None) -> None:
        self._client.insert_arrow(table, with_constants(data, constants or {}))


class EmbeddedClient:
    """The process's chDB engine, with a handle of its own for each thread.

    chDB runs statements of different handles side by side; one handle runs
    one statement at a time (a second one while a streaming statement is
    open gets an empty result). So every thread that calls gets its own
    handle, and a chunk's load or write never waits for another chunk's:
    through one shared handle, a 10M-candle job at 1M chunks takes a quarter
    longer (4.9-5.0 s against 3.9-4.0 s), each worker's statements queued
    behind the other's.

    Threads parked for good (no CPU) while some are inside chDB are Dask's
    profiler (CPython gh-106883), not chDB: the clusters started here turn it
    off (``engine/cluster.py``).
    """

    def __init__(self, settings: Settings):
        import chdb

        settings.chdb_path.mkdir(parents=True, exist_ok=True)
        # Every handle opens the engine with the same startup settings (the
        # first open's are the engine's for as long as a handle is open).
        # Merges yield the CPU to the job: on two cores a 10M-candle job in
        # 10k chunks took 15.5-16.0 s with merges at the job's priority and
        # 13.9-14.2 s at nice 10, parts at most ~100 (bench/RESULTS.md).
        # ClickHouse applies the nice value only with CAP_SYS_NICE.
        self._path = (f"{settings.chdb_path}"
                      f"?os_threads_nice_value_merge_mutate={settings.chdb_merge_nice}")
        try:
            with _native_stderr_captured():
                self._conn = chdb.connect(self._path)
        except Exception as exc:
            if "EmbeddedServer" in str(exc) or "Cannot lock file" in str(exc):
                raise DependencyError(
                    f"the embedded ClickHouse at {settings.chdb_path} is open in another process "
                    f"(chDB allows one process per data folder): wait for it to finish, or run a "
                    f"ClickHouse server and set CLICKHOUSE_URL") from None
            raise DependencyError(f"cannot connect to ClickHouse at chdb://{settings.chdb_path}: "
                                  f"{short_error(exc)}") from None
        self._local = threading.local()
        self._prepare(self._conn)
        self._local.conn = self._conn  # this thread's; it also keeps the engine open
        # Every other handle, with the thread it was opened for.  The client
        # owns them, not the threads: see ``_handle``.
        self._handles: list[tuple[threading.Thread, Any]] = []
        self._handles_lock = threading.Lock()

    @staticmethod
    def _prepare(conn) -> None:
        # Results cross no network here: ClickHouse's default lz4 frames on
        # Arrow output cost a quarter of the CPU time of reading a result
        # (10M label rows: 3.5 -> 2.7 s) for nothing.  Uncompressed, a
        # result is read in place: see ``arrow``.
        conn.query("SET output_format_arrow_compression_method = 'none'", "TabSeparated")

    def _handle(self):
        """This thread's handle on the engine, opened on first use.

        A handle is never closed by its thread's exit.  Closing one releases
        the GIL inside chDB; a thread whose state is cleared as the
        interpreter begins to finalize cannot take it back, and CPython ends
        the thread with a forced unwind through chDB's frames, which crashes
        the process (SIGSEGV in ``_unwind`` from ``take_gil`` via
        ``Connection.__del__`` in ``PyThreadState_Clear``).  The client keeps
        every handle; the next
        thread to open one closes those of threads that have ended, and the
        rest close with the client, on a live thread or the finalizing one."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            import chdb

            ended = []
            with self._handles_lock:
                live = []
                for thread, c in self._handles:  # one look at each thread: it may end meanwhile
                    if thread.is_alive():
                        live.append((thread, c))
                    else:
                        ended.append(c)
                self._handles = live
            for old in ended:
                old.close()
            conn = chdb.connect(self._path)
            self._prepare(conn)
            with self._handles_lock:
                self._handles.append((threading.current_thread(), conn))
            self._local.conn = conn
        return conn

    def _query(self, sql: str, fmt: str, parameters: dict | None):
        # Imported here, not with the module: commands that only touch Redis stay light.
        from clickhouse_connect.driver.binding import bind_query

        bound_sql, bound = bind_query(sql, parameters)
        # bind_query names server-side parameters as HTTP does (param_<name>).
        params = {k.removeprefix("param_"): v for k, v in bound.items()}
        return self._handle().query(str(bound_sql), fmt, params=params)

    def command(self, sql: str, parameters: dict | None = None) -> None:
        self._query(sql, "TabSeparated", parameters)

    def rows(self, sql: str, parameters: dict | None = None) -> list[tuple]:
        table = self.arrow(sql, parameters)
        return list(zip(*(column.to_pylist() for column in table.columns)))

    def arrow(self, sql: str, parameters: dict | None = None) -> pa.Table:
        """The result as a table over chDB's own result buffer (no copy).

        The buffer lives as long as chDB's result object, and a memoryview
        of it does not keep that object alive: so the table's buffers hold
        it (``base``).  chDB's "ArrowTable" format does not, and is safe
        only because ClickHouse compresses Arrow output by default, so
        reading it makes Arrow's own copy (and it imports pandas, 0.2 s)."""
        return arrow_result(self._query(sql, "Arrow", parameters))

    def insert_arrow(self, table: str, data: pa.Table, constants: dict[str, str] | None = None) -> None:
        """Insert a table: small ones as one Arrow IPC stream message into
        ``send_insert``, larger ones through chDB's ``Python()`` table
        function, which reads the Arrow buffers where they are.

        Each statement of the ``Python()`` function costs a few milliseconds
        more (chDB finds and inspects the Python object), and reading in
        place saves a copy per row: at 10k label rows the stream took 7.3 ms
        an insert against 9.3, at 1M 264 against 202, with the crossing
        between 30k and 100k (``STREAM_MAX_ROWS``; bench/backfill.py table
        3b shows both over a job's chunk plan).  ``constants``: columns with
        one value for every row, as dictionary columns in the stream and as
        literals of the statement otherwise."""
        from clickhouse_connect.driver.binding import format_query_value, quote_identifier

        consts = constants or {}
        if data.num_rows <= STREAM_MAX_ROWS:
            keyed = with_constants(data, consts)
            names = ", ".join(quote_identifier(name) for name in keyed.column_names)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, keyed.schema) as writer:
                writer.write_table(keyed, max_chunksize=STREAM_MAX_ROWS)
            message = sink.getvalue()
            with self._handle().send_insert(f"INSERT INTO {table} ({names})", "ArrowStream") as ins:
                ins.append(message.to_pybytes())
                ins.finish()
            return
        # chDB finds the Python() table by a variable name in the calling
        # frame's globals, process-wide, so each insert publishes it under a
        # name of its own for the length of the statement (a shared name let
        # two inserts at once write each other's rows).
        names = ", ".join(quote_identifier(name) for name in [*consts, *data.column_names])
        values = "".join(f"{format_query_value(v)}, " for v in consts.values())
        var = f"_gpubackfill_insert_{next(_insert_names)}"
        _published[var] = data
        # One thread: chDB's parallel read of the Arrow table spent about a
        # fifth more CPU for the same part (1M label rows: 180 against 219
        # CPU ms, median of 9), and the part itself is written by one thread
        # either way; a job's workers insert side by side.
        try:
            self._handle().query(f"INSERT INTO {table} ({names}) SELECT {values}* FROM Python({var}) "
                                 "SETTINGS max_threads = 1", "TabSeparated")
        finally:
            del _published[var]


# Label tables up to this many rows are inserted as one IPC stream message
# (EmbeddedClient.insert_arrow).
STREAM_MAX_ROWS = 65_536


def with_constants(data: pa.Table, constants: dict[str, str]) -> pa.Table:
    """``data`` with a column in front for each constant, as a dictionary of
    one value (4 bytes a row, and no lookup per row into LowCardinality)."""
    if not constants:
        return data
    zeros = pa.array(np.zeros(data.num_rows, np.int32))
    cols = {name: pa.DictionaryArray.from_arrays(zeros, pa.array([value], pa.string()))
            for name, value in constants.items()}
    return pa.table({**cols, **{name: data.column(name) for name in data.column_names}})


def arrow_result(result) -> pa.Table:
    """A chDB "Arrow" result as a table over its own buffer, which the
    table's buffers keep alive (``EmbeddedClient.arrow``)."""
    if len(result) == 0:
        return pa.Table.from_batches([], schema=pa.schema([]))
    view = result.get_memview().view()
    data = pa.py_buffer(view)
    owned = pa.foreign_buffer(data.address, data.size, base=(result, view))
    return pa.RecordBatchFileReader(owned).read_all()


# The module's globals, where chDB's Python() table function looks an
# insert's table up (see EmbeddedClient.insert_arrow).
_published = globals()
_insert_names = itertools.count()


@contextlib.contextmanager
def _native_stderr_captured():
    """Hold what native code writes to fd 2 while opening chDB: a refused open
    prints ClickHouse's raw ``Code: 76. DB::Exception: Cannot lock file``
    there before the exception that we turn into one readable line.  On
    success whatever was written is passed on; on failure it is dropped (the
    error says it).  Brief and at start-up, when no other thread writes."""
    sys.stderr.flush()
    saved = os.dup(2)
    said: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        failed = False
        try:
            yield said
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            said.append(text)
            if text and not failed:
                sys.stderr.write(text)


_clients: dict[tuple, HttpClient | EmbeddedClient] = {}
_clients_lock = threading.Lock()


def client(settings: Settings) -> HttpClient | EmbeddedClient:
    """The client of this process for ``settings`` (both kinds are thread-safe)."""
    embedded = settings.embedded_clickhouse
    key = (settings.clickhouse_url, str(settings.chdb_path), settings.clickhouse_user)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = EmbeddedClient(settings) if embedded else HttpClient(settings)
        return _clients[key]


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
