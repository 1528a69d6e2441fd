"""What `status`, `series` and a run's summary say: the truth about a stopped
job, every label's NULL tail, counts that read right."""

from __future__ import annotations

import json
import re
import threading

import pyarrow.parquet as pq
from test_cli import cli  # noqa: F401 - the in-process CLI fixture

from gpubackfill.candles.synthetic import generate
from gpubackfill.storage.clickhouse_store import SeriesKey


def _stopped_two_series_job(service) -> str:
    """A job over two series, stopped (interrupted) after its first progress
    report: one series is part done, nothing runs."""
    for inst in ("EURUSD", "GBPUSD"):
        service.ingest_table(SeriesKey(inst, "M5"), generate(inst, "M5", "2024-01-01", "2024-02-01"))
    job = service.create_job(["EURUSD", "GBPUSD"], "M5", "2024-01-01", "2024-01-31", chunk_size=200,
                             workers=1, labels=["mfe_mae"])
    stop = threading.Event()
    service.execute(job, progress=lambda s: s["candles_done"] and stop.set(), stop=stop)
    return job


def _eta_cell(out: str, job: str) -> str:
    """The eta column of the job's row in `status`'s table."""
    row = next(line for line in out.splitlines() if job in line)
    return [c.strip() for c in row.strip().strip("│").split("│")][8]


def test_a_stopped_job_shows_no_eta_and_its_series_their_last_state(service, cli):
    job = _stopped_two_series_job(service)
    s = json.loads(cli("status", job, "--format", "json").output)
    assert s["status"] == "interrupted" and s["chunks"]["leased"] == 0
    assert 0 < s["candles_done"] < s["candles_total"]
    assert s["eta_s"] is None and s["eta"]["low_s"] is None and s["eta"]["high_s"] is None
    started = [x for x in s["series"] if x["candles_done"]]
    assert started and all(x["status"] == "interrupted" for x in started if x["candles_done"] < x["candles_total"])
    assert "running" not in {x["status"] for x in s["series"]}
    out = cli("status", job).output
    assert _eta_cell(out, job) == "-" and "running" not in out

    service.pause(job)
    s = json.loads(cli("status", job, "--format", "json").output)
    assert s["status"] == "paused" and s["eta_s"] is None
    assert {x["status"] for x in s["series"] if 0 < x["candles_done"] < x["candles_total"]} == {"paused"}
    assert _eta_cell(cli("status", job).output, job) == "paused"

    service.cancel(job)
    s = json.loads(cli("status", job, "--format", "json").output)
    assert {x["status"] for x in s["series"] if 0 < x["candles_done"] < x["candles_total"]} == {"cancelled"}
    assert s["eta_s"] is None


def _trailing_null_rows(table, columns) -> int:
    """Rows at the end of the labels in which some label column is NULL."""
    rows = table.select(columns).to_pylist()
    n = 0
    for row in reversed(rows):
        if all(v is not None for v in row.values()):
            break
        n += 1
    return n


def test_series_counts_every_labels_null_tail(service, cli, tmp_path):
    # No triple barrier: its flags were the only NULLs counted.
    service.ingest_table(SeriesKey("EURUSD", "H1"), generate("EURUSD", "H1", "2024-01-01", "2024-03-01"))
    r = cli("start", "--instrument", "EURUSD", "--granularity", "H1", "--start-date", "2024-01-01",
            "--end-date", "2024-03-01", "--labels", "mfe_mae", "fixed_horizon",
            "--param", "mfe_mae.horizon=30", "--param", "fixed_horizon.horizon=10", "--chunk-size", "250")
    assert r.exit_code == 0, r.output
    out = tmp_path / "labels.parquet"
    assert cli("export", "--instrument", "EURUSD", "--granularity", "H1", "-o", str(out)).exit_code == 0
    labels = pq.read_table(out)
    tail = _trailing_null_rows(labels, [c for c in labels.column_names if c != "ts"])
    assert tail >= 30  # mfe_mae's horizon
    rows = json.loads(cli("series", "--format", "json").output)
    assert rows[0]["sets"][0]["incomplete"] == tail
    assert f"{tail:,}" in cli("series").output


