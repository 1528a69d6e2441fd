"""One job over many series (a universe), the daily update and the series
coverage, against real chDB and a real redis-server."""

from __future__ import annotations

import json
import threading

import numpy as np
import pyarrow as pa
import pytest
from compare import assert_label_columns
from test_cli import env_for, exported_ts_are_unique, run_cli

from gpubackfill import compute_labels
from gpubackfill.candles.synthetic import generate
from gpubackfill.errors import InvalidInput
from gpubackfill.service import BackfillService
from gpubackfill.storage.clickhouse_store import SeriesKey

pytestmark = pytest.mark.integration

LABELS = ["enhanced_triple_barrier", "vol_scaled_return", "mfe_mae"]
INSTRUMENTS = ("EURUSD", "GBPUSD", "USDJPY")
START, END = "2024-01-01", "2024-01-20"


def ingest(service, instrument, granularity, start=START, end="2024-01-25", cut=None):
    table = generate(instrument, granularity, start, end)
    if cut is not None:
        table = table.slice(0, cut)
    service.ingest_table(SeriesKey(instrument, granularity), table)
    return table


def assert_series_equals_compute_labels(service, instrument, granularity, candles, set_id,
                                        start=START, end=END):
    """The stored rows of one series equal compute_labels over that series alone."""
    stored = service.export(instrument, granularity, set_id=set_id)
    whole = compute_labels(candles, LABELS)
    ts = whole.column("ts").to_numpy()
    lo = np.datetime64(start, "ms").astype(np.int64)
    hi = (np.datetime64(end, "D") + np.timedelta64(1, "D")).astype("datetime64[ms]").astype(np.int64)
    inside = (ts >= lo) & (ts < hi)
    assert stored.num_rows == int(inside.sum()) > 0, (instrument, granularity)
    np.testing.assert_array_equal(stored.column("ts").to_numpy(), ts[inside])
    want = whole.filter(pa.array(inside))
    assert_label_columns(stored, want)
    n, uniq = service.store.label_counts(SeriesKey(instrument, granularity), set_id)
    assert n == uniq == stored.num_rows


