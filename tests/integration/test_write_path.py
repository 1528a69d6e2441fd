"""The plan's hints to the data path, against real chDB and a real redis-server.

A chunk reads its halo by bounds the plan found, and the first run of a
chunk planned over a range without label rows writes without asking what is
there.  Both are only hints: these tests check that every way they can go
stale falls back to the exact path, and that rows stay exactly once.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from test_engine import ALL, END, START, assert_matches_whole_series, series

from gpubackfill.errors import InvalidTransition
from gpubackfill.jobs.plan import series_runs
from gpubackfill.jobs.result import Segment
from gpubackfill.jobs.spec import JobSpec
from gpubackfill.labels import halo, resolve
from gpubackfill.storage.clickhouse_store import SeriesKey

KEY = SeriesKey("EURUSD", "M5")


def _all_ts(service, key=KEY) -> np.ndarray:
    return service.store.arrow(
        f"SELECT toUnixTimestamp64Milli(ts) AS t FROM {service.store.db}.candles "
        f"WHERE instrument = '{key.instrument}' AND granularity = '{key.granularity}' ORDER BY ts"
    ).column("t").to_numpy()


@pytest.mark.parametrize("chunk_size,back,ahead", [(997, 64, 30), (10, 64, 30), (50, 0, 0), (7, 3, 20)])
def test_chunk_plan_bounds_are_the_rows_a_halo_needs(service, chunk_size, back, ahead):
    series(service)
    ts = _all_ts(service)
    a, b = int(ts[100]), int(ts[-50])  # a range inside the series: halos on both sides exist
    inside = ts[(ts >= a) & (ts < b)]
    first_row = int(np.searchsorted(ts, a))
    counts = service.store.range_counts("candles", [KEY], a, b)
    marks = service.store.chunk_marks([KEY], a, b, chunk_size, back, ahead, counts)[KEY]
    runs = series_runs(counts[KEY], marks, chunk_size, back, ahead, b)
    firsts = list(range(0, len(inside), chunk_size))
    assert [r[0] for r in runs] == [int(inside[i]) for i in firsts]
    assert [r[2] for r in runs] == [min(chunk_size, len(inside) - i) for i in firsts]
    assert [r[1] for r in runs] == [int(inside[i]) for i in firsts[1:]] + [b]
    for k, (_, _, rows, lo, hi) in enumerate(runs):
        i0 = firsts[k]
        # Inside the job's range the bound is the exact halo row; where the
        # halo leaves the range (first and last chunk) the plan says 0.
        want_lo = int(inside[i0 - back]) if k > 0 and i0 >= back else 0
        j = i0 + rows - 1 + ahead
        want_hi = int(inside[j]) if k + 1 < len(runs) and j < len(inside) else 0
        assert (lo, hi) == (want_lo, want_hi)
        if lo:
            assert int(np.searchsorted(ts, lo)) == first_row + i0 - back


def test_a_load_by_plan_bounds_equals_the_exact_load_even_after_the_data_changed(service):
    series(service)
    back, ahead = halo(resolve(ALL))
    ts = _all_ts(service)
    i, j = back + 100, back + 500
    a, b = int(ts[i]), int(ts[j])
    lo, hi = int(ts[i - back]), int(ts[j + ahead - 1])
    exact = service.store.load(KEY, a, b, back, ahead)
    assert exact[0].num_rows == j - i + back + ahead
    by_plan = service.store.load(KEY, a, b, back, ahead, lo, hi)
    assert by_plan[1:] == exact[1:] and by_plan[0].equals(exact[0])

    # Candles added inside the halo since the plan: cut back to the halo.
    extra = service.store.load(KEY, int(ts[i - 2]), int(ts[i - 1]), 0, 0)[0]
    mid = int(ts[i - 2]) + (int(ts[i - 1]) - int(ts[i - 2])) // 2
    assert service.ingest_table(KEY, extra.set_column(0, "ts", pa.array([mid], pa.int64()))).inserted == 1
    grown = service.store.load(KEY, a, b, back, ahead)
    assert grown[0].num_rows == exact[0].num_rows
    assert service.store.load(KEY, a, b, back, ahead, lo, hi)[0].equals(grown[0])

    # Halo candles deleted since the plan (two before, one after, against
    # the one added): the bounds no longer hold the halo, and the load finds
    # them itself.
    service.store.command(f"DELETE FROM {service.store.db}.candles WHERE instrument = 'EURUSD' "
                          f"AND granularity = 'M5' AND toUnixTimestamp64Milli(ts) IN ({int(ts[i - 50])}, "
                          f"{int(ts[i - 60])}, {int(ts[j + 10])})")
    shrunk = service.store.load(KEY, a, b, back, ahead)
    again = service.store.load(KEY, a, b, back, ahead, lo, hi)
    assert again[1:] == shrunk[1:] and again[0].equals(shrunk[0])
    assert int(again[0].column("ts")[0].as_py()) < lo  # reached past the planned bounds
    assert int(again[0].column("ts")[-1].as_py()) > hi


def _start(service, job):
    """What `execute` does before its first claim: run, and mark fresh
    chunks; then its driver stalls (its lock given up: a later execute
    takes the job over)."""
    from gpubackfill.engine import launch

    launch.begin(service.store, service.state, job, "host:1:stalled", 60_000)
    service.state.release_driver(job, "host:1:stalled")


def test_a_start_marks_fresh_only_the_ranges_without_label_rows(service):
    candles = series(service)
    first = service.start("EURUSD", "M5", "2024-01-10", "2024-01-20", chunk_size=500, workers=2)
    assert service.job(first).model_dump()["status"] == "completed"
    job = service.create_job("EURUSD", "M5", START, END, chunk_size=500, workers=2, force=True)
    assert not any(s.fresh for segs in service.state.plan(job).values() for s in segs)
    _start(service, job)
    labelled = service.store.label_spans(service.job(job).model_dump()["label_set"], [KEY], 0, 2**62)[KEY]
    for segs in service.state.plan(job).values():
        for seg in segs:
            overlaps = seg.start_ms <= labelled[1] and seg.end_ms > labelled[0]
            assert seg.fresh is (not overlaps)
    marks = [s.fresh for segs in service.state.plan(job).values() for s in segs]
    assert any(marks) and not all(marks)
    assert service.execute(job).status == "completed"
    assert_matches_whole_series(service, job, candles)


def test_the_fresh_hint_holds_for_the_first_claim_of_a_chunk_only(service):
    series(service)
    job = service.create_job("EURUSD", "M5", START, END, chunk_size=2_000, workers=2)
    _start(service, job)
    idx, token, segs = service.state.claim(job, "w", 60_000)
    assert all(s.fresh for s in segs) and (segs[0].lo_ms or segs[0].hi_ms)
    service.state.release(job, idx, token)
    idx2, _, again = service.state.claim(job, "w", 60_000)
    assert idx2 == idx
    assert [(s.start_ms, s.end_ms, s.rows, s.lo_ms, s.hi_ms) for s in again] == \
        [(s.start_ms, s.end_ms, s.rows, s.lo_ms, s.hi_ms) for s in segs]
    assert not any(s.fresh for s in again)


def test_a_run_that_wrote_then_died_is_replaced_not_duplicated(service):
    """The first claim writes without looking; the run dies before its
    record; the next run of the chunk must find and replace those rows."""
    candles = series(service)
    job = service.create_job("EURUSD", "M5", START, END, chunk_size=2_000, workers=2)
    _start(service, job)
    idx, token, segs = service.state.claim(job, "w", 60_000)
    seg = segs[0]
    assert seg.fresh
    s = service.job(job).model_dump()
    back, ahead = halo(resolve(s["labels"]))
    table, first, own = service.store.load(KEY, seg.start_ms, seg.end_ms, back, ahead, seg.lo_ms, seg.hi_ms)
    from gpubackfill import compute_labels

    labels = compute_labels(table, s["labels"]).slice(first, own)
    service.store.write_labels(KEY, s["label_set"], seg.start_ms, seg.end_ms, labels, "x", 0, job, fresh=True)
    service.state.release(job, idx, token)  # the lease runs out; nothing recorded
    service.state.transition(job, "interrupt")  # as a driver that stopped
    assert service.execute(job).status == "completed"  # marks fresh again, from the rows
    assert_matches_whole_series(service, job, candles)


def test_a_job_waits_while_another_writes_an_overlapping_range(service):
    series(service)
    a = service.create_job("EURUSD", "M5", START, "2024-01-20", chunk_size=2_000)
    b = service.create_job("EURUSD", "M5", "2024-01-15", END, chunk_size=2_000)
    other = service.create_job("EURUSD", "M5", START, END, labels=["mfe_mae"], chunk_size=2_000)
    later = service.create_job("EURUSD", "M5", "2024-01-21", END, chunk_size=2_000)
    _start(service, a)  # as its driver does, then stalls
    assert service.state.job(a)["status"] == "running"
    with pytest.raises(InvalidTransition, match=rf"job {a} \(running\) is writing these labels for EURUSD M5 "
                                                rf"over an overlapping range; job {b} stays queued"):
        service.execute(b)
    assert service.state.job(b)["status"] == "queued"
    assert service.writer_conflict(b)[0] == a
    # Other labels, or a range that does not overlap, are free to run.
    for job in (other, later):
        assert service.writer_conflict(job) is None
        assert service.execute(job).status == "completed"
    assert service.execute(a).status == "completed"  # its driver, taking over
    assert service.writer_conflict(b) is None
    assert service.execute(b).status == "completed"
    n, uniq = service.store.label_counts(KEY, service.job(b).model_dump()["label_set"])
    assert n == uniq > 0


def test_a_paused_job_still_holds_its_ranges_while_chunks_are_leased(service):
    series(service)
    a = service.create_job("EURUSD", "M5", START, END, chunk_size=2_000)
    b = service.create_job("EURUSD", "M5", "2024-01-05", END, chunk_size=1_000)
    _start(service, a)
    service.state.claim(a, "w", 60_000)
    service.pause(a)
    assert service.state.job(a)["status"] == "paused"
    assert service.writer_conflict(b)[0] == a  # its last chunk still writes
    assert service.state.release_owner(a, "w") == 1  # the chunk returns unwritten
    assert service.writer_conflict(b) is None


def test_segments_keep_their_hints_through_redis(service):
    segs = (Segment(0, 10, 20, 5, 3, 25, True), Segment(1, 30, 40, 2))
    job = "hints" + service.settings.redis_prefix
    service.state.create_job(job, {"status": "queued"}, [segs])
    assert service.state.plan(job)[0] == segs


def test_manifest_rows_wait_in_redis_until_a_driver_inserts_them(service):
    """A chunk records its manifest row with its result; a driver that dies
    before inserting it leaves it in Redis, and the next execute inserts it."""
    from gpubackfill.engine.chunk import run_chunk
    from gpubackfill.engine.task import ChunkTask

    candles = series(service)
    job = service.create_job("EURUSD", "M5", START, END, chunk_size=2_000, workers=1)
    _start(service, job)
    idx, token, segs = service.state.claim(job, "w", 60_000)
    rec = service.state.job(job)
    task = ChunkTask(job_id=job, index=idx, token=token, segments=segs, names={0: ("EURUSD", "M5")},
                     resolved=JobSpec.from_record(rec).resolved, label_set=rec["label_set"],
                     force=False, backend="cpu", max_attempts=3)
    result = run_chunk(service.settings, task)
    assert result.ok and len(result.records) == 1
    series_idx, a, b, digest, rows, _, computed_at = result.records[0]
    assert (series_idx, a, b, rows) == (0, segs[0].start_ms, segs[0].end_ms, segs[0].rows)
    assert service.state.records(job) == [tuple(result.records[0])]
    assert service.store.chunk_record(KEY, rec["label_set"], a, b) is None  # not inserted yet
    service.state.transition(job, "interrupt")  # the driver died here
    assert service.execute(job).status == "completed"
    assert service.state.records(job) == []
    assert service.store.chunk_record(KEY, rec["label_set"], a, b) == (digest, 0)
    manifest = [r for r in service.store.manifest() if r[:3] == ("EURUSD", "M5", rec["label_set"])]
    assert len(manifest) == service.job(job).model_dump()["chunks_total"]
    assert [r for r in manifest if r[3] == a][0][7] == computed_at  # when its candles were read
    assert_matches_whole_series(service, job, candles)


def test_an_unset_chunk_size_follows_the_workers_and_the_job(service):
    series(service)  # about 9,500 candles
    job = service.create_job("EURUSD", "M5", START, END, workers=2)
    assert service.state.job(job)["chunk_size"] == 100_000  # the floor of the automatic sizes
    sized = service.settings.model_copy(update={"chunk_size": 700})
    from gpubackfill.service import BackfillService

    other = BackfillService(sized).create_job("EURUSD", "M5", START, "2024-01-20", workers=2)
    assert service.state.job(other)["chunk_size"] == 700


def test_a_task_run_again_under_the_same_lease_replaces_its_rows(service):
    """Dask runs a task again, with the same leases, when its worker died:
    if the first run reached its write, the second must not trust the
    plan's 'fresh' hint (the write fence tells it), or the rows are there
    twice."""
    import gpubackfill.engine.chunk as chunk_mod
    from gpubackfill.engine.lease import Heartbeat
    from gpubackfill.engine.task import ChunkTask

    series(service)
    job = service.create_job("EURUSD", "M5", START, END, chunk_size=2_000, workers=2)
    _start(service, job)
    idx, token, segs = service.state.claim(job, "w", 60_000)
    assert segs[0].fresh
    s = service.state.job(job)
    task = ChunkTask(index=idx, token=token, segments=segs, names={0: ("EURUSD", "M5")},
                     job_id=job, resolved=JobSpec.from_record(s).resolved,
                     label_set=s["label_set"], force=False, backend="cpu", max_attempts=3)
    # The first run: fenced, wrote its rows, and died before its record.
    assert Heartbeat(service.state, task, 60_000).fence() is True
    chunk_mod._compute_and_write(service.store, task)
    # The same task again, under the same lease.
    result = chunk_mod.run_chunk(service.settings, task)
    assert result.kind == "done"
    n, uniq = service.store.label_counts(KEY, s["label_set"])
    assert n == uniq == segs[0].rows
