"""A hypothesis state machine drives the Redis chunk store (real redis-server)
through random claims, completions, failures, releases, expiries and
requeues, and checks it against a model built from the pure state machine
(``jobs.machine``: the same tables the Lua scripts read) after every step:
at most one valid lease per chunk, stale tokens refused, terminal states
absorbing, the job's and each series' counters and the settle rule."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gpubackfill.jobs.machine import next_chunk_state, settle_event
from gpubackfill.jobs.result import ChunkResult, Segment, SegmentOutcome
from gpubackfill.storage.redis import RedisState


def done(idx, candles, rows, cache_hit=False, duration=0.1):
    """A finished chunk's result (series 0)."""
    return ChunkResult(idx, "done", duration, (SegmentOutcome(SERIES[idx], candles, rows),), cache_hit)

pytestmark = [pytest.mark.faults, pytest.mark.integration]

CHUNKS = 3
SERIES = {0: 0, 1: 1, 2: 1}  # chunk -> series: a job over two series


def test_chunk_lifecycle_against_a_model(redis_socket):
    client = redis.Redis(unix_socket_path=str(redis_socket), decode_responses=True)

    class ChunkStore(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.s = RedisState(client, "sm" + uuid.uuid4().hex[:8], 600, "test")
            self.job = "j"
            self.s.create_job(self.job, {"workers": 1, "series": [["A", "M5"], ["B", "H1"]]},
                              [(Segment(SERIES[i], i * 10, i * 10 + 10, 10),) for i in range(CHUNKS)])
            self.s.transition(self.job, "execute")
            self.state = {i: "pending" for i in range(CHUNKS)}
            self.token: dict[int, int] = {}      # current lease token per leased chunk
            self.short: set[int] = set()         # leases given with a 0 ms expiry
            self.old_tokens: list[tuple[int, int]] = []
            self.done_ever: set[int] = set()
            self.last_token = 0

        def running(self) -> bool:
            return any(v in ("pending", "leased") for v in self.state.values())

        @rule(short=st.booleans())
        def claim(self, short):
            got = self.s.claim(self.job, "w", 0 if short else 600_000)
            if not self.running():
                assert got in ("completed", "completed_with_errors")
                return
            if "pending" not in self.state.values():
                assert got == "empty"
                return
            idx, token, rng = got
            assert self.state[idx] == "pending" and token > self.last_token
            assert rng == (Segment(SERIES[idx], idx * 10, idx * 10 + 10, 10),)
            self.last_token = token
            self.state[idx] = next_chunk_state(self.state[idx], "claim")
            self.token[idx] = token
            (self.short.add if short else self.short.discard)(idx)

        @precondition(lambda self: self.token)
        @rule(data=st.data())
        def complete(self, data):
            idx = data.draw(st.sampled_from(sorted(self.token)))
            status, _ = self.s.complete(self.job, idx, self.token[idx], done(idx, 10, 10, False, 0.1))
            assert status == "ok"
            self.state[idx] = next_chunk_state(self.state[idx], "complete")
            self.done_ever.add(idx)
            self.old_tokens.append((idx, self.token.pop(idx)))

        @precondition(lambda self: self.old_tokens)
        @rule(data=st.data())
        def stale_complete_is_refused(self, data):
            idx, token = data.draw(st.sampled_from(self.old_tokens))
            assert self.s.complete(self.job, idx, token, done(idx, 10, 10, False, 0.1))[0] == "stale"
            assert self.s.fail(self.job, idx, token, "late", 5)[0] == "stale"

        @precondition(lambda self: self.token)
        @rule(data=st.data(), retryable=st.booleans())
        def fail(self, data, retryable):
            idx = data.draw(st.sampled_from(sorted(self.token)))
            status, _ = self.s.fail(self.job, idx, self.token[idx], "boom", 2, retryable=retryable)
            attempts = int(client.hget(self.s.key(self.job, "attempts"), idx))
            if retryable and attempts < 2:
                assert status == "retry"
                self.state[idx] = next_chunk_state(self.state[idx], "retry")
            else:
                self.state[idx] = next_chunk_state(self.state[idx], "give_up")
                assert status == self.state[idx]
            self.old_tokens.append((idx, self.token.pop(idx)))

        @precondition(lambda self: self.token)
        @rule(data=st.data())
        def release(self, data):
            idx = data.draw(st.sampled_from(sorted(self.token)))
            assert self.s.release(self.job, idx, self.token[idx])
            self.state[idx] = next_chunk_state(self.state[idx], "release")
            self.old_tokens.append((idx, self.token.pop(idx)))

        @rule()
        def expire(self):
            time.sleep(0.002)
            n = self.s.expire_leases(self.job)
            expired = [i for i in self.token if i in self.short]
            assert n == len(expired)
            for i in expired:
                self.state[i] = next_chunk_state(self.state[i], "expire")
                self.old_tokens.append((i, self.token.pop(i)))

        @rule()
        def requeue(self):
            failed = [i for i, v in self.state.items() if v == "failed"]
            if self.s.job(self.job)["status"] != "running":
                return  # a settled job is re-run through execute, not here
            assert self.s.requeue_failed(self.job) == len(failed)
            for i in failed:
                self.state[i] = next_chunk_state(self.state[i], "requeue")

        @invariant()
        def matches_the_model(self):
            assert self.s.chunk_states(self.job) == self.state
            leases = self.s.leases(self.job)
            assert leases == self.token  # a lease exactly for each leased chunk, ours
            assert all(self.state[i] == "done" for i in self.done_ever)  # done is absorbing
            job = self.s.job(self.job)
            count = lambda st, chunks=range(CHUNKS): sum(self.state[i] == st for i in chunks)  # noqa: E731
            assert job["chunks_done"] == count("done")
            assert job["chunks_failed"] == count("failed")
            assert job["chunks_leased"] == count("leased")
            ended = settle_event(CHUNKS, count("done"), count("failed"))
            if ended is not None:
                assert job["status"] == {"complete": "completed",
                                         "complete_with_errors": "completed_with_errors"}[ended]
            else:
                assert job["status"] == "running"
            for s, counted in enumerate(self.s.series_counters(self.job, 0, 2)):
                mine = [i for i in range(CHUNKS) if SERIES[i] == s]
                got = {f: counted[f] for f in
                       ("chunks_total", "chunks_done", "chunks_failed", "leased", "candles_done")}
                assert got == {"chunks_total": len(mine), "chunks_done": count("done", mine),
                               "chunks_failed": count("failed", mine), "leased": count("leased", mine),
                               "candles_done": 10 * count("done", mine)}
    ChunkStore.TestCase.settings = hsettings(max_examples=60, stateful_step_count=30, deadline=None)
    ChunkStore.TestCase().runTest()
