"""The control plane's cost does not grow with the size of a job where it
need not (bench/scale.py measures it at 1M chunks): counted in Redis's own
command statistics (scripts' calls included) and in chDB statements."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from gpubackfill.jobs.result import ChunkResult, Segment, SegmentOutcome
from gpubackfill.storage.clickhouse_store import Store
from gpubackfill.storage.redis import RedisState
from gpubackfill.storage.redis_server import connect

pytestmark = pytest.mark.integration


@pytest.fixture
def state(settings):
    client, where = connect(settings)
    return RedisState(client, settings.redis_prefix, settings.redis_ttl, where)


def calls(client, command: str) -> int:
    """Calls of ``command`` since the last CONFIG RESETSTAT (from scripts too)."""
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def many_series_job(state, chunks: int, series: int) -> str:
    names = [[f"I{i:05d}", "M1"] for i in range(series)]
    plans = [(Segment(i % series, i * 10, i * 10 + 10, 5),) for i in range(chunks)]
    state.create_job("big", {"instrument": "I00000", "series": names, "label_set": "ls",
                             "start_ms": 0, "end_ms": chunks * 10}, plans)
    return "big"


def small_universe(service, series: int, candles: int = 400) -> None:
    """``series`` H1 series of ``candles`` flat candles from 2024-01-01, in one statement."""
    service.init()
    store = service.store
    store.command(f"""
        INSERT INTO {store.db}.candles (instrument, granularity, ts, open, high, low, close, volume)
        SELECT concat('U', leftPad(toString(intDiv(number, {candles})), 4, '0')), 'H1',
               fromUnixTimestamp64Milli(toInt64(1704067200000 + (number % {candles}) * 3600000), 'UTC'),
               1.0, 1.0, 1.0, 1.0, 1.0
        FROM numbers({series * candles})""")


def test_starting_a_run_reads_the_pending_chunks_in_pages_not_in_one_script(state):
    job = many_series_job(state, 3_000, 10)
    client = state.client
    client.config_resetstat()
    begun = state.begin_run(job, "me", 60_000)
    assert begun.status == "running" and len(begun.pending) == 3_000
    assert begun.pending[7] == state.plan_entry(job, 7)
    # One HGET per pending chunk inside the start script held Redis for
    # seconds at 100k chunks; now a page of entries is one HMGET.
    assert calls(client, "hget") < 50
    assert 0 < calls(client, "hmget") <= 5


def test_a_completion_does_not_read_the_jobs_series_list(state):
    job = many_series_job(state, 4, 2)
    state.begin_run(job, "me", 60_000)
    idx, token, segs = state.claim(job, "me", 60_000)
    # Were the script to decode the series list, this instrument would be
    # counted under its name there (I00000 or I00001), not the one given.
    result = ChunkResult(idx, "done", 0.1, (SegmentOutcome(segs[0].series, 5, 5),))
    assert state.complete(job, idx, token, result, {segs[0].series: "GIVEN"})[0] == "ok"
    stats = state.client.hgetall(state.shared_key("stats"))
    assert stats.get("instrument:GIVEN") == "5"
    assert not any(k.startswith("instrument:I0000") for k in stats)
    # Without the names, the series list still names it.
    idx, token, segs = state.claim(job, "me", 60_000)
    state.complete(job, idx, token, ChunkResult(idx, "done", 0.1, (SegmentOutcome(segs[0].series, 5, 5),)))
    name = json.loads(state.client.hget(state.key(job), "series"))[segs[0].series][0]
    assert state.client.hget(state.shared_key("stats"), f"instrument:{name}") == "5"


def test_the_driver_reads_the_jobs_status_not_its_whole_record(service, monkeypatch):
    from gpubackfill.storage.redis.jobs import Jobs

    small_universe(service, 3)
    job = service.create_job("*", "H1", "2024-01-01", "2024-01-20", chunk_size=10, workers=1)
    reads = []
    real = Jobs.job
    monkeypatch.setattr(Jobs, "job", lambda self, job_id: reads.append(job_id) or real(self, job_id))
    assert service.execute(job).status == "completed"
    monkeypatch.undo()
    assert service.job(job).chunks_total >= 100
    # A turn of the driver read the job's whole hash (as long as its series
    # list and per-series counters); the end of the run reads it once.
    assert len(reads) <= 2, len(reads)


def test_planning_many_small_series_takes_a_few_statements_not_one_per_series(service, monkeypatch):
    small_universe(service, 120)
    statements = []
    real = Store.rows

    def counted(self, sql, parameters=None):
        statements.append(sql)
        return real(self, sql, parameters)

    monkeypatch.setattr(Store, "rows", counted)
    job = service.create_job("*", "H1", None, None, chunk_size=100, workers=1)
    monkeypatch.undo()
    got = service.job(job)
    assert len(got.series) == 120 and got.chunks_total > 120
    # Before: a count, a span and a numbered read per series (~4 statements each).
    assert len(statements) < 30, len(statements)


def test_a_job_of_many_chunks_is_written_a_page_a_command(state):
    from gpubackfill.storage.redis.jobs import PAGE

    client = state.client
    client.config_resetstat()
    job = many_series_job(state, 3 * PAGE + 1, 10)
    # No command carries the whole plan: a million entries in one held
    # Redis for seconds and broke the client's connection.
    assert calls(client, "hset") >= 2 * 4 and calls(client, "rpush") >= 4
    assert client.hlen(state.key(job, "plan")) == client.llen(state.key(job, "pending")) == 3 * PAGE + 1
    assert state.plan_entry(job, 3 * PAGE) == (Segment(PAGE % 10, 3 * PAGE * 10, 3 * PAGE * 10 + 10, 5),)
    assert client.lrange(state.key(job, "pending"), 0, 2) == ["0", "1", "2"]


def test_a_start_marks_its_chunks_fresh_a_page_a_command(state):
    job = many_series_job(state, 12_001, 10)
    plans = state.plan(job)
    fresh = {i: tuple(replace(s, fresh=True) for s in segs) for i, segs in plans.items()}
    client = state.client
    client.config_resetstat()
    state.set_plan_entries(job, fresh)
    assert calls(client, "hset") >= 3
    assert state.plan(job) == fresh


def run_job(state, job: str) -> None:
    """Claim and complete every chunk of ``job`` (each segment 5 candles, 5 rows)."""
    state.begin_run(job, "me", 60_000)
    while not isinstance(got := state.claim(job, "me", 60_000), str):
        idx, token, segs = got
        outcome = tuple(SegmentOutcome(s.series, 5, 5) for s in segs)
        assert state.complete(job, idx, token, ChunkResult(idx, "done", 0.1, outcome))[0] == "ok"


def test_the_jobs_hash_does_not_grow_with_its_series(state):
    """A job's hash holds its own fields; the series' counters have a hash
    of their own.  Seven counters a series in the job's hash made every
    read of it (a run's start, a status) as long as the job's series."""
    sizes = {}
    for series in (20, 200):
        job = many_series_job(state, 2 * series, series)
        run_job(state, job)
        sizes[series] = (state.client.hlen(state.key(job)), state.client.hlen(state.key(job, "series")))
        state.delete_job(job)
    assert sizes[20][0] == sizes[200][0]
    # chunks_total, chunks_done, leased (back to 0), candles_total and candles_done of each series
    assert sizes[20][1] == 5 * 20 and sizes[200][1] == 5 * 200


def test_a_job_of_many_series_writes_its_counters_a_page_a_command(state):
    from gpubackfill.storage.redis.jobs import PAGE

    series = PAGE + 7  # two counters a series: more than two commands' worth
    client = state.client
    client.config_resetstat()
    job = many_series_job(state, series, series)
    assert client.hlen(state.key(job, "series")) == 2 * series
    assert calls(client, "hset") >= 2 + 2  # the series' counters in two, the plan's in two...
    assert state.series_counters(job, series - 1, 1) == [
        {"chunks_total": 1, "chunks_done": 0, "chunks_failed": 0, "leased": 0, "candles_total": 5,
         "candles_done": 0, "errors": 0}]


def test_the_series_counters_are_exact_after_a_run_and_read_a_page_at_a_time(service):
    """A universe job run to the end: each series' counters match the
    chunks' (every series' candles counted once), and the job view lists
    them a page at a time, the page it was asked for."""
    from gpubackfill.engine.views import job_status

    small_universe(service, 30, candles=200)
    job = service.create_job("*", "H1", None, None, chunk_size=50, workers=1)
    assert service.execute(job).status == "completed"
    whole = service.job(job)
    assert whole.series_count == len(whole.series) == 30 and whole.series_offset == 0
    plans = service.state.plan(job)
    for i, s in enumerate(whole.series):
        mine = [seg for segs in plans.values() for seg in segs if seg.series == i]
        assert s.instrument == f"U{i:04d}" and s.status == "completed"
        assert s.chunks_total == s.chunks_done == len(mine) > 0
        assert s.candles_total == s.candles_done == sum(seg.rows for seg in mine) == 200
        assert s.chunks_failed == s.errors == 0
    assert sum(s.candles_done for s in whole.series) == whole.candles_done == 30 * 200
    # A page: series 10..21 only, the same as in the whole list.
    page = service.job(job, series_offset=10, series_limit=12)
    assert page.series_count == 30 and page.series_offset == 10
    assert page.series == whole.series[10:22]
    assert service.job(job, series_offset=25, series_limit=100).series == whole.series[25:]
    assert service.job(job, series_offset=30).series == []
    # Every page is one bounded read, not the whole series hash.
    client = service.state.client
    client.config_resetstat()
    job_status(service.state, service.telemetry, job, 0, 5)
    assert calls(client, "hmget") == 1 and calls(client, "hgetall") == 1  # the job's own hash


def universe_job(state, job: str, names: list[str], start: int = 0, end: int = 1_000) -> str:
    """A queued job of one chunk a series, writing label set "ls" over [start, end)."""
    state.create_job(job, {"instrument": names[0], "series": [[n, "M1"] for n in names],
                           "label_set": "ls", "start_ms": start, "end_ms": end},
                     [(Segment(i, start, end, 5),) for i in range(len(names))])
    return job


def test_a_start_claims_its_writes_in_a_few_calls_whatever_its_series(state):
    """The writers claim is one entry a job: a run of a job of 3,000 series
    starts in as many Redis calls as one of a single series (per series it
    read and wrote an entry: 1.6 s of one script at 100k series)."""
    client = state.client
    counts = {}
    for n in (1, 3_000):
        job = universe_job(state, f"u{n}", [f"I{i:05d}" for i in range(n)])
        client.config_resetstat()
        assert state.begin_run(job, "me", 60_000).status == "running"
        counts[n] = sum(calls(client, c) for c in ("hget", "hset", "hgetall", "hmget"))
        assert client.hgetall(state.shared_key("writing:ls")).get(job) == "0,1000"
        state.transition(job, "pause")
    # A page more of pending chunks' entries, the first job's stale entry
    # read and dropped; not one call a series (6,000 before).
    assert counts[3_000] < counts[1] + 10, counts


def test_jobs_that_share_no_series_write_the_same_labels_side_by_side(state):
    a = universe_job(state, "a", [f"A{i:04d}" for i in range(500)])
    b = universe_job(state, "b", [f"B{i:04d}" for i in range(500)], 500, 2_000)
    assert state.begin_run(a, "me", 60_000).status == "running"
    # Overlapping ranges of the same label set, no series in common: b runs.
    assert state.begin_run(b, "me", 60_000).status == "running"
    # c shares one series with b (its last), and its range overlaps b's only.
    c = universe_job(state, "c", [f"C{i:04d}" for i in range(300)] + ["B0499"], 1_500, 3_000)
    begun = state.begin_run(c, "other", 60_000)
    assert (begun.outcome, begun.before, begun.other) == ("writer", "queued", (b, "running", "B0499 M1"))
    assert state.status(c) == "queued" and state.driver_owner(c) is None
    assert state.claim_writer("ls", c, [("C0000", "M1", 1_500, 3_000), ("B0499", "M1", 1_500, 3_000)],
                              check=True) == (b, "running", "B0499 M1")
    # Outside b's range, or once b no longer runs, c is free to start.
    assert state.claim_writer("ls", c, [("B0499", "M1", 2_000, 3_000)], check=True) is None
    state.transition(b, "pause")
    assert state.begin_run(c, "other", 60_000).status == "running"
    # b, resumed, now meets c over B0499.
    assert state.begin_run(b, "me", 60_000).other == (c, "running", "B0499 M1")


@pytest.mark.parametrize("kept", [True, False])
def test_a_run_again_requeues_the_failed_chunks_from_their_set(state, kept):
    """The chunks given up on are kept in a set of their own: a run again
    requeues them without reading every chunk's state (the whole state
    hash in one script: a second at 1M chunks).  A job failed before the
    set was kept (``kept`` False) is still read from its chunks' states."""
    job = many_series_job(state, 40, 4)
    state.begin_run(job, "me", 60_000)
    given_up = []
    while not isinstance(got := state.claim(job, "me", 60_000), str):
        idx, token, segs = got
        if idx in (3, 17):
            assert state.fail(job, idx, token, "bad", 1, retryable=False)[0] == "failed"
            given_up.append(idx)
        else:
            state.complete(job, idx, token, ChunkResult(idx, "done", 0.1, (SegmentOutcome(segs[0].series, 5, 5),)))
    assert state.status(job) == "completed_with_errors"
    assert sorted(int(i) for i in state.client.smembers(state.key(job, "failed"))) == [3, 17]
    if not kept:
        state.client.delete(state.key(job, "failed"))
    client = state.client
    client.config_resetstat()
    begun = state.begin_run(job, "me", 60_000)
    assert begun.status == "running" and sorted(begun.pending) == [3, 17]
    assert state.client.scard(state.key(job, "failed")) == 0
    # the writers of the label set, the leases, the job's record; and, not
    # kept, the chunks' states
    assert calls(client, "smembers") == 1 and calls(client, "hgetall") == (3 if kept else 4)
    assert state.series_counters(job, 3, 1)[0]["chunks_failed"] == 0