def test_six_series_in_one_job_equal_each_series_alone(service):
    candles = {(i, g): ingest(service, i, g) for i in INSTRUMENTS for g in ("M15", "H1")}
    # 997 divides none of the series; the H1 series (~430 candles) are packed together.
    job = service.create_job(",".join(INSTRUMENTS), ["M15", "H1"], START, END, chunk_size=997,
                             workers=2)
    s = service.job(job).model_dump()
    assert [(x["instrument"], x["granularity"]) for x in s["series"]] == sorted(
        candles, key=lambda k: (INSTRUMENTS.index(k[0]), ("M15", "H1").index(k[1])))
    assert all(x["status"] == "pending" for x in s["series"]) and s["skipped"] == []
    # Packing: runs under 997 candles (the H1 series, the M15 tails) share
    # chunks, never over 997 candles; the smallest series are queued first.
    plan = service.state.plan(job)
    names = [(x["instrument"], x["granularity"]) for x in s["series"]]
    h1 = {i for i, (_, g) in enumerate(names) if g == "H1"}
    assert all(len(segs) > 1 for segs in plan.values() if {g.series for g in segs} & h1)
    assert all(sum(g.rows for g in segs) <= 997 for segs in plan.values())
    runs = sum(-(-len(candles[n].filter(pa.compute.less(
        candles[n].column("ts"), pa.scalar(np.datetime64("2024-01-21", "ms")).cast(
            candles[n].column("ts").type)))) // 997) for n in names)
    assert len(plan) < runs
    assert {g.series for g in plan[0]} <= h1
    assert service.execute(job).status == "completed"
    s = service.job(job).model_dump()
    assert s["candles_done"] == s["candles_total"] == s["rows_written"]
    for x in s["series"]:
        assert x["status"] == "completed" and x["chunks_done"] == x["chunks_total"] > 0
        assert x["candles_done"] == x["candles_total"] > 0 and x["errors"] == 0
    assert sum(x["candles_done"] for x in s["series"]) == s["candles_done"]
    for (inst, gran), table in candles.items():
        assert_series_equals_compute_labels(service, inst, gran, table, s["label_set"])
    metrics = service.metrics()
    assert set(metrics["instruments"]) == set(INSTRUMENTS)
    assert sum(metrics["totals"]["instruments"].values()) >= s["candles_done"]


def test_star_means_every_instrument_at_the_granularities_and_missing_pairs_are_skipped(service):
    for inst in ("AUDUSD", "NZDUSD"):
        ingest(service, inst, "H1")
    ingest(service, "EURCHF", "H4")
    job = service.create_job("*", "H1", START, END, chunk_size=5000)
    s = service.job(job).model_dump()
    assert [(x["instrument"], x["granularity"]) for x in s["series"]] == [
        ("AUDUSD", "H1"), ("NZDUSD", "H1")]
    # A pair whose instrument has candles at another granularity only is
    # reported and skipped; an instrument without a candle is an error.
    other = service.create_job("AUDUSD,EURCHF", "H1", START, END, labels=["mfe_mae"], chunk_size=5000)
    s = service.job(other).model_dump()
    assert [x["instrument"] for x in s["series"]] == ["AUDUSD"] and s["skipped"] == ["EURCHF H1"]
    with pytest.raises(InvalidInput, match="none of EURCHF H1, NZDUSD H1 has candles from 2023"):
        service.create_job("EURCHF,NZDUSD", "H1", "2023-01-01", "2023-02-01")
    with pytest.raises(InvalidInput, match=r"no candles for XAUUSD H1 in the store \(ingest"):
        service.create_job("EURCHF,XAUUSD", "H1", START, END)
    with pytest.raises(InvalidInput, match="no instrument has M1 candles"):
        service.create_job("*", "M1", START, END)
    assert service.execute(job).status == "completed"


def test_a_malformed_series_dead_letters_its_chunks_and_the_rest_complete(service, monkeypatch):
    good = {i: ingest(service, i, "M15") for i in ("EURUSD", "GBPUSD")}
    bad = generate("USDJPY", "M15", START, "2024-01-25")
    key = SeriesKey("USDJPY", "M15")
    service.ingest_table(key, bad)
    # Corrupt one candle in the middle (high under low), as a bad feed would:
    # written straight into the table, past ingest's own validation.
    mid = int(bad.column("ts")[bad.num_rows // 2].as_py())
    service.store.command(
        f"ALTER TABLE {service.store.db}.candles UPDATE high = low - 1 WHERE instrument = 'USDJPY' "
        f"AND toUnixTimestamp64Milli(ts) = {mid} SETTINGS mutations_sync = 1")
    job = service.create_job(["EURUSD", "GBPUSD", "USDJPY"], "M15", START, END, chunk_size=400,
                             workers=2)
    assert service.execute(job).status == "completed_with_errors"
    s = service.job(job).model_dump()
    by = {x["instrument"]: x for x in s["series"]}
    assert by["EURUSD"]["status"] == by["GBPUSD"]["status"] == "completed"
    assert by["USDJPY"]["status"] == "completed_with_errors"
    assert by["USDJPY"]["chunks_failed"] >= 1 and by["USDJPY"]["errors"] >= 1
    dead = service.dead_letters(job)
    assert dead and all(e["series"] == [2] for e in dead)
    for inst, table in good.items():
        assert_series_equals_compute_labels(service, inst, "M15", table, s["label_set"])
    # Fix the data, then execute re-runs only the failed chunks.
    service.ingest_table(key, bad)
    done_before = s["chunks"]["done"]
    assert service.execute(job).status == "completed"
    s = service.job(job).model_dump()
    assert s["chunks"]["done"] == s["chunks_total"] == done_before + len(dead)
    assert all(x["status"] == "completed" for x in s["series"])
    assert_series_equals_compute_labels(service, "USDJPY", "M15", bad, s["label_set"])


def _expected_stale(records, ts, changed_idx, back, ahead):
    """Chunks (start, end) whose rows or halo hold a changed candle: the
    rule of coverage.py, computed here from the candles themselves."""
    lo = ts[max(min(changed_idx) - ahead, 0)]
    hi = ts[min(max(changed_idx) + back, len(ts) - 1)]
    return {(a, b) for a, b in records if a <= hi and b > lo}


def test_update_recomputes_only_the_tail_and_the_changed_chunks(service):
    from gpubackfill.labels import halo, resolve

    full = {i: generate(i, "M15", START, "2024-03-25") for i in ("EURUSD", "GBPUSD")}
    ts = full["EURUSD"].column("ts").to_numpy().astype("datetime64[ms]").astype(np.int64)
    cut = int(np.searchsorted(ts, np.datetime64("2024-03-15", "ms").astype(np.int64)))
    for inst, table in full.items():
        service.ingest_table(SeriesKey(inst, "M15"), table.slice(0, cut))
    job = service.start("EURUSD,GBPUSD", "M15", START, "2024-03-14", chunk_size=500, workers=2)
    s = service.job(job).model_dump()
    assert s["status"] == "completed"
    records = sorted((g.start_ms, g.end_ms) for segs in service.state.plan(job).values()
                     for g in segs if g.series == 0)
    assert service.plan_update() == []  # nothing new yet: no job
    cov = {(c.instrument, c.granularity): c for c in service.series_overview()}
    tb = cov[("EURUSD", "M15")].sets[0]
    assert tb.rows == cut and tb.incomplete > 0 and tb.chunks == len(records)
    assert tb.stale_chunks == 0 and not tb.behind

    # New candles for both series, and one changed candle early in EURUSD.
    for inst, table in full.items():
        service.ingest_table(SeriesKey(inst, "M15"), table)
    closes = full["EURUSD"].column("close").to_numpy().copy()
    highs = full["EURUSD"].column("high").to_numpy().copy()
    closes[40] *= 1.0001
    highs[40] = max(highs[40], closes[40])
    eur = full["EURUSD"].set_column(full["EURUSD"].column_names.index("close"), "close",
                                    pa.array(closes))
    eur = eur.set_column(eur.column_names.index("high"), "high", pa.array(highs))
    service.ingest_table(SeriesKey("EURUSD", "M15"), eur.slice(40, 1))

    back, ahead = halo(resolve(LABELS))
    tail = _expected_stale(records, ts, [cut], back, ahead)
    early = _expected_stale(records, ts, [40], back, ahead)
    assert tail and early and len(tail | early) < len(records)
    cov = {(c.instrument, c.granularity): c for c in service.series_overview()}
    assert cov[("EURUSD", "M15")].sets[0].stale_chunks == len(tail | early)
    assert cov[("GBPUSD", "M15")].sets[0].stale_chunks == len(tail)
    assert cov[("EURUSD", "M15")].sets[0].behind

    plans = service.plan_update(chunk_size=500)
    assert len(plans) == 1 and plans[0]["series"] == 2
    assert plans[0]["stale_chunks"] == len(tail) + len(tail | early)
    new_candles = full["EURUSD"].num_rows - cut
    assert plans[0]["new_chunks"] == 2 * -(-new_candles // 500)
    update = plans[0]["job_id"]
    assert service.job(update).model_dump()["kind"] == "update"
    assert service.execute(update).status == "completed"
    s = service.job(update).model_dump()
    assert s["chunks_total"] <= plans[0]["chunks"] + 0 and s["chunks_total"] < 2 * len(records)
    # The unchanged part of the tail chunks was re-read, their labels rewritten;
    # every stored label equals a fresh computation over the new candles.
    assert_series_equals_compute_labels(service, "EURUSD", "M15", eur, s["label_set"],
                                        end="2024-03-24")
    assert_series_equals_compute_labels(service, "GBPUSD", "M15", full["GBPUSD"], s["label_set"],
                                        end="2024-03-24")
    # Current now: the new chunks were computed after the last ingest.
    assert service.plan_update() == []


def test_pause_resume_and_cancel_a_many_series_job(service):
    for inst in INSTRUMENTS:
        ingest(service, inst, "M15")
    job = service.create_job(list(INSTRUMENTS), "M15", START, END, chunk_size=200, workers=1)
    seen: list[dict] = []
    paused = threading.Event()

    def progress(s):
        seen.append(s)
        if s["chunks"]["done"] >= 2 and not paused.is_set():
            paused.set()
            service.pause(job)
            threading.Timer(1.0, service.resume, args=(job,)).start()

    assert service.execute(job, progress=progress).status == "completed"
    assert any(s["status"] == "paused" for s in seen)
    s = service.job(job).model_dump()
    assert all(x["status"] == "completed" for x in s["series"])
    # A job over the same series and another range, cancelled midway.
    other = service.create_job(list(INSTRUMENTS), "M15", "2024-01-02", END, chunk_size=200,
                               workers=1)

    def cancel(s):
        if s["chunks"]["done"] >= 1 and s["status"] == "running":
            service.cancel(other)

    assert service.execute(other, progress=cancel).status == "cancelled"
    s = service.job(other).model_dump()
    assert s["chunks"]["done"] < s["chunks_total"]
    assert any(x["status"] in ("pending", "running") for x in s["series"])


def test_cli_start_status_grid_series_and_kill_minus_9_then_execute(tmp_path, redis_socket):
    import os
    import subprocess
    import sys

    import pyarrow.parquet as pq
    from conftest import make_settings
    from test_faults import FAST, done_chunks, wait_for

    settings = make_settings(tmp_path / "home", redis_socket, **FAST)
    env = {**env_for(settings), **FAST}
    for inst in ("EURUSD", "GBPUSD"):
        for gran in ("M5", "M15"):
            path = tmp_path / f"{inst}{gran}.parquet"
            pq.write_table(generate(inst, gran, "2024-01-01", "2024-01-10"), path)
            run_cli(env, "ingest", str(path), "--instrument", inst, "--granularity", gran)
    # XAUUSD has candles, at H1 only: its M5 and M15 pairs are skipped (an
    # instrument without a single candle would be an error).
    pq.write_table(generate("XAUUSD", "H1", "2024-01-01", "2024-01-03"), tmp_path / "XAUUSDH1.parquet")
    run_cli(env, "ingest", str(tmp_path / "XAUUSDH1.parquet"), "--instrument", "XAUUSD", "--granularity", "H1")
    job = run_cli(env, "start", "--instrument", "EURUSD,GBPUSD", "--instrument", "XAUUSD",
                  "--granularity", "M5", "--granularity", "M15", "--start-date", "2024-01-01",
                  "--end-date", "2024-01-08", "--chunk-size", "150", "--workers", "2",
                  "--detach")
    job_id = job.stdout.strip()
    assert "skipped (no candles in the range): XAUUSD M5, XAUUSD M15" in job.stderr
    watcher = BackfillService(settings)
    runner = subprocess.Popen([sys.executable, "-m", "gpubackfill", "execute", job_id],
                              env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: done_chunks(watcher, job_id) >= 4, what="4 chunks")
        runner.kill()
        runner.wait(timeout=30)
        shown = run_cli(env, "status", job_id).stdout
        assert "4 series" in shown and "EURUSD M15" in shown and "GBPUSD M5" in shown
        res = run_cli(env, "execute", job_id)
        assert "completed" in res.stdout
    finally:
        if runner.poll() is None:
            runner.kill()
    s = json.loads(run_cli(env, "status", job_id, "--format", "json").stdout)
    assert s["status"] == "completed" and s["chunks"]["leased"] == 0
    assert {(x["instrument"], x["granularity"], x["status"]) for x in s["series"]} == {
        (i, g, "completed") for i in ("EURUSD", "GBPUSD") for g in ("M5", "M15")}
    for x in s["series"]:
        assert x["candles_done"] == x["candles_total"] > 0
    # Exactly once per series, after the kill.
    for inst in ("EURUSD", "GBPUSD"):
        for gran in ("M5", "M15"):
            n = exported_ts_are_unique(env, tmp_path, inst, gran)
            mine = [x for x in s["series"] if (x["instrument"], x["granularity"]) == (inst, gran)]
            assert n == mine[0]["candles_total"]
    listing = [r for r in json.loads(run_cli(env, "series", "--format", "json").stdout)
               if r["instrument"] != "XAUUSD"]
    assert {(r["instrument"], r["granularity"]) for r in listing} == {
        (i, g) for i in ("EURUSD", "GBPUSD") for g in ("M5", "M15")}
    assert all(r["sets"] and r["sets"][0]["rows"] > 0 for r in listing)
    table = run_cli(env, "series").stdout
    assert "EURUSD M15" in table and "labelled" in table
    up = run_cli(env, "update")
    assert up.returncode == 0


def test_a_bad_series_packed_with_good_ones_fails_alone(service):
    """Small series share chunks; malformed candles in one of them must not
    dead-letter the others: the pack is run again one series per chunk."""
    good = {i: ingest(service, i, "H1") for i in ("AUDUSD", "NZDUSD", "USDCAD")}
    bad = generate("USDCHF", "H1", START, "2024-01-25")
    service.ingest_table(SeriesKey("USDCHF", "H1"), bad)
    mid = int(bad.column("ts")[bad.num_rows // 2].as_py())
    service.store.command(
        f"ALTER TABLE {service.store.db}.candles UPDATE low = high + 1 WHERE instrument = 'USDCHF' "
        f"AND toUnixTimestamp64Milli(ts) = {mid} SETTINGS mutations_sync = 1")
    job = service.create_job("*", "H1", START, END, chunk_size=5_000, workers=2)
    plan = service.state.plan(job)
    assert len(plan) == 1 and len(plan[0]) == 4  # all four in one pack
    assert service.execute(job).status == "completed_with_errors"
    s = service.job(job).model_dump()
    by = {x["instrument"]: x for x in s["series"]}
    assert by["USDCHF"]["status"] == "failed" and by["USDCHF"]["chunks_failed"] == 1
    for inst, table in good.items():
        assert by[inst]["status"] == "completed" and by[inst]["errors"] == 0
        assert_series_equals_compute_labels(service, inst, "H1", table, s["label_set"])
    assert s["chunks_total"] == 4 and s["chunks"]["done"] == 3 and s["chunks"]["failed"] == 1
    dead = service.dead_letters(job)
    usdchf = [x["instrument"] for x in s["series"]].index("USDCHF")
    assert len(dead) == 1 and dead[0]["series"] == [usdchf]
    assert any(e["event"] == "unpack" for e in service.state.events(job))


def test_grouped_planning_reads_count_only_the_series_asked_for(service):
    """Batches of small series are counted and bounded together; a set of
    pairs that is not every instrument at every granularity (here A M15 and
    B H1, beside A H1 and B M15 in the store) counts each pair's own rows."""
    tables = {(i, g): ingest(service, i, g, end=end)
              for (i, g), end in ((("EURUSD", "M15"), "2024-01-05"), (("EURUSD", "H1"), "2024-01-25"),
                                  (("GBPUSD", "M15"), "2024-01-25"), (("GBPUSD", "H1"), "2024-01-09"))}
    store = service.store
    asked = [SeriesKey("EURUSD", "M15"), SeriesKey("GBPUSD", "H1")]
    lo, hi = np.datetime64("2024-01-02", "ms").astype(np.int64), np.datetime64("2024-01-30", "ms").astype(np.int64)
    want = {}
    for k in asked:
        ts = tables[(k.instrument, k.granularity)].column("ts").to_numpy()
        inside = ts[(ts >= lo) & (ts < hi)]
        want[k] = (len(inside), int(inside[0]), int(inside[-1]))
    sizes = {k: tables[(k.instrument, k.granularity)].num_rows for k in asked}
    assert store.small_series_counts(asked, int(lo), int(hi), sizes) == want
    counts = {k: v[0] for k, v in want.items()}
    # Each fits one chunk: its first ts, read (both at once) or given.
    marks = store.chunk_marks(asked, int(lo), int(hi), 10_000, 50, 5, counts)
    assert marks == {k: {1: v[1]} for k, v in want.items()}
    assert store.chunk_marks(asked, int(lo), int(hi), 10_000, 50, 5, counts, {asked[0]: want[asked[0]][1]}) == marks
    # Several chunks each: numbered together, a batch of one granularity at a time.
    cut = store.chunk_marks(asked, int(lo), int(hi), 100, 50, 5, counts)
    for k in asked:
        ts = tables[(k.instrument, k.granularity)].column("ts").to_numpy()
        inside = ts[(ts >= lo) & (ts < hi)]
        assert cut[k] == {rn: int(inside[rn - 1]) for rn in cut[k]}
        assert {rn for rn in range(1, len(inside) + 1, 100)} <= set(cut[k])


@pytest.mark.parametrize("rows", [300, 70_000])  # one IPC message; chDB's Python() table function
def test_a_pack_of_series_of_two_granularities_writes_each_its_own_rows(service, rows):
    """A pack's key columns that differ between its series go row by row,
    the ones they share as literals: each series reads back its own rows."""
    from gpubackfill.labels import resolve

    service.init()
    store = service.store
    set_id = store.ensure_label_table(list(resolve(["mfe_mae"])))
    keys = [SeriesKey("EURUSD", "H1"), SeriesKey("EURUSD", "M15"), SeriesKey("GBPUSD", "M15")]
    writes = []
    for n, key in enumerate(keys):
        ts = np.arange(rows, dtype=np.int64) * 60_000 + 1_704_067_200_000
        labels = pa.table({"ts": ts, "mfe": np.full(rows, float(n)), "mae": np.full(rows, -float(n))})
        writes.append((key, int(ts[0]), int(ts[-1]) + 1, labels, f"h{n}", 0))
    store.write_labels_many(set_id, writes, "job", fresh=True, record=False)
    for n, key in enumerate(keys):
        got = store.read_labels(key, set_id)
        assert got.num_rows == rows
        assert set(got.column("mfe").to_pylist()) == {float(n)}, key
