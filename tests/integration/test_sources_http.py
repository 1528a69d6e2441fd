"""A source on another ClickHouse (``--clickhouse-url``), reached over HTTP:
candles are read there, labels written to the store, and every statement
the source's server receives from gpubackfill, through a job and
``update``, is a read.

The tests' ClickHouse over HTTP is chDB behind ``chhttp``, which has no
users or grants, so a read-only user cannot be set up; instead the server
logs each statement it is sent (``CHHTTP_QUERY_LOG``) and the test checks
them all."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import clickhouse_connect
import numpy as np
import pyarrow as pa
import pytest
from test_sources import MAPS, candles, shuffled

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chhttp import ClickHouseHTTPServer  # noqa: E402

from gpubackfill.storage.clickhouse_store import SeriesKey  # noqa: E402

READS = ("SELECT", "WITH", "DESCRIBE", "EXPLAIN", "(")


@pytest.fixture
def remote(tmp_path):
    log = tmp_path / "queries.log"
    with ClickHouseHTTPServer(tmp_path / "remote", tmp_path, env={"CHHTTP_QUERY_LOG": str(log)}) as srv:
        yield srv, log


def statements(log: Path, since: int) -> list[str]:
    return [json.loads(line) for line in log.read_text().splitlines()[since:]]


def lines(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_source_on_another_clickhouse_is_only_read(service, remote):
    srv, log = remote
    owner = clickhouse_connect.get_client(host=srv.host, port=srv.port)
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

    since = lines(log)
    service.sources.add("far", "market.ohlc_m1", MAPS + ["volume=v"], granularity="M1",
                        clickhouse_url=srv.url)
    far = service.start("EURUSD", "M1", chunk_size=1000, workers=2, source="far")
    near = service.start("EURUSD", "M1", chunk_size=1000, workers=2)
    s = service.job(far).model_dump()
    assert s["status"] == "completed" and s["candles_total"] == t.num_rows
    mine = service.store.read_labels(SeriesKey("EURUSD", "M1", "far"), s["label_set"])
    assert mine.num_rows == t.num_rows
    assert mine.equals(service.store.read_labels(SeriesKey("EURUSD", "M1"),
                                                 service.job(near).model_dump()["label_set"]))
    sent = statements(log, since)
    assert any("market" in q for q in sent)  # the candles were read there
    assert [q for q in sent if not q.lstrip().upper().startswith(READS)] == []
    # Nothing of the store's on the source's server.
    assert owner.command("SELECT count() FROM system.tables WHERE database NOT IN "
                         "('market', 'system', 'INFORMATION_SCHEMA', 'information_schema')") == 0

    at = int(t.column("ts")[1500].as_py()) // 1000
    owner.command(f"ALTER TABLE market.ohlc_m1 UPDATE c = (h + l) / 2 WHERE toUnixTimestamp(time) = {at} "
                  f"SETTINGS mutations_sync = 2")
    since = lines(log)
    plans = service.plan_update(source="far", chunk_size=1000, workers=2)
    assert len(plans) == 1 and plans[0]["stale_chunks"] >= 1
    for p in plans:
        service.execute(p["job_id"])
    assert service.plan_update(source="far", chunk_size=1000, workers=2) == []
    sent = statements(log, since)
    assert sent and [q for q in sent if not q.lstrip().upper().startswith(READS)] == []
    changed = service.store.read_labels(SeriesKey("EURUSD", "M1", "far"), s["label_set"])
    assert changed.num_rows == t.num_rows and not changed.equals(mine)
    assert np.isfinite(changed.column("ts").to_numpy()).all()