def test_counts_read_right_and_have_thousands_separators(service, cli):
    for inst in ("EURUSD", "GBPUSD"):
        service.ingest_table(SeriesKey(inst, "M5"), generate(inst, "M5", "2024-01-01", "2024-03-01"))
    r = cli("start", "--instrument", "EURUSD", "--granularity", "M5", "--start-date", "2024-01-01",
            "--end-date", "2024-01-02", "--labels", "mfe_mae", "--chunk-size", "100000")
    assert r.exit_code == 0, r.output
    assert "in 1 chunk," in r.output and "1 chunks" not in r.output
    job = json.loads(cli("status", "--format", "json").output)[0]["job_id"]
    again = cli("start", "--instrument", "EURUSD", "--granularity", "M5", "--start-date", "2024-01-01",
                "--end-date", "2024-01-02", "--labels", "mfe_mae", "--chunk-size", "100000")
    assert "skipped in 1 chunk " in again.output and "1 chunks" not in again.output, again.output
    rerun = again.output.split()[1]
    assert "over 1 chunk" in cli("status", job).output and "1 chunks" not in cli("status", job).output
    # Queued only: over a thousand chunks of 10 candles a series.
    r = cli("start", "--instrument", "EURUSD,GBPUSD", "--granularity", "M5", "--start-date", "2024-01-01",
            "--end-date", "2024-02-29", "--labels", "mfe_mae", "--chunk-size", "10", "--detach")
    big = r.output.split()[0]
    s = json.loads(cli("status", big, "--format", "json").output)
    assert all(x["chunks_total"] > 1_000 for x in s["series"])
    lines = cli("status", big).output.splitlines()
    assert any(big in line and f"0/{s['chunks_total']:,}" in line for line in lines)
    for x in s["series"]:
        assert any(line.lstrip().startswith(f"{x['instrument']} M5") and f"0/{x['chunks_total']:,}" in line
                   and f"0/{x['candles_total']:,}" in line for line in lines), lines
    removed = cli("cleanup", "--older-than", "0").output
    assert removed.startswith("removed 2 jobs: ") and set(removed.split(": ")[1].split()) == {job, rerun}


def test_a_resumed_jobs_summary_separates_this_run_from_its_totals(service, cli):
    job = _stopped_two_series_job(service)
    before = service.job(job).model_dump()
    r = cli("execute", job)
    assert r.exit_code == 0, r.output
    after = service.job(job).model_dump()
    chunks = after["chunks"]["done"] - before["chunks"]["done"]
    candles = after["candles_done"] - before["candles_done"]
    assert 0 < chunks < after["chunks_total"]
    assert f"this run: {chunks:,} chunks, {candles:,} candles in " in r.output
    total = after["chunks_total"]
    assert f"job total: {total:,}/{total:,} chunks, {after['candles_total']:,}/{after['candles_total']:,} candles" \
        in r.output


def test_a_job_of_many_series_is_listed_a_page_at_a_time(service, cli):
    """`status` of a job of more series than it lists says how many it left
    out and how to see them; the API pages them with series_offset/limit."""
    from fastapi.testclient import TestClient
    from test_scale import small_universe

    from gpubackfill.cli.jobs import SERIES_SHOWN
    from gpubackfill.serve.api import create_app

    n = SERIES_SHOWN + 30
    small_universe(service, n, candles=50)
    job = service.create_job("*", "H1", None, None, chunk_size=50, workers=1)
    out = cli("status", job).output
    shown = [line for line in out.splitlines() if line.lstrip().startswith("U0")]
    assert [line.split()[0] for line in shown] == [f"U{i:04d}" for i in range(SERIES_SHOWN)]
    assert f"{n} series" in out
    assert f"… and 30 more (gpubackfill status {job} --series-offset {SERIES_SHOWN})" in out
    rest = cli("status", job, "--series-offset", str(SERIES_SHOWN)).output
    assert [line.split()[0] for line in rest.splitlines() if line.lstrip().startswith("U0")] == [
        f"U{i:04d}" for i in range(SERIES_SHOWN, n)]
    assert "more (gpubackfill status" not in rest
    s = json.loads(cli("status", job, "--format", "json", "--series-limit", "3").output)
    assert (s["series_count"], s["series_offset"], [x["instrument"] for x in s["series"]]) == (
        n, 0, ["U0000", "U0001", "U0002"])
    with TestClient(create_app(service)) as api:
        whole = api.get(f"/jobs/{job}").json()
        assert whole["series_count"] == len(whole["series"]) == n
        page = api.get(f"/jobs/{job}", params={"series_offset": 7, "series_limit": 2}).json()
        assert page["series"] == whole["series"][7:9] and page["series_offset"] == 7
        assert api.get(f"/jobs/{job}", params={"series_limit": -1}).status_code == 422
        listed = api.get("/jobs", params={"series_limit": 0}).json()
        assert [(j["job_id"], j["series"], j["series_count"]) for j in listed] == [(job, [], n)]
        # The console's job page: a page of series further on, and the way back.
        html = api.get(f"/ui/jobs/{job}", params={"series": 100}).text
        cells = re.findall(r'data-series="(U\d+) H1"', html)
        assert cells == [f"U{i:04d}" for i in range(100, n)]
        assert f"101–{n} of {n}" in html and f'href="/ui/jobs/{job}?series=0">previous' in html
        assert f'data-src="/ui/jobs/{job}/live?series=100"' in html
        live = api.get(f"/ui/jobs/{job}/live", params={"series": 100}).text
        assert re.findall(r'data-series="(U\d+) H1"', live) == cells
