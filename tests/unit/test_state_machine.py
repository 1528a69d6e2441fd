"""The pure job/chunk lifecycle."""

import pytest

from gpubackfill.errors import InvalidTransition
from gpubackfill.jobs.machine import (
    CHUNK_TRANSITIONS,
    FINAL_JOB_STATES,
    JOB_TRANSITIONS,
    next_chunk_state,
    next_job_status,
    settle_event,
)


def test_happy_path_and_pause_resume():
    s = next_job_status("queued", "execute")
    assert s == "running"
    s = next_job_status(s, "pause")
    assert s == "paused" and next_job_status(s, "resume") == "running"
    assert next_job_status("running", "complete") == "completed"


@pytest.mark.parametrize("final", sorted(FINAL_JOB_STATES - {"failed", "completed_with_errors"}))
def test_completed_and_cancelled_jobs_accept_nothing(final):
    for event in ("execute", "pause", "resume", "cancel", "complete"):
        with pytest.raises(InvalidTransition, match=f"cannot {event} a job that is {final}"):
            next_job_status(final, event)


def test_failed_and_interrupted_jobs_can_be_executed_again():
    assert next_job_status("failed", "execute") == "running"
    assert next_job_status("interrupted", "execute") == "running"
    assert next_job_status("completed_with_errors", "execute") == "running"


def test_resume_needs_a_paused_job():
    with pytest.raises(InvalidTransition, match="allowed: pause, cancel, complete"):
        next_job_status("running", "resume")


def test_every_target_state_is_a_known_state():
    for table in (JOB_TRANSITIONS, CHUNK_TRANSITIONS):
        for src, events in table.items():
            for dst in events.values():
                assert dst in table, (src, dst)


def test_chunk_lifecycle():
    s = next_chunk_state("pending", "claim")
    assert s == "leased"
    assert next_chunk_state(s, "complete") == "done"
    assert next_chunk_state(s, "expire") == "pending"
    with pytest.raises(InvalidTransition):
        next_chunk_state("done", "claim")


def test_settle_event():
    assert settle_event(3, 2, 0) is None
    assert settle_event(3, 3, 0) == "complete"
    assert settle_event(3, 2, 1) == "complete_with_errors"


def test_series_status():
    from gpubackfill.jobs.machine import series_status

    assert series_status(3, 0, 0, 0) == "pending"
    assert series_status(3, 0, 0, 1) == "running"
    assert series_status(3, 1, 0, 0) == "running"
    assert series_status(3, 3, 0, 0) == "completed"
    assert series_status(3, 2, 1, 0) == "completed_with_errors"
    assert series_status(2, 0, 2, 0) == "failed"


def test_a_stopped_jobs_started_series_show_the_jobs_status():
    from gpubackfill.jobs.machine import series_status

    for stopped in ("paused", "interrupted", "cancelled", "failed", "queued"):
        assert series_status(3, 1, 0, 0, stopped) == stopped
        assert series_status(3, 0, 0, 0, stopped) == "pending"      # never started
        assert series_status(3, 3, 0, 0, stopped) == "completed"    # all settled
    assert series_status(3, 1, 0, 1, "paused") == "running"         # a chunk still finishing
    assert series_status(3, 1, 0, 0, "running") == "running"        # between two chunks


# -- the driver's decisions, without Redis or Dask ------------------------------

from gpubackfill.jobs.machine import (  # noqa: E402
    Abandon,
    Claim,
    Collect,
    DriverMachine,
    Finish,
    ReturnExpired,
    Seen,
    Transition,
    Wait,
)
from gpubackfill.jobs.result import ChunkResult  # noqa: E402


def test_a_running_job_keeps_twice_the_workers_submitted():
    m = DriverMachine(workers=2, shutdown_timeout=30)
    assert m.step(Seen(now=0, status="running", in_flight=0)) == [Claim(4)]
    assert m.step(Seen(now=0, status="running", in_flight=3)) == [Claim(1), Collect(0.5)]
    assert m.step(Seen(now=0, status="running", in_flight=4)) == [Collect(0.5)]


