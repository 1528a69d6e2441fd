"""Job and chunk state in Redis, every transition one atomic Lua script.

Keys (prefix P, job id J)::

    P:jobs               zset   job ids by creation time
    P:job:J              hash   spec, status, counters, timestamps
    P:job:J:plan         hash   chunk index -> "start_ms,end_ms,rows"
    P:job:J:state        hash   chunk index -> pending|leased|done|failed
    P:job:J:pending      list   chunk indices waiting to be claimed
    P:job:J:lease        hash   chunk index -> "owner|expires_ms|token"
    P:job:J:attempts     hash   chunk index -> attempts so far
    P:job:J:errors       hash   chunk index -> last error
    P:job:J:events       list   history, newest last (capped)
    P:job:J:durations    list   recent chunk durations (s) for the ETA
    P:job:J:driver       string the process driving the job (expires)
    P:dlq                hash   "J:chunk" -> dead-letter entry (JSON)
    P:counters           hash   retries:<category>, errors:<category> -> count
    P:breakers           hash   dependency -> last published breaker state (JSON)

The scripts take the transition tables of ``machine`` as JSON, so Redis and
the Python state machine cannot disagree.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

import pybreaker

from ..errors import DependencyError, InvalidTransition, JobNotFound
from ..resilience import BREAKERS
from .machine import ACTIVE_JOB_STATES, FINAL_JOB_STATES, JOB_TRANSITIONS

_JOB_T = json.dumps(JOB_TRANSITIONS)
EVENTS_KEPT = 500
DURATIONS_KEPT = 200

# KEYS: job, events   ARGV: event, now_ms, transitions, note
_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
local t = cjson.decode(ARGV[3])
local nxt = t[status] and t[status][ARGV[1]]
if not nxt then return {'refused', status} end
redis.call('HSET', KEYS[1], 'status', nxt, 'updated', ARGV[2])
if nxt == 'running' and not redis.call('HGET', KEYS[1], 'started') then
  redis.call('HSET', KEYS[1], 'started', ARGV[2])
end
redis.call('RPUSH', KEYS[2], cjson.encode({t=tonumber(ARGV[2]), event=ARGV[1], from=status, to=nxt, note=ARGV[4]}))
redis.call('LTRIM', KEYS[2], -%d, -1)
return {'ok', nxt}
""" % EVENTS_KEPT

# KEYS: job, pending, state, lease, plan   ARGV: owner, now_ms, lease_ms
_CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then return {-1, status or 'missing'} end
local idx = redis.call('LPOP', KEYS[2])
if not idx then return {-2, status} end
redis.call('HSET', KEYS[3], idx, 'leased')
local token = redis.call('HINCRBY', KEYS[1], 'lease_seq', 1)
redis.call('HSET', KEYS[4], idx, ARGV[1] .. '|' .. (tonumber(ARGV[2]) + tonumber(ARGV[3])) .. '|' .. token)
return {tonumber(idx), token, redis.call('HGET', KEYS[5], idx)}
"""

# Shared tail: finish the job when every chunk is settled.
_SETTLE = """
local function settle(job, events, now, jt)
  local h = redis.call('HMGET', job, 'status', 'chunks_total', 'chunks_done', 'chunks_failed')
  local total, done, failed = tonumber(h[2]) or 0, tonumber(h[3]) or 0, tonumber(h[4]) or 0
  if h[1] ~= 'running' or done + failed < total then return h[1] end
  local ev = 'complete'
  if failed > 0 then ev = 'complete_with_errors' end
  local nxt = jt['running'][ev]
  redis.call('HSET', job, 'status', nxt, 'updated', now, 'finished', now)
  redis.call('RPUSH', events, cjson.encode({t=tonumber(now), event=ev, from='running', to=nxt, note=''}))
  return nxt
end
"""

# KEYS: job, state, lease, events, durations
# ARGV: idx, token, candles, rows, cache_hit, now_ms, duration_s, job transitions,
#       planned candles ('' = unknown)
_COMPLETE = _SETTLE + """
local lease = redis.call('HGET', KEYS[3], ARGV[1])
if not lease then return {'stale', ''} end
local token = string.match(lease, '|(%%d+)$')
if token ~= ARGV[2] then return {'stale', ''} end
redis.call('HSET', KEYS[2], ARGV[1], 'done')
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'chunks_done', 1)
redis.call('HINCRBY', KEYS[1], 'candles_done', tonumber(ARGV[3]))
redis.call('HINCRBY', KEYS[1], 'rows_written', tonumber(ARGV[4]))
redis.call('HINCRBY', KEYS[1], 'cache_hits', tonumber(ARGV[5]))
if ARGV[9] ~= '' then  -- candles added or removed since planning
  redis.call('HINCRBY', KEYS[1], 'candles_total', tonumber(ARGV[3]) - tonumber(ARGV[9]))
