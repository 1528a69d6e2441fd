"""chhttp: ClickHouse's HTTP interface over chDB, driven by real clickhouse-connect clients."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import urllib.error
import urllib.request
from urllib.parse import urlencode

import pyarrow as pa
import pytest

clickhouse_connect = pytest.importorskip("clickhouse_connect")
pytest.importorskip("chdb")

from chhttp import ClickHouseHTTPServer, _split_insert, start_server  # noqa: E402
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError  # noqa: E402

pytestmark = pytest.mark.integration

TABLE_DDL = """
CREATE TABLE {db}.{name} (
    sym String,
    venue LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    px Float64,
    side Int8,
    label Nullable(Int8),
    flag UInt8,
    n Int32
) ENGINE = MergeTree ORDER BY (sym, ts)
"""
COLS = ["sym", "venue", "ts", "px", "side", "label", "flag", "n"]
T0 = 1_700_000_000_000  # ms


def arrow_rows(sym: str, k: int, start: int = 0) -> pa.Table:
    idx = list(range(start, start + k))
    return pa.table({
        "sym": pa.array([sym] * k, pa.string()),
        "venue": pa.array(["X" if i % 2 else "Y" for i in idx], pa.string()),
        "ts": pa.array([T0 + i for i in idx], pa.timestamp("ms", tz="UTC")),
        "px": pa.array([1.0 + i / 4 for i in idx], pa.float64()),
        "side": pa.array([(-1) ** i for i in idx], pa.int8()),
        "label": pa.array([None if i % 3 == 0 else i % 100 for i in idx], pa.int8()),
        "flag": pa.array([i % 2 for i in idx], pa.uint8()),
        "n": pa.array(idx, pa.int32()),
    })


def connect(srv: ClickHouseHTTPServer, **kw):
    kw.setdefault("compress", False)
    return clickhouse_connect.get_client(host=srv.host, port=srv.port, interface="http", **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("chhttp")
    with ClickHouseHTTPServer(root / "data", root) as srv:
        yield srv


@pytest.fixture
def client(server):
    c = connect(server)
    yield c
    c.close()


_counter = iter(range(10_000))


@pytest.fixture
def table(client):
    """A fresh table in database d; yields its name."""
    client.command("CREATE DATABASE IF NOT EXISTS d")
    name = f"t{next(_counter)}"
    client.command(TABLE_DDL.format(db="d", name=name))
    return name


# ---------------------------------------------------------------------------------------------


def test_ping_version_timezone(server, client):
    with urllib.request.urlopen(server.url + "/ping", timeout=5) as r:
        assert r.read() == b"Ok.\n"
    assert client.ping()
    assert client.server_version.count(".") >= 2
    assert client.command("SELECT timezone()") == "UTC"
    assert str(client.server_tz) == "UTC"
    assert client.command("SELECT 1 + 1") == 2
    assert client.command("SELECT 'a', 'b'") == ["a", "b"]
    # result-producing statement with no rows: "" (not a summary)
    assert client.command("SELECT 1 WHERE 0") == ""


def test_types_insert_arrow_insert_rows_and_query(client, table):
    q = f"d.{table}"
    assert client.insert_arrow(q, arrow_rows("EURUSD", 6)).written_rows == 6
    rows = [["GBPUSD", "Z", dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC),
             1.25, -1, None, 1, 42],
            ["GBPUSD", "Z", dt.datetime(2024, 1, 2, 3, 4, 6, tzinfo=dt.UTC),
             1.5, 1, -7, 0, -3]]
    assert client.insert(q, rows, column_names=COLS).written_rows == 2

    got = client.query(f"SELECT * FROM {q} ORDER BY sym, ts").result_rows
    assert len(got) == 8
    assert got[0][:2] == ("EURUSD", "Y")
    assert got[0][5] is None and got[1][5] == 1  # Nullable(Int8) nulls survive insert_arrow
    # clickhouse-connect returns naive datetimes (UTC) for DateTime64(3, 'UTC') in query()
    assert got[6] == ("GBPUSD", "Z", dt.datetime(2024, 1, 2, 3, 4, 5, 678000), 1.25, -1, None, 1, 42)
    assert got[7][5] == -7 and got[7][7] == -3

    t = client.query_arrow(
        f"SELECT * FROM {q} WHERE sym = {{sym:String}} AND n >= {{n:Int64}} ORDER BY ts",
        parameters={"sym": "EURUSD", "n": 3})
    assert t.column("n").to_pylist() == [3, 4, 5]
    assert t.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    assert t.schema.field("venue").type == pa.string()  # LowCardinality(String) -> string
    assert t.schema.field("label").type == pa.int8() and t.column("label").null_count == 1
    assert t.schema.field("side").type == pa.int8() and t.schema.field("flag").type == pa.uint8()
    assert t.column("ts").to_pylist()[0] == dt.datetime.fromtimestamp((T0 + 3) / 1000, dt.UTC)

    # DateTime64 bind parameters keep their milliseconds
    cut = dt.datetime.fromtimestamp((T0 + 4) / 1000, dt.UTC)
    n = client.command(f"SELECT count() FROM {q} WHERE sym = 'EURUSD' AND ts >= {{c:DateTime64(3, 'UTC')}}",
                       parameters={"c": cut})
    assert n == 2
    # null / string escapes in parameters
    assert client.query("SELECT {s:String}, {x:Nullable(Int8)}",
                        parameters={"s": "a\tb\\c'd\n", "x": None}).result_rows == [("a\tb\\c'd\n", None)]

    df = client.query_df(f"SELECT sym, label FROM {q} WHERE sym = 'EURUSD' ORDER BY ts")
    assert list(df["sym"]) == ["EURUSD"] * 6 and df["label"].isna().sum() == 2


def test_database_param_and_settings(server, table):
    c = connect(server, database="d")
    try:
        assert c.command("SELECT currentDatabase()") == "d"
        c.insert_arrow(table, arrow_rows("A", 3))  # unqualified name resolves in d
        assert c.command(f"SELECT count() FROM {table}") == 3
        assert c.query_arrow(f"SELECT count() AS c FROM {table}").column("c").to_pylist() == [3]
        # per-request settings are applied, then reset for the next request
        assert c.command("SELECT getSetting('max_threads')", settings={"max_threads": 3}) == 3
        assert c.command("SELECT getSetting('max_threads')") != 3
        # use_strings=False -> Arrow binary (output_format_arrow_string_as_string=0)
        assert c.query_arrow(f"SELECT sym FROM {table} LIMIT 1", use_strings=False).schema.field(0).type == pa.binary()
        assert c.query_arrow(f"SELECT sym FROM {table} LIMIT 1").schema.field(0).type == pa.string()
        # LIMIT 0 column probe (FORMAT JSON path)
        assert c.query(f"SELECT * FROM {table} LIMIT 0").column_names == tuple(COLS)
    finally:
        c.close()
    other = connect(server)  # no database parameter: back to default
    try:
        assert other.command("SELECT currentDatabase()") == "default"
    finally:
        other.close()


def test_errors_are_database_errors(client, table):
    with pytest.raises(DatabaseError) as ei:
        client.query("SELEC 1")
    assert ei.value.code == 62 and "Syntax error" in str(ei.value) and "DB::Exception" in str(ei.value)
    with pytest.raises(DatabaseError) as ei:
        client.command("SELECT * FROM d.no_such_table")
    assert ei.value.code == 60 and "UNKNOWN_TABLE" in str(ei.value)
    with pytest.raises(DatabaseError) as ei:
        client.query_arrow("SELECT {n:Int64}", parameters={"n": "not a number"})
    assert ei.value.code == 457  # BAD_QUERY_PARAMETER
    with pytest.raises(DatabaseError):  # schema mismatch on an Arrow insert
        client.insert_arrow(f"d.{table}", pa.table({"sym": ["a"], "nope": [1]}))
    with pytest.raises(DatabaseError):  # bad database parameter
        client.command("SELECT 1", settings={"database": "no_such_db"})
    # the server is still healthy afterwards
    assert client.command(f"SELECT count() FROM d.{table}") == 0


def test_lightweight_delete(client, table):
    q = f"d.{table}"
    client.insert_arrow(q, arrow_rows("A", 10))
    client.insert_arrow(q, arrow_rows("B", 5))
    client.command(f"DELETE FROM {q} WHERE sym = 'A' AND n >= 4")
    assert client.command(f"SELECT count() FROM {q}") == 9
    assert client.command(f"SELECT max(n) FROM {q} WHERE sym = 'A'") == 3
    # ALTER ... DELETE mutations also work (synchronously with mutations_sync)
    client.command(f"ALTER TABLE {q} DELETE WHERE sym = 'B'", settings={"mutations_sync": 2})
    assert client.command(f"SELECT count() FROM {q}") == 4


def test_compressed_clients(server, table):
    # compress="deflate" fails inside clickhouse-connect 1.12 itself (no deflate insert compressor)
    comps = (True, "lz4", "zstd", "gzip")
    for comp in comps:
        c = connect(server, compress=comp)
        try:
            c.insert(f"d.{table}", [["C", "V", dt.datetime(2024, 1, 1), 1.0, 1, None, 1, 1]] * 100,
                     column_names=COLS)
            c.insert_arrow(f"d.{table}", arrow_rows("C", 10))
            assert len(c.query(f"SELECT * FROM d.{table}").result_rows) > 0
        finally:
            c.close()
    check = connect(server)
    assert check.command(f"SELECT count() FROM d.{table}") == len(comps) * 110
    check.close()


def test_large_parameters_use_multipart(client, table):
    client.insert_arrow(f"d.{table}", arrow_rows("A", 20))
    ids = [f"id-{i:06d}" for i in range(2000)] + ["A"]  # > 4 KiB of params -> multipart form
    n = client.command(f"SELECT count() FROM d.{table} WHERE sym IN {{ids:Array(String)}}",
                       parameters={"ids": ids})
    assert n == 20


def test_raw_http(server, client, table):
    def post(params, body=b""):
        req = urllib.request.Request(f"{server.url}/?{urlencode(params)}", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read(), r.headers

    csv = b"R,V,2024-01-01 00:00:00.001,1.5,1,\\N,1,7\nR,V,2024-01-01 00:00:00.002,2.5,-1,3,0,8\n"
    post({"query": f"INSERT INTO {table} FORMAT CSV", "database": "d"}, csv)
    post({}, f"INSERT INTO d.{table} (sym, venue, ts, px, side, label, flag, n) VALUES "
             f"('R', 'V', '2024-01-01 00:00:00.003', 3.5, 1, NULL, 1, 9)".encode())
    body, headers = post({"query": f"SELECT n, label FROM d.{table} WHERE sym = {{s:String}} ORDER BY n",
                          "param_s": "R"})
    assert body == b"7\t\\N\n8\t3\n9\t\\N\n"  # TabSeparated by default
    assert headers["X-ClickHouse-Format"] == "TabSeparated"
    body, headers = post({"default_format": "JSONEachRow"}, f"SELECT max(n) AS m FROM d.{table}".encode())
    assert body == b'{"m":9}\n'
    with urllib.request.urlopen(f"{server.url}/?{urlencode({'query': 'SELECT 40 + 2'})}") as r:
        assert r.read() == b"42\n"
    with pytest.raises(urllib.error.HTTPError) as ei:
        post({}, b"SELECT * FROM d.missing")
    assert ei.value.code == 500
    assert ei.value.headers["X-ClickHouse-Exception-Code"] == "60"
    assert ei.value.read().startswith(b"Code: 60. DB::Exception:")


def test_split_insert():
    text = b"INSERT INTO t (a, `FORMAT x`) FORMAT Native\n\x20\n\x01"  # data may start with blanks
    sql, fmt, offset = _split_insert(text)
    assert (sql, fmt, text[offset:]) == ("INSERT INTO t (a, `FORMAT x`)", "Native", b"\x20\n\x01")
    assert _split_insert(b"insert into t format CSV 1,2") == ("insert into t", "CSV", 25)
    assert _split_insert(b"INSERT INTO t VALUES (1)") is None
    assert _split_insert(b"INSERT INTO t SELECT 1 FORMAT x") is None
    assert _split_insert(b"SELECT 1 FORMAT Native") is None


def test_restart_persists_and_outage_is_visible(tmp_path):
    srv = ClickHouseHTTPServer(tmp_path / "data", tmp_path)
    srv.start()
    try:
        c = connect(srv)
        c.command("CREATE DATABASE IF NOT EXISTS d")
        c.command(TABLE_DDL.format(db="d", name="p"))
        c.insert_arrow("d.p", arrow_rows("A", 7))
        port = srv.port
        srv.stop()
        with pytest.raises(OperationalError):
            c.command("SELECT count() FROM d.p")
        srv.start()
        assert srv.port == port  # same URL after the outage
        assert c.command("SELECT count() FROM d.p") == 7  # same client object, reconnects
        c.insert_arrow("d.p", arrow_rows("B", 3))
        srv.kill()  # abrupt stop: committed parts are on disk already
        srv.start()
        assert c.command("SELECT count() FROM d.p") == 10
        c.close()
    finally:
        srv.stop()


def test_start_server_context_manager(tmp_path):
    with start_server(str(tmp_path / "data"), str(tmp_path)) as (url, process):
        assert url.startswith("http://127.0.0.1:") and process.poll() is None
        with urllib.request.urlopen(url + "/ping", timeout=5) as r:
            assert r.read() == b"Ok.\n"
    assert process.poll() is not None


def _insert_worker(url: str, table: str, worker: int, batches: int, rows: int) -> int:
    import clickhouse_connect as cc
    host, port = url.rsplit("/", 1)[1].split(":")
    c = cc.get_client(host=host, port=int(port), interface="http", compress=False)
    written = 0
    for b in range(batches):
        t = arrow_rows(f"W{worker}", rows, start=b * rows)
        if b % 2:
            written += c.insert_arrow(table, t).written_rows
        else:
            data = [list(r.values()) for r in t.to_pylist()]
            written += c.insert(table, data, column_names=COLS).written_rows
    c.close()
    return written


def test_two_processes_insert_concurrently(server, client, table):
    q = f"d.{table}"
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        res = [pool.apply_async(_insert_worker, (server.url, q, w, 10, 50)) for w in range(2)]
        written = [r.get(timeout=60) for r in res]
    assert written == [500, 500]
    got = client.query(f"SELECT sym, count(), uniqExact(n), countIf(label IS NULL) FROM {q} "
                       f"GROUP BY sym ORDER BY sym").result_rows
    assert got == [("W0", 500, 500, 167), ("W1", 500, 500, 167)]
