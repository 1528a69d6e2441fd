"""A source on another ClickHouse (``--clickhouse-url``), reached over HTTP
by a user that can only read it: candles are read there, labels written to
the store, and a whole job and ``update`` run with labels exact.

The source's server is chDB behind ``chhttp`` with two users: ``default``
(the table's owner, behind a password gpubackfill is not given) and
``reader``, whose statements run on a connection with ClickHouse's own
``readonly = 1``: chDB itself refuses any write from it, which the control
at the end shows.  The server also logs each statement it is sent
(``CHHTTP_QUERY_LOG``): every one from gpubackfill is a read."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import clickhouse_connect
import numpy as np
import pyarrow as pa
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from test_sources import MAPS, candles, shuffled

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chhttp import ClickHouseHTTPServer  # noqa: E402

from gpubackfill.jobs.spec import EVER  # noqa: E402
from gpubackfill.storage.clickhouse_store import SeriesKey  # noqa: E402

OWNER, READER = "0wner-secret", "r3ad-only"
USERS = {"default": {"password": OWNER}, "reader": {"password": READER, "readonly": 1}}
READS = ("SELECT", "WITH", "DESCRIBE", "EXPLAIN", "(")


@pytest.fixture
def remote(tmp_path):
    log = tmp_path / "queries.log"
    with ClickHouseHTTPServer(tmp_path / "remote", tmp_path, env={"CHHTTP_QUERY_LOG": str(log)},
                              users=USERS) as srv:
        yield srv, log


def statements(log: Path, since: int) -> list[str]:
    return [json.loads(line) for line in log.read_text().splitlines()[since:]]


def lines(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def content(owner) -> tuple:
    return tuple(owner.query("SELECT count(), groupBitXor(cityHash64(*)) FROM market.ohlc_m1").result_rows[0])


def test_a_source_read_by_a_read_only_user_over_http(service, remote, monkeypatch):
    srv, log = remote
    # Series this long are planned as large ones are, whose numbering the
    # store runs on one thread with a setting a read-only user cannot set.
    from gpubackfill.engine import submit
    from gpubackfill.storage import clickhouse_store

    monkeypatch.setattr(clickhouse_store, "SMALL_SERIES", 100)
    monkeypatch.setattr(submit, "SMALL_SERIES", 100)
    owner = clickhouse_connect.get_client(host=srv.host, port=srv.port, password=OWNER)
    owner.command("CREATE DATABASE market")
    owner.command("CREATE TABLE market.ohlc_m1 (symbol String, time DateTime, o Float64, h Float64, "
                  "l Float64, c Float64, v Float64) ENGINE = MergeTree ORDER BY (symbol, time)")
    t = candles(end="2024-01-04")
    owner.insert_arrow("market.ohlc_m1", shuffled(pa.table({
        "symbol": ["EURUSD"] * t.num_rows,
        "time": t.column("ts").cast(pa.timestamp("ms", tz="UTC")).cast(pa.timestamp("s", tz="UTC")),
        **{k: t.column(c) for k, c in (("o", "open"), ("h", "high"), ("l", "low"), ("c", "close"),
                                       ("v", "volume"))}})))
    service.init()
    service.ingest_table(SeriesKey("EURUSD", "M1"), t)  # the same candles in the store itself
    before = content(owner)

    since = lines(log)
    url = f"http://reader:{READER}@{srv.host}:{srv.port}"
    service.sources.add("far", "market.ohlc_m1", MAPS + ["volume=v"], granularity="M1", clickhouse_url=url)
    far = service.start("EURUSD", "M1", chunk_size=1000, workers=2, source="far")
    near = service.start("EURUSD", "M1", chunk_size=1000, workers=2)
    s = service.job(far).model_dump()
    assert s["status"] == "completed" and s["candles_total"] == t.num_rows
    key, set_id = SeriesKey("EURUSD", "M1", "far"), s["label_set"]
    mine = service.store.read_labels(key, set_id)
    assert mine.num_rows == t.num_rows
    assert mine.equals(service.store.read_labels(SeriesKey("EURUSD", "M1"),
                                                 service.job(near).model_dump()["label_set"]))
    sent = statements(log, since)
    assert any("market" in q for q in sent)  # the candles were read there
    assert [q for q in sent if not q.lstrip().upper().startswith(READS)] == []
    assert content(owner) == before
    # Nothing of the store's on the source's server.
    assert owner.command("SELECT count() FROM system.tables WHERE database NOT IN "
                         "('market', 'system', 'INFORMATION_SCHEMA', 'information_schema')") == 0

    # H1 derived from it on that server, read with no setting, equals H1
    # derived from the same candles in the store's own ClickHouse.
    db = service.store.db
    service.store.command(f"CREATE TABLE {db}.ohlc_m1 (symbol String, time DateTime, o Float64, "
                          f"h Float64, l Float64, c Float64, v Float64) ENGINE = MergeTree "
                          f"ORDER BY (symbol, time)")
    service.store.client.insert_arrow(f"{db}.ohlc_m1", owner.query_arrow("SELECT * FROM market.ohlc_m1"))
    service.sources.add("here", f"{db}.ohlc_m1", MAPS + ["volume=v"], granularity="M1")
    since = lines(log)
    far_h1 = service.job(service.start("EURUSD", "H1", chunk_size=20, workers=2, source="far")).model_dump()
    here_h1 = service.job(service.start("EURUSD", "H1", chunk_size=20, workers=2, source="here")).model_dump()
    assert far_h1["status"] == "completed" and far_h1["candles_total"] == here_h1["candles_total"] > 40
    assert service.store.read_labels(SeriesKey("EURUSD", "H1", "far"), set_id).equals(
        service.store.read_labels(SeriesKey("EURUSD", "H1", "here"), set_id))
    sent = statements(log, since)
    assert not any("SETTINGS" in q for q in sent)
    # Aggregated there once, for the job's copy of its bars in the store
    # (read over and inserted here), which is gone once the job is done.
    assert len([q for q in sent if "'H1' AS granularity" in q]) == 1
    assert service.store.rows(f"SELECT count() FROM system.tables WHERE database = '{db}' "
                              f"AND name LIKE 'bars%'") == [(0,)]
    # Read over in pages of bars (a few here), the copy holds every bar once.
    batch_rows = clickhouse_store.BATCH_ROWS
    monkeypatch.setattr(clickhouse_store, "BATCH_ROWS", 20)
    far_key, here_key = SeriesKey("EURUSD", "H1", "far"), SeriesKey("EURUSD", "H1", "here")
    service.store.copy_bars("bars_paged", [far_key], {far_key: t.num_rows})
    paged = service.store.load(SeriesKey("EURUSD", "H1", "far", "bars_paged"), *EVER, 0, 0)[0]
    service.store.drop_table("bars_paged")
    assert paged.equals(service.store.load(here_key, *EVER, 0, 0)[0])
    assert len([q for q in statements(log, since) if "'H1' AS granularity" in q]) > 3
    monkeypatch.setattr(clickhouse_store, "BATCH_ROWS", batch_rows)

    # The owner corrects a candle: update over the source, and over the
    # built-in table after the same correction, give the same labels.
    at = 1500
    owner.command(f"ALTER TABLE market.ohlc_m1 UPDATE c = (h + l) / 2 WHERE toUnixTimestamp(time) = "
                  f"{int(t.column('ts')[at].as_py()) // 1000} SETTINGS mutations_sync = 2")
    close = t.column("close").to_numpy().copy()
    close[at] = (t.column("high")[at].as_py() + t.column("low")[at].as_py()) / 2
    fixed = t.set_column(t.column_names.index("close"), "close", pa.array(close))
    before = content(owner)
    since = lines(log)
    plans = service.plan_update(source="far", chunk_size=1000, workers=2)
    assert len(plans) == 1 and plans[0]["stale_chunks"] >= 1
    for p in plans:
        service.execute(p["job_id"])
    assert service.plan_update(source="far", chunk_size=1000, workers=2) == []
    sent = statements(log, since)
    assert sent and [q for q in sent if not q.lstrip().upper().startswith(READS)] == []
    assert content(owner) == before
    service.ingest_table(SeriesKey("EURUSD", "M1"), fixed)
    for p in service.plan_update(chunk_size=1000, workers=2):
        service.execute(p["job_id"])
    changed = service.store.read_labels(key, set_id)
    assert changed.num_rows == t.num_rows and not changed.equals(mine)
    assert changed.equals(service.store.read_labels(SeriesKey("EURUSD", "M1"), set_id))

    # The control: the server really refuses that user any write, and
    # anyone without the owner's password.
    reader = clickhouse_connect.get_client(host=srv.host, port=srv.port, username="reader",
                                           password=READER)
    assert reader.query("SELECT value FROM system.settings WHERE name = 'readonly'").result_rows == [("1",)]
    refusals = [
        lambda: reader.command("INSERT INTO market.ohlc_m1 (symbol, time, o, h, l, c, v) "
                               "VALUES ('EURUSD', now(), 1, 1, 1, 1, 1)"),
        lambda: reader.insert("market.ohlc_m1", [["EURUSD", 0, 1.0, 1.0, 1.0, 1.0, 1.0]],
                              column_names=["symbol", "time", "o", "h", "l", "c", "v"]),
        lambda: reader.command("ALTER TABLE market.ohlc_m1 DELETE WHERE 1 SETTINGS mutations_sync = 2"),
        lambda: reader.command("CREATE TABLE market.mine (x Int8) ENGINE = Memory"),
        lambda: reader.command("DROP TABLE market.ohlc_m1"),
        lambda: reader.command("SET readonly = 0"),
    ]
    for refuse in refusals:
        with pytest.raises(DatabaseError, match="READONLY|readonly"):
            refuse()
    with pytest.raises(DatabaseError, match="AUTHENTICATION_FAILED"):
        clickhouse_connect.get_client(host=srv.host, port=srv.port, username="reader",
                                      password="guess").command("SELECT 1")
    with pytest.raises(DatabaseError, match="AUTHENTICATION_FAILED"):
        clickhouse_connect.get_client(host=srv.host, port=srv.port).command("SELECT 1")
    assert content(owner) == before
    assert np.isfinite(changed.column("ts").to_numpy()).all()
    # A failure there names that server, not the store, and no password.
    from gpubackfill.errors import DependencyError

    with pytest.raises(DependencyError, match=f"ClickHouse at http://reader:\\*\\*\\*@{srv.host}:{srv.port} "
                                              f"failed") as failed:
        service.store.source_reader(service.store.source("far")).rows("SELECT no_such_column")
    assert READER not in str(failed.value)
