"""A job without dates covers each series' whole history: from the first
candle of its series to the last, through the CLI, the REST API and Python."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest
from fastapi.testclient import TestClient
from test_cli import cli  # noqa: F401 - the in-process CLI fixture

from gpubackfill.candles.synthetic import generate
from gpubackfill.common.times import iso
from gpubackfill.serve.api import create_app
from gpubackfill.storage.clickhouse_store import SeriesKey


@pytest.fixture
def two_series(service):
    """EURUSD H1 over 1-10 January, GBPUSD H1 over 5-20 January 2024."""
    out = {}
    for inst, a, b in (("EURUSD", "2024-01-01", "2024-01-10"), ("GBPUSD", "2024-01-05", "2024-01-20")):
        out[inst] = generate(inst, "H1", a, b)
        service.ingest_table(SeriesKey(inst, "H1"), out[inst])
    return out


def _ms(table, at):
    return pc.cast(table.column("ts"), "int64")[at].as_py()


def test_start_without_dates_covers_every_series_whole_history(cli, service, two_series):
    r = cli("start", "--instrument", "EURUSD,GBPUSD", "--granularity", "H1", "--labels", "mfe_mae")
    assert r.exit_code == 0 and "completed" in r.output, r.output
    [job] = json.loads(cli("status", "--format", "json").output)
    assert job["candles_done"] == job["candles_total"] == sum(t.num_rows for t in two_series.values())
    assert job["skipped"] == []
    first, last = _ms(two_series["EURUSD"], 0), _ms(two_series["GBPUSD"], -1)
    assert (job["start"], job["end"]) == (iso(first), iso(last + 1))


def test_one_date_left_out_opens_that_side_only(service, two_series):
    job = service.create_job("EURUSD", "H1", start="2024-01-05", labels=["mfe_mae"])
    eur = two_series["EURUSD"]
    since = pc.sum(pc.greater_equal(pc.cast(eur.column("ts"), "int64"), 1704412800000)).as_py()
    s = service.job(job).model_dump()
    assert s["candles_total"] == since and s["end"] == iso(_ms(eur, -1) + 1)
    job = service.create_job("GBPUSD", "H1", end="2024-01-09", labels=["mfe_mae"])
    s = service.job(job).model_dump()
    assert s["start"] == iso(_ms(two_series["GBPUSD"], 0)) and s["end"] == "2024-01-10T00:00:00Z"


def test_post_jobs_without_dates_covers_the_whole_history(service, two_series):
    with TestClient(create_app(service)) as client:
        r = client.post("/jobs", json={"instrument": ["EURUSD", "GBPUSD"], "granularity": "H1",
                                       "labels": ["mfe_mae"]})
        assert r.status_code == 201, r.text
        job = client.get(f"/jobs/{r.json()['job_id']}").json()
    assert job["candles_total"] == sum(t.num_rows for t in two_series.values())
