"""The Lua-scripted transitions against a real redis-server."""

import time

import pytest

from gpubackfill.errors import InvalidTransition, JobNotFound
from gpubackfill.jobs.result import ChunkResult, SegmentOutcome
from gpubackfill.storage.redis import RedisState
from gpubackfill.storage.redis_server import connect


def done(idx, candles, rows, cache_hit=False, duration=0.1):
    """A finished chunk's result (series 0)."""
    return ChunkResult(idx, "done", duration, (SegmentOutcome(0, candles, rows),), cache_hit)


@pytest.fixture
def state(settings):
    client, where = connect(settings)
    return RedisState(client, settings.redis_prefix, settings.redis_ttl, where)


def new_job(state, n=3):
    state.create_job("j1", {"instrument": "EURUSD"}, [(i * 10, i * 10 + 10, 5) for i in range(n)])
    return "j1"


def test_a_tasks_fences_and_records_go_in_one_round_trip_each_and_settle_as_one_by_one(state):
    job = new_job(state, 3)
    state.transition(job, "execute")
    (i0, t0, _), (i1, t1, _), (i2, t2, _) = (state.claim(job, "w", 10_000) for _ in range(3))
    sent = []
    real = state.client.pipeline

    def pipeline(*args, **kwargs):
        sent.append(1)
        return real(*args, **kwargs)

    state.client.pipeline = pipeline
    # i1's lease is not ours under this token: 0, as fence_write says.
    assert state.fence_writes(job, [(i0, t0), (i1, t1 + 100), (i2, t2)], 10_000) == [1, 0, 1]
    assert state.fence_writes(job, [(i0, t0)], 10_000) == [2]  # fenced before under this lease
    assert state.complete_many(job, [(i0, t0, done(i0, 5, 5), None),
                                     (i1, t1 + 100, done(i1, 5, 5), None),
                                     (i2, t2, done(i2, 5, 4), None)]) == [("ok", "running"), ("stale", ""),
                                                                          ("ok", "running")]
    assert len(sent) == 2  # a lone call goes as the script itself (a pipeline costs a SCRIPT EXISTS)
    assert state.complete_many(job, [(i1, t1, done(i1, 5, 5), None)]) == [("ok", "completed")]
    j = state.job(job)
    assert (j["chunks_done"], j["candles_done"], j["rows_written"]) == (3, 15, 14)
    assert state.complete_many(job, []) == [] and len(sent) == 2


def test_claims_in_one_round_trip_hand_out_each_chunk_once_and_then_say_why_not(state):
    job = new_job(state, 3)
    state.transition(job, "execute")
    got = state.claim_many(job, "w", 10_000, 2)
    assert [i for i, _, _ in got] == [0, 1] and all(rng == state.plan(job)[i] for i, _, rng in got)
    assert state.claim_many(job, "w", 10_000, 3)[1:] == ["empty", "empty"]
    assert set(state.chunk_states(job).values()) == {"leased"}
    state.transition(job, "pause")
    assert state.claim_many(job, "w", 10_000, 1) == ["paused"]


def test_claim_needs_a_running_job_and_hands_out_each_chunk_once(state):
    job = new_job(state)
    assert state.claim(job, "w", 10_000) == "queued"
    state.transition(job, "execute")
    got = [state.claim(job, "w", 10_000) for _ in range(3)]
    assert sorted(i for i, _, _ in got) == [0, 1, 2]
    assert len({t for _, t, _ in got}) == 3
    assert all(rng == state.plan(job)[i] for i, _, rng in got)
    assert state.claim(job, "w", 10_000) == "empty"
    assert set(state.chunk_states(job).values()) == {"leased"}


def test_complete_settles_the_job_and_rejects_stale_tokens(state):
    job = new_job(state, 2)
    state.transition(job, "execute")
    (i0, t0, _), (i1, t1, _) = state.claim(job, "w", 10_000), state.claim(job, "w", 10_000)
    assert state.complete(job, i0, t0 + 100, done(i0, 5, 5, False, 0.1)) == ("stale", "")
    assert state.complete(job, i0, t0, done(i0, 5, 5, False, 0.1)) == ("ok", "running")
    assert state.complete(job, i0, t0, done(i0, 5, 5, False, 0.1)) == ("stale", "")  # no double count
    assert state.complete(job, i1, t1, done(i1, 5, 5, True, 0.1)) == ("ok", "completed")
    j = state.job(job)
    assert (j["chunks_done"], j["candles_done"], j["rows_written"], j["cache_hits"]) == (2, 10, 10, 1)
    assert j["finished"] >= j["started"]