end
redis.call('HSET', KEYS[1], 'updated', ARGV[6])
redis.call('RPUSH', KEYS[5], ARGV[7] .. ':' .. ARGV[3])
redis.call('LTRIM', KEYS[5], -%d, -1)
return {'ok', settle(KEYS[1], KEYS[4], ARGV[6], cjson.decode(ARGV[8]))}
""" % DURATIONS_KEPT

# KEYS: job, state, lease, pending, attempts, errors, events, dlq, counters
# ARGV: idx, token, max_attempts, error, now_ms, job transitions, retryable(0/1),
#       category, dead-letter entry (JSON, attempts filled in here)
_FAIL = _SETTLE + """
local lease = redis.call('HGET', KEYS[3], ARGV[1])
if not lease then return {'stale', ''} end
local token = string.match(lease, '|(%d+)$')
if token ~= ARGV[2] then return {'stale', ''} end
redis.call('HDEL', KEYS[3], ARGV[1])
local attempts = redis.call('HINCRBY', KEYS[5], ARGV[1], 1)
redis.call('HSET', KEYS[6], ARGV[1], ARGV[4])
redis.call('HINCRBY', KEYS[1], 'errors', 1)
redis.call('HINCRBY', KEYS[9], 'errors:' .. ARGV[8], 1)
if ARGV[7] == '1' and attempts < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[2], ARGV[1], 'pending')
  redis.call('RPUSH', KEYS[4], ARGV[1])
  return {'retry', tostring(attempts)}
end
redis.call('HSET', KEYS[2], ARGV[1], 'failed')
redis.call('HINCRBY', KEYS[1], 'chunks_failed', 1)
local entry = cjson.decode(ARGV[9])
entry['attempts'] = attempts + (tonumber(entry['retries']) or 0)
redis.call('HSET', KEYS[8], entry['id'], cjson.encode(entry))
return {'failed', settle(KEYS[1], KEYS[7], ARGV[5], cjson.decode(ARGV[6]))}
"""

# KEYS: job, state, pending, attempts, dlq   ARGV: idx, dlq entry id
_REQUEUE = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= 'failed' then
  redis.call('HDEL', KEYS[5], ARGV[2])
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], 'pending')
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'chunks_failed', -1)
redis.call('HDEL', KEYS[5], ARGV[2])
return 1
"""

# KEYS: job, plan, state, lease, pending   ARGV: idx, token, mid_ms, left_rows, right_rows
_SPLIT = """
local lease = redis.call('HGET', KEYS[4], ARGV[1])
if not lease or string.match(lease, '|(%d+)$') ~= ARGV[2] then return -1 end
local a, b = string.match(redis.call('HGET', KEYS[2], ARGV[1]), '^(%-?%d+),(%-?%d+),')
local new = tonumber(redis.call('HINCRBY', KEYS[1], 'chunks_total', 1)) - 1
redis.call('HSET', KEYS[2], ARGV[1], a .. ',' .. ARGV[3] .. ',' .. ARGV[4])
redis.call('HSET', KEYS[2], new, ARGV[3] .. ',' .. b .. ',' .. ARGV[5])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], 'pending', new, 'pending')
redis.call('LPUSH', KEYS[5], new, ARGV[1])
return new
"""

# KEYS: lease   ARGV: idx, token, expires_ms
_RENEW = """
local lease = redis.call('HGET', KEYS[1], ARGV[1])
if not lease then return 0 end
local owner, token = string.match(lease, '^(.*)|%d+|(%d+)$')
if token ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], owner .. '|' .. ARGV[3] .. '|' .. token)
return 1
"""


# KEYS: spec key   ARGV: job id, key prefix of jobs, active states (JSON list)
# The key expires unless the job is created (create_job persists it), so a
# process that dies in between does not block the spec for good.
_CLAIM_SPEC = """
local other = redis.call('GET', KEYS[1])
if other then
  local status = redis.call('HGET', ARGV[2] .. other, 'status')
  if not status then return {other, 'being created'} end
  for _, s in ipairs(cjson.decode(ARGV[3])) do
    if status == s then return {other, status} end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', 30000)
return {'', ''}
"""