def test_an_empty_queue_with_nothing_running_returns_expired_leases_then_finishes():
    m = DriverMachine(workers=2, shutdown_timeout=30)
    assert m.claimed(got=0, empty=True, in_flight=0) == [ReturnExpired()]
    assert m.claimed(got=1, empty=True, in_flight=1) == []     # wait for the one running
    assert m.returned(2, "running") == []                       # claim them next turn
    assert m.returned(0, "completed") == [Finish("completed")]  # the last result settled it
    assert m.returned(0, "running") == [Wait(0.2)]              # another process holds a lease


def test_paused_and_final_jobs():
    m = DriverMachine(workers=1, shutdown_timeout=30)
    assert m.step(Seen(now=0, status="paused", in_flight=0)) == [Wait(0.2)]
    assert m.step(Seen(now=0, status="paused", in_flight=1)) == [Collect(0.5)]  # let them finish
    for final in ("completed", "cancelled", "failed", "interrupted"):
        assert m.step(Seen(now=0, status=final, in_flight=0)) == [Finish(final)]


def test_a_stop_interrupts_once_and_waits_out_running_chunks_until_the_deadline():
    m = DriverMachine(workers=1, shutdown_timeout=10)
    out = m.step(Seen(now=100, status="running", in_flight=2, stop=True))
    assert out == [Transition("interrupt", "signal"), Collect(0.5)]
    assert m.step(Seen(now=105, status="interrupted", in_flight=2, stop=True)) == [Collect(0.5)]
    assert m.step(Seen(now=111, status="interrupted", in_flight=1, stop=True)) == [
        Collect(0.5), Abandon("shutdown timeout")]
    assert m.step(Seen(now=112, status="interrupted", in_flight=0, stop=True)) == [Finish("interrupted")]
    paused = DriverMachine(workers=1, shutdown_timeout=10)
    assert paused.step(Seen(now=0, status="paused", in_flight=0, stop=True)) == [Finish("paused")]


def test_an_outage_holds_claims_and_a_persistent_error_fails_the_job():
    m = DriverMachine(workers=1, shutdown_timeout=10)
    assert m.outcome(ChunkResult(3, "outage", retry_after=5.0), now=100) == []
    assert m.step(Seen(now=102, status="running", in_flight=0)) == [Wait(0.2)]
    assert m.step(Seen(now=106, status="running", in_flight=0)) == [Claim(2)]
    out = m.outcome(ChunkResult(4, "failed", error="bad spec", fail_job=True), now=106)
    assert out == [Transition("fail", "chunk 4: bad spec")]


def test_a_wedged_cluster_is_abandoned():
    m = DriverMachine(workers=2, shutdown_timeout=10)
    out = m.step(Seen(now=0, status="running", in_flight=0, wedged=(3, 7)))
    assert len(out) == 1 and isinstance(out[0], Abandon) and "chunks 3, 7" in out[0].why


# -- planning many series ------------------------------------------------------

from gpubackfill.errors import InvalidInput  # noqa: E402
from gpubackfill.jobs.plan import plan_job  # noqa: E402
from gpubackfill.jobs.spec import make_spec  # noqa: E402


def test_plan_packs_short_runs_and_queues_the_smallest_series_first():
    runs = [
        [(0, 10, 10), (10, 20, 10), (20, 25, 5)],  # series 0: 25 candles
        [(0, 4, 4)],                              # series 1: 4
        [(0, 3, 3)],                              # series 2: 3
        [(0, 9, 9)],                              # series 3: 9
    ]
    chunks = plan_job(runs, chunk_size=10)
    assert [[(s.series, s.start_ms, s.end_ms, s.rows) for s in c] for c in chunks] == [
        [(2, 0, 3, 3), (1, 0, 4, 4)],   # 7 candles: 9 more would pass 10
        [(3, 0, 9, 9)],
        [(0, 0, 10, 10)], [(0, 10, 20, 10)], [(0, 20, 25, 5)],
    ]
    every = sorted((s.series, s.start_ms) for c in chunks for s in c)
    assert every == sorted((i, a) for i, r in enumerate(runs) for a, _, _ in r)
    assert all(sum(s.rows for s in c) <= 10 for c in chunks)
    assert len(plan_job([[(i, i + 1, 1)] for i in range(10)], 100, max_segments=4)) == 3