def test_failures_retry_then_give_up(state):
    job = new_job(state, 1)
    state.transition(job, "execute")
    idx, tok, _ = state.claim(job, "w", 10_000)
    assert state.fail(job, idx, tok, "boom", max_attempts=2) == ("retry", "1")
    idx, tok, _ = state.claim(job, "w", 10_000)
    assert state.fail(job, idx, tok, "boom again", max_attempts=2) == ("failed", "completed_with_errors")
    assert state.chunk_errors(job) == {0: "boom again"}


def test_data_errors_are_not_retried(state):
    job = new_job(state, 2)
    state.transition(job, "execute")
    idx, tok, _ = state.claim(job, "w", 10_000)
    assert state.fail(job, idx, tok, "bad rows", max_attempts=5, retryable=False)[0] == "failed"


def test_expired_leases_return_to_pending(state):
    job = new_job(state, 1)
    state.transition(job, "execute")
    idx, tok, _ = state.claim(job, "w", 1)
    time.sleep(0.01)
    assert state.expire_leases(job) == 1
    assert state.chunk_states(job) == {0: "pending"}
    # The old lease holder's late completion does not count.
    assert state.complete(job, idx, tok, done(idx, 5, 5, False, 0.1)) == ("stale", "")
    idx2, tok2, _ = state.claim(job, "w2", 10_000)
    assert (idx2, tok2 != tok) == (idx, True)


def test_pause_blocks_claims_until_resume_and_cancel_is_final(state):
    job = new_job(state)
    state.transition(job, "execute")
    assert state.transition(job, "pause") == "paused"
    assert state.claim(job, "w", 10_000) == "paused"
    assert state.transition(job, "resume") == "running"
    assert isinstance(state.claim(job, "w", 10_000), tuple)
    assert state.transition(job, "cancel") == "cancelled"
    with pytest.raises(InvalidTransition, match="it is cancelled"):
        state.transition(job, "resume")
    assert [e["event"] for e in state.events(job)] == ["create", "execute", "pause", "resume", "cancel"]


def test_unknown_job(state):
    with pytest.raises(JobNotFound):
        state.job("nope")
    with pytest.raises(JobNotFound):
        state.transition("nope", "pause")


def test_only_one_driver_at_a_time(state):
    job = new_job(state)
    assert state.acquire_driver(job, "a", 10_000) is None
    assert state.acquire_driver(job, "b", 10_000) == "a"
    state.release_driver(job, "a")
    assert state.acquire_driver(job, "b", 10_000) is None


def test_given_up_chunks_can_be_requeued(state):
    job = new_job(state, 2)
    state.transition(job, "execute")
    (i0, t0, _), (i1, t1, _) = state.claim(job, "w", 10_000), state.claim(job, "w", 10_000)
    state.complete(job, i0, t0, done(i0, 5, 5, False, 0.1))
    assert state.fail(job, i1, t1, "bad", 1, retryable=False) == ("failed", "completed_with_errors")
    assert state.requeue_failed(job) == 1
    state.transition(job, "execute")
    i, t, _ = state.claim(job, "w", 10_000)
    assert i == i1 and state.complete(job, i, t, done(i, 5, 5, False, 0.1)) == ("ok", "completed")


def test_a_driver_whose_lock_ran_out_takes_it_again_or_stops(settings):
    """A driver held up past its lock's life (a long compile, an overloaded
    host) must not go on without the lock: it takes it again, or, when
    another process took the job over meanwhile, it stops driving."""
    import time

    import pytest

    from gpubackfill.engine.driver import Driver, DriverLost
    from gpubackfill.storage.connections import connections

    _, state = connections(settings)
    state.create_job("jd", {"workers": 1}, [(0, 10, 5)])
    state.transition("jd", "execute")
    assert state.acquire_driver("jd", "host:1:a", 50) is None
    d = Driver(state, settings, "jd", "host:1:a", 50, {}, [["EURUSD", "M5"]], cluster=None, workers=1)
    time.sleep(0.1)                      # the lock runs out unrenewed
    assert state.driver_owner("jd") is None
    d.last_upkeep -= 10
    d._upkeep()
    assert state.driver_owner("jd") == "host:1:a"
    assert any(e["event"] == "driver_relock" for e in state.events("jd"))
    time.sleep(0.1)
    assert state.acquire_driver("jd", "host:2:b", 10_000) is None  # another process took over
    d.last_upkeep -= 10
    with pytest.raises(DriverLost, match="driven by host:2:b"):
        d._upkeep()
    assert state.driver_owner("jd") == "host:2:b"