# KEYS: driver   ARGV: expected owner, new owner, ttl_ms
_TAKEOVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS: state, lease, pending   ARGV: idx, token ('' = any)
_RELEASE = """
local lease = redis.call('HGET', KEYS[2], ARGV[1])
if not lease then return 0 end
if ARGV[2] ~= '' and string.match(lease, '|(%d+)$') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], 'pending')
redis.call('LPUSH', KEYS[3], ARGV[1])
return 1
"""

# Leases back to pending: those expired before ARGV[2] ('expired'), or those
# of the owner ARGV[2] ('owner', a driver that is gone).
# KEYS: state, lease, pending   ARGV: 'expired' | 'owner', now_ms | owner
_RETURN_LEASES = """
local n = 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local owner, exp = string.match(all[i + 1], '^(.*)|(%d+)|%d+$')
  local hit
  if ARGV[1] == 'owner' then hit = owner == ARGV[2] else hit = tonumber(exp) < tonumber(ARGV[2]) end
  if hit then
    redis.call('HDEL', KEYS[2], all[i])
    redis.call('HSET', KEYS[1], all[i], 'pending')
    redis.call('LPUSH', KEYS[3], all[i])
    n = n + 1
  end
end
return n
"""


def now_ms() -> int:
    return int(time.time() * 1000)