def test_spec_lists_and_star():
    spec = make_spec("EURUSD, GBPUSD", ["M5", "H1", "M5"], "2024-01-01", "2024-01-02", None, None,
                     100, 1)
    assert spec.series == (("EURUSD", "M5"), ("EURUSD", "H1"), ("GBPUSD", "M5"), ("GBPUSD", "H1"))
    assert spec.instrument == "EURUSD,GBPUSD" and spec.granularity == "M5,H1"
    star = make_spec("*", "M5", "2024-01-01", "2024-01-02", None, None, 100, 1)
    assert star.instruments == ("*",) and star.series == ()
    with pytest.raises(InvalidInput, match="give it alone"):
        make_spec("*,EURUSD", "M5", "2024-01-01", "2024-01-02", None, None, 100, 1)
    with pytest.raises(InvalidInput, match="no granularity"):
        make_spec("EURUSD", " , ", "2024-01-01", "2024-01-02", None, None, 100, 1)
    with pytest.raises(InvalidInput, match="unknown granularity|granularity"):
        make_spec("EURUSD", "M5,M7", "2024-01-01", "2024-01-02", None, None, 100, 1)


# -- the plan's hints to the data path ---------------------------------------

from gpubackfill.jobs.plan import mark_fresh  # noqa: E402
from gpubackfill.jobs.result import Segment, encode_segments  # noqa: E402


def test_segments_carry_halo_bounds_and_freshness_through_their_text_form():
    segs = (Segment(0, 100, 200, 7, 40, 260, True), Segment(3, -50, 0, 2), Segment(1, 5, 9, 1, 0, 12, False))
    text = encode_segments(segs)
    assert text == "0,100,200,7,40,260,1;3,-50,0,2;1,5,9,1,0,12,0"
    assert Segment.decode_all(text) == segs
    # What Lua writes for a split or an unpacked segment: four fields, no hints.
    assert Segment.decode_all("2,10,20,5") == (Segment(2, 10, 20, 5, 0, 0, False),)


def test_plan_keeps_each_runs_halo_bounds():
    runs = [[(0, 10, 10, 0, 13), (10, 20, 10, 7, 23), (20, 30, 10, 17, 0)], [(0, 3, 3)]]
    chunks = plan_job(runs, chunk_size=10)
    bounds = {(s.series, s.start_ms): (s.lo_ms, s.hi_ms) for c in chunks for s in c}
    assert bounds == {(1, 0): (0, 0), (0, 0): (0, 13), (0, 10): (7, 23), (0, 20): (17, 0)}


def test_only_segments_clear_of_a_series_label_rows_are_fresh():
    chunks = [(Segment(0, 0, 10, 10),), (Segment(0, 10, 20, 10),), (Segment(0, 20, 30, 10),),
              (Segment(1, 0, 5, 5), Segment(2, 0, 5, 5))]
    # Series 0 has label rows at ts 12..20; series 1 and 2 have none.
    marked = mark_fresh(chunks, {0: (12, 20)})
    assert [[s.fresh for s in c] for c in marked] == [[True], [False], [False], [True, True]]
    # Ranges are [start, end): a last label row at a segment's first ts is
    # inside it, one at the previous segment's end is not.
    assert [c[0].fresh for c in mark_fresh(chunks[:3], {0: (0, 9)})] == [False, True, True]
    assert [c[0].fresh for c in mark_fresh(chunks[:3], {0: (0, 10)})] == [False, False, True]


def test_jobs_overlap_when_they_write_the_same_labels_of_a_series_over_meeting_ranges():
    from dataclasses import replace

    a = replace(make_spec("EURUSD,GBPUSD", "M5", None, None, None, None, None, 1),
                label_set="x", start_ms=0, end_ms=100)
    assert a.overlaps(replace(a.with_series([("GBPUSD", "M5")]), start_ms=99, end_ms=200))
    assert not a.overlaps(replace(a, start_ms=100, end_ms=200))        # [0, 100) and [100, 200)
    assert not a.overlaps(replace(a, label_set="y"))
    assert not a.overlaps(a.with_series([("EURUSD", "H1")]))