def test_eta_samples_keep_finishing_order_when_clocks_read_the_other_way(state, monkeypatch):
    """Two workers finishing at once can record in the other order than
    their clocks read: the later record never goes back in time."""
    import gpubackfill.storage.redis.queue as rs  # where complete reads the clock
    from gpubackfill.storage.telemetry import Telemetry

    job = new_job(state, 3)
    state.transition(job, "execute")
    claims = [state.claim(job, "w", 10_000) for _ in range(3)]
    for (idx, tok, _), clock in zip(claims, (5_000, 4_000, 6_000)):
        monkeypatch.setattr(rs, "now_ms", lambda clock=clock: clock)
        assert state.complete(job, idx, tok, done(idx, 5, 5, False, 0.1))[0] == "ok"
    samples = Telemetry(state).samples(job)
    assert [t for t, _, _ in samples] == [5_000, 5_000, 6_000]
    assert [n for _, _, n in samples] == [5, 5, 5]


def test_a_status_never_shows_more_eta_samples_than_chunks_done(state, monkeypatch):
    """A chunk that finishes while a status is being read: its sample and
    its count are written together, and the status reads the samples first,
    so it never estimates from a chunk it does not count as done."""
    from gpubackfill.engine import views
    from gpubackfill.storage.telemetry import Telemetry

    state.create_job("j2", {"instrument": "EURUSD", "granularity": "M1", "start_ms": 0, "end_ms": 30,
                            "labels": ["mfe_mae"], "label_set": "s", "workers": 2},
                     [(i * 10, i * 10 + 10, 5) for i in range(3)])
    state.transition("j2", "execute")
    claims = [state.claim("j2", "w", 10_000) for _ in range(3)]
    idx, tok, _ = claims[0]
    assert state.complete("j2", idx, tok, done(idx, 5, 5))[0] == "ok"
    telemetry = Telemetry(state)
    pending = list(claims[1:])

    def then_finish_one(read):
        def wrapped(*args, **kwargs):
            out = read(*args, **kwargs)
            if pending:  # a chunk finishes right after the first of the status's reads
                i, t, _ = pending.pop(0)
                state.complete("j2", i, t, done(i, 5, 5))
            return out
        return wrapped

    monkeypatch.setattr(state, "job", then_finish_one(state.job))
    monkeypatch.setattr(telemetry, "samples", then_finish_one(telemetry.samples))
    s = views.job_status(state, telemetry, "j2")
    assert s.eta.chunks_seen <= s.chunks.done


def test_the_driver_keeps_only_the_leases_of_chunks_not_started(state):
    job = new_job(state, 3)
    state.transition(job, "execute")
    (a, ta, _), (b, tb, _), (c, tc, _) = (state.claim(job, "w", 1) for _ in range(3))
    assert state.start_lease(job, a, ta, 1) == "ok"  # a's task started it
    assert state.release(job, c, tc)  # c was given back
    assert state.started(job) == {a}
    # Positions of the chunks not renewed: a (started), c (not ours).
    assert state.keep_waiting(job, [(a, ta), (b, tb), (c, tc)], 60_000) == [0, 2]
    time.sleep(0.01)
    # a's one-millisecond lease ran out (only its heartbeat renews it); b's was kept.
    assert state.expire_leases(job) == 1
    assert state.leases(job) == {b: tb}
    assert state.chunk_states(job) == {a: "pending", b: "leased", c: "pending"}
    # A started lease stays started through its heartbeat's renewals and its fence.
    assert state.start_lease(job, b, tb, 60_000) == "ok"
    assert state.renew_lease(job, b, tb, 60_000) and state.fence_write(job, b, tb, 60_000) == 1
    assert state.started(job) == {b} and state.keep_waiting(job, [(b, tb)], 60_000) == [0]
    assert state.release_owner(job, "w") == 1  # the owner is read past the mark
    assert state.start_lease(job, b, tb, 60_000) == "lost"


def test_a_chunk_behind_others_in_its_task_does_not_start_once_its_job_stops(state):
    job = new_job(state, 2)
    state.transition(job, "execute")
    (a, ta, _), (b, tb, _) = (state.claim(job, "w", 60_000) for _ in range(2))
    state.transition(job, "pause")
    assert state.start_lease(job, b, tb, 60_000, behind=True) == "paused"
    assert state.started(job) == set()
    # A task's first chunk starts, as a claimed chunk always has.
    assert state.start_lease(job, a, ta, 60_000) == "ok" and state.started(job) == {a}