class RedisState:
    """The job/chunk store.  All methods raise DependencyError naming the
    server when Redis cannot be reached."""

    def __init__(self, client: redis.Redis, prefix: str, ttl: int, where: str,
                 breaker: pybreaker.CircuitBreaker | None = None):
        self.r = client
        self.p = prefix
        self.ttl = ttl
        self.where = where
        self.breaker = breaker
        self._transition = self.r.register_script(_TRANSITION)
        self._claim = self.r.register_script(_CLAIM)
        self._complete = self.r.register_script(_COMPLETE)
        self._fail = self.r.register_script(_FAIL)
        self._release = self.r.register_script(_RELEASE)
        self._return_leases = self.r.register_script(_RETURN_LEASES)
        self._requeue = self.r.register_script(_REQUEUE)
        self._split = self.r.register_script(_SPLIT)
        self._renew = self.r.register_script(_RENEW)
        self._takeover = self.r.register_script(_TAKEOVER)
        self._claim_spec = self.r.register_script(_CLAIM_SPEC)

    # -- keys --------------------------------------------------------------

    def k(self, job: str, part: str = "") -> str:
        return f"{self.p}:job:{job}" + (f":{part}" if part else "")

    def _call(self, fn, *args, **kwargs):
        if self.breaker is None:
            return self._raw(fn, *args, **kwargs)
        return BREAKERS.call(self.breaker, self._raw, fn, *args, **kwargs)

    def _raw(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.exceptions.ConnectionError as exc:
            raise DependencyError(f"cannot reach Redis at {self.where}: {exc}", "redis") from None
        except redis.exceptions.RedisError as exc:
            raise DependencyError(f"Redis at {self.where} failed: {exc}", "redis") from None

    def ping(self) -> None:
        self._call(self.r.ping)

    # -- jobs --------------------------------------------------------------

    def create_job(self, job_id: str, fields: dict[str, Any], chunks: list[tuple[int, int, int]]) -> None:
        t = now_ms()
        base = {"status": "queued", "created": t, "updated": t, "chunks_total": len(chunks),
                "chunks_done": 0, "chunks_failed": 0, "candles_total": sum(c[2] for c in chunks),
                "candles_done": 0, "rows_written": 0, "cache_hits": 0, "errors": 0}
        base.update(fields)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.k(job_id), mapping={k: _enc(v) for k, v in base.items()})
        if chunks:
            pipe.hset(self.k(job_id, "plan"), mapping={i: f"{a},{b},{n}" for i, (a, b, n) in enumerate(chunks)})
            pipe.hset(self.k(job_id, "state"), mapping={i: "pending" for i in range(len(chunks))})
            pipe.rpush(self.k(job_id, "pending"), *range(len(chunks)))
        pipe.rpush(self.k(job_id, "events"), json.dumps({"t": t, "event": "create", "from": "", "to": "queued", "note": ""}))
        pipe.zadd(f"{self.p}:jobs", {job_id: t})
        if fields.get("spec_key"):
            pipe.persist(fields["spec_key"])
        self._call(pipe.execute)

    def spec_key(self, digest: str) -> str:
        return f"{self.p}:spec:{digest}"

    def claim_spec(self, digest: str, job_id: str) -> tuple[str, str] | None:
        """Register ``job_id`` as the one active job of a spec; or the active
        (job id, status) that already has it."""
        other, status = self._call(self._claim_spec, keys=[self.spec_key(digest)],
                                   args=[job_id, f"{self.p}:job:", json.dumps(sorted(ACTIVE_JOB_STATES))])
        return (other, status) if other else None

    def job(self, job_id: str) -> dict[str, Any]:
        h = self._call(self.r.hgetall, self.k(job_id))
        if not h:
            raise JobNotFound(f"no job {job_id!r}")
        return {k: _dec(k, v) for k, v in h.items()}

    def job_ids(self) -> list[str]:
        return list(self._call(self.r.zrange, f"{self.p}:jobs", 0, -1))

    def set_fields(self, job_id: str, **fields) -> None:
        self._call(self.r.hset, self.k(job_id), mapping={k: _enc(v) for k, v in fields.items()})

    def transition(self, job_id: str, event: str, note: str = "") -> str:
        status, value = self._call(self._transition, keys=[self.k(job_id), self.k(job_id, "events")],
                                   args=[event, now_ms(), _JOB_T, note])
        if status == "missing":
            raise JobNotFound(f"no job {job_id!r}")
        if status == "refused":
            allowed = ", ".join(JOB_TRANSITIONS[value]) or "nothing (it is final)"
            raise InvalidTransition(f"cannot {event} job {job_id}: it is {value} (allowed: {allowed})")
        if value in FINAL_JOB_STATES:
            self.expire_job(job_id)
        return value

    def expire_job(self, job_id: str) -> None:
        pipe = self.r.pipeline()
        for part in ("", "plan", "state", "pending", "lease", "attempts", "errors", "events", "durations"):
            pipe.expire(self.k(job_id, part), self.ttl)
        self._call(pipe.execute)

    def delete_job(self, job_id: str) -> None:
        dead = [e["id"] for e in self.dead_letters(job_id)]
        spec = self._call(self.r.hget, self.k(job_id), "spec_key")
        pipe = self.r.pipeline()
        if spec and self._call(self.r.get, spec) == job_id:
            pipe.delete(spec)
        if dead:
            pipe.hdel(f"{self.p}:dlq", *dead)
        for part in ("", "plan", "state", "pending", "lease", "attempts", "errors", "events",
                     "durations", "driver"):
            pipe.delete(self.k(job_id, part))
        pipe.zrem(f"{self.p}:jobs", job_id)
        self._call(pipe.execute)

    def events(self, job_id: str, last: int = 50) -> list[dict]:
        return [json.loads(e) for e in self._call(self.r.lrange, self.k(job_id, "events"), -last, -1)]

    def note(self, job_id: str, event: str, note: str) -> None:
        pipe = self.r.pipeline()
        pipe.rpush(self.k(job_id, "events"), json.dumps({"t": now_ms(), "event": event, "from": "", "to": "", "note": note}))
        pipe.ltrim(self.k(job_id, "events"), -EVENTS_KEPT, -1)
        self._call(pipe.execute)

    # -- driver ownership --------------------------------------------------

    def acquire_driver(self, job_id: str, owner: str, ttl_ms: int) -> str | None:
        """Become the job's driver unless a live one exists; returns the other owner if refused."""
        key = self.k(job_id, "driver")
        if self._call(self.r.set, key, owner, nx=True, px=ttl_ms):
            return None
        current = self._call(self.r.get, key)
        if current == owner:
            self._call(self.r.pexpire, key, ttl_ms)
            return None
        return current

    def renew_driver(self, job_id: str, owner: str, ttl_ms: int) -> bool:
        key = self.k(job_id, "driver")
        if self._call(self.r.get, key) == owner:
            return bool(self._call(self.r.pexpire, key, ttl_ms))
        return False

    def add_job_counts(self, job_id: str, **counts: int) -> None:
        """Add to counters kept in the job's hash (e.g. bars resolved)."""
        pipe = self.r.pipeline()
        for name, n in counts.items():
            pipe.hincrby(self.k(job_id), name, int(n))
        self._call(pipe.execute)
    def driver_owner(self, job_id: str) -> str | None:
        """The process holding the job's driver lock (None: no lock, or it expired)."""
        return self._call(self.r.get, self.k(job_id, "driver"))

    def driver_ttl_ms(self, job_id: str) -> int:
        """Milliseconds before the driver lock expires unless renewed (< 0: no lock)."""
        return int(self._call(self.r.pttl, self.k(job_id, "driver")))

    def release_driver(self, job_id: str, owner: str) -> None:
        key = self.k(job_id, "driver")
        if self._call(self.r.get, key) == owner:
            self._call(self.r.delete, key)

    # -- chunks ------------------------------------------------------------

    def plan(self, job_id: str) -> dict[int, tuple[int, int, int]]:
        raw = self._call(self.r.hgetall, self.k(job_id, "plan"))
        return {int(i): tuple(int(x) for x in v.split(",")) for i, v in raw.items()}

    def chunk_states(self, job_id: str) -> dict[int, str]:
        return {int(i): s for i, s in self._call(self.r.hgetall, self.k(job_id, "state")).items()}

    def chunk_errors(self, job_id: str) -> dict[int, str]:
        return {int(i): s for i, s in self._call(self.r.hgetall, self.k(job_id, "errors")).items()}

    def claim(self, job_id: str, owner: str, lease_ms: int
              ) -> tuple[int, int, tuple[int, int, int]] | str:
        """(chunk index, lease token, (start_ms, end_ms, candles)), or why
        not: 'empty' or the job status.  The range is read in the same step
        because a split may have changed it."""
        out = self._call(self._claim, keys=[self.k(job_id), self.k(job_id, "pending"),
                                            self.k(job_id, "state"), self.k(job_id, "lease"),
                                            self.k(job_id, "plan")],
                         args=[owner, now_ms(), lease_ms])
        if out[0] == -2:
            return "empty"
        if out[0] == -1:
            return out[1]
        return int(out[0]), int(out[1]), tuple(int(x) for x in out[2].split(","))

    def complete(self, job_id: str, idx: int, token: int, candles: int, rows: int,
                 cache_hit: bool, duration_s: float, planned: int | None = None) -> tuple[str, str]:
        k = self.k
        return tuple(self._call(self._complete,
                                keys=[k(job_id), k(job_id, "state"), k(job_id, "lease"),
                                      k(job_id, "events"), k(job_id, "durations")],
                                args=[idx, token, candles, rows, int(cache_hit), now_ms(),
                                      f"{duration_s:.6f}", _JOB_T,
                                      "" if planned is None else planned]))

    def fail(self, job_id: str, idx: int, token: int, error: str, max_attempts: int,
             retryable: bool = True, category: str = "transient",
             detail: dict[str, Any] | None = None) -> tuple[str, str]:
        """Record a failed attempt: back to pending while attempts remain and
        ``retryable``, else the chunk is failed and dead-lettered."""
        k = self.k
        start, end, _ = self.plan_entry(job_id, idx)
        entry = {"id": f"{job_id}:{idx}", "job_id": job_id, "chunk": idx, "start_ms": start,
                 "end_ms": end, "category": category, "message": error.splitlines()[0][:500],
                 "time_ms": now_ms(), **(detail or {})}
        return tuple(self._call(self._fail,
                                keys=[k(job_id), k(job_id, "state"), k(job_id, "lease"),
                                      k(job_id, "pending"), k(job_id, "attempts"),
                                      k(job_id, "errors"), k(job_id, "events"),
                                      f"{self.p}:dlq", f"{self.p}:counters"],
                                args=[idx, token, max_attempts, error[:2000], now_ms(), _JOB_T,
                                      "1" if retryable else "0", category, json.dumps(entry)]))

    def release(self, job_id: str, idx: int, token: int | None = None) -> bool:
        k = self.k
        return bool(self._call(self._release, keys=[k(job_id, "state"), k(job_id, "lease"), k(job_id, "pending")],
                               args=[idx, "" if token is None else token]))

    def expire_leases(self, job_id: str) -> int:
        k = self.k
        return int(self._call(self._return_leases,
                              keys=[k(job_id, "state"), k(job_id, "lease"), k(job_id, "pending")],
                              args=["expired", now_ms()]))

    def renew_lease(self, job_id: str, idx: int, token: int, lease_ms: int) -> bool:
        """Extend a lease that is still ours; False once it was taken back."""
        return bool(self._call(self._renew, keys=[self.k(job_id, "lease")],
                               args=[idx, token, now_ms() + lease_ms]))

    def leases(self, job_id: str) -> dict[int, int]:
        """Chunk index -> token of its current lease."""
        return {int(i): int(v.rsplit("|", 1)[1])
                for i, v in self._call(self.r.hgetall, self.k(job_id, "lease")).items()}

    def release_owner(self, job_id: str, owner: str) -> int:
        """Return every chunk leased by ``owner`` (a driver that is gone) to pending."""
        k = self.k
        return int(self._call(self._return_leases,
                              keys=[k(job_id, "state"), k(job_id, "lease"), k(job_id, "pending")],
                              args=["owner", owner]))

    def take_over_driver(self, job_id: str, dead: str, owner: str, ttl_ms: int) -> bool:
        return bool(self._call(self._takeover, keys=[self.k(job_id, "driver")],
                               args=[dead, owner, ttl_ms]))

    def split(self, job_id: str, idx: int, token: int, mid_ms: int, left: int, right: int) -> int | None:
        """Cut a leased chunk at ``mid_ms`` into two pending chunks; the new index."""
        k = self.k
        new = int(self._call(self._split, keys=[k(job_id), k(job_id, "plan"), k(job_id, "state"),
                                                k(job_id, "lease"), k(job_id, "pending")],
                             args=[idx, token, mid_ms, left, right]))
        return None if new < 0 else new

    def plan_entry(self, job_id: str, idx: int) -> tuple[int, int, int]:
        raw = self._call(self.r.hget, self.k(job_id, "plan"), idx)
        if raw is None:
            raise JobNotFound(f"job {job_id} has no chunk {idx}")
        return tuple(int(x) for x in raw.split(","))

    def requeue_failed(self, job_id: str) -> int:
        """Put given-up chunks back in the queue (a re-run after a fix)."""
        failed = [i for i, s in self.chunk_states(job_id).items() if s == "failed"]
        return sum(self.requeue(job_id, i) for i in failed)

    def requeue(self, job_id: str, idx: int) -> bool:
        """A failed chunk back to pending, its dead-letter entry removed."""
        k = self.k
        return bool(self._call(self._requeue, keys=[k(job_id), k(job_id, "state"), k(job_id, "pending"),
                                                    k(job_id, "attempts"), f"{self.p}:dlq"],
                               args=[idx, f"{job_id}:{idx}"]))

    # -- dead letters, counters, breakers ------------------------------------

    def dead_letters(self, job_id: str | None = None) -> list[dict[str, Any]]:
        entries = [json.loads(v) for v in self._call(self.r.hvals, f"{self.p}:dlq")]
        if job_id is not None:
            entries = [e for e in entries if e["job_id"] == job_id]
        return sorted(entries, key=lambda e: (e["time_ms"], e["job_id"], e["chunk"]))

    def dead_letter(self, entry_id: str) -> dict[str, Any]:
        raw = self._call(self.r.hget, f"{self.p}:dlq", entry_id)
        if raw is None:
            raise InvalidTransition(f"no dead-letter entry {entry_id!r} (see `gpubackfill dlq list`)")
        return json.loads(raw)

    def purge_dead_letters(self, ids: list[str]) -> int:
        return int(self._call(self.r.hdel, f"{self.p}:dlq", *ids)) if ids else 0

    def count(self, field: str, n: int = 1) -> None:
        self._call(self.r.hincrby, f"{self.p}:counters", field, n)

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._call(self.r.hgetall, f"{self.p}:counters").items()}

    def publish_breaker(self, name: str, state: dict[str, Any]) -> None:
        # Straight to Redis, not through the breakers: this reports on them.
        self.r.hset(f"{self.p}:breakers", name, json.dumps(state))

    def breakers(self) -> dict[str, dict[str, Any]]:
        return {k: json.loads(v) for k, v in self._call(self.r.hgetall, f"{self.p}:breakers").items()}

    def durations(self, job_id: str) -> list[tuple[float, int]]:
        out = []
        for item in self._call(self.r.lrange, self.k(job_id, "durations"), 0, -1):
            d, _, n = item.partition(":")
            out.append((float(d), int(n)))
        return out


_INT_FIELDS = {"created", "updated", "started", "finished", "chunks_total", "chunks_done",
               "chunks_failed", "candles_total", "candles_done", "rows_written", "cache_hits",
               "errors", "lease_seq", "chunk_size", "workers", "start_ms", "end_ms",
               "tb_resolved", "tb_ambiguous"}


def _enc(v: Any) -> str:
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def _dec(key: str, v: str) -> Any:
    if key in _INT_FIELDS:
        try:
            return int(v)
        except ValueError:
            return v
    if key in ("labels", "params", "spec"):
        return json.loads(v)
    if key == "force":
        return v == "1"
    return v
