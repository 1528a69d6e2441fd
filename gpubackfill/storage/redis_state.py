"""Job and chunk state in Redis, every transition one atomic Lua script.

Keys (prefix P, job id J)::

    P:jobs               zset   job ids by creation time
    P:job:J              hash   spec, status, counters, timestamps; per series i of
                                the job: s<i>:chunks_total, :chunks_done, :chunks_failed,
                                :leased, :candles_total, :candles_done, :errors
    P:job:J:plan         hash   chunk index -> its segments "series,start_ms,end_ms,rows;..."
    P:job:J:state        hash   chunk index -> pending|leased|done|failed
    P:job:J:pending      list   chunk indices waiting to be claimed
    P:job:J:lease        hash   chunk index -> "owner|expires_ms|token"
    P:job:J:attempts     hash   chunk index -> attempts so far
    P:job:J:writes       hash   chunk index -> token of the lease its last write was fenced under
    P:job:J:errors       hash   chunk index -> last error
    P:job:J:events       list   history, newest last (capped)
    P:job:J:durations    list   recent chunk durations (s) for the ETA
    P:job:J:samples      list   "finished_ms,duration_s,candles" per chunk, or per task of
                                chunks sharing one read and insert (for the ETA)
    P:job:J:driver       string the process driving the job (expires)
    P:dlq                hash   "J:chunk" -> dead-letter entry (JSON)
    P:counters           hash   retries:<category>, errors:<category> -> count
    P:breakers           hash   dependency -> last published breaker state (JSON)
    P:stats              hash   monotonic totals: chunks, candles, rows, cache hits,
                                failures, labels:<name>, instrument:<name>,
                                chunk_seconds histogram (bucket:<le>, sum, count)

The scripts take the transition tables of ``jobs.machine`` as JSON, so
Redis and the Python state machine cannot disagree.  A chunk's completion
records its whole ``ChunkResult`` in the same script.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import pybreaker
import redis

from ..errors import DependencyError, InvalidTransition, JobNotFound
from ..jobs.machine import ACTIVE_JOB_STATES, FINAL_JOB_STATES, JOB_TRANSITIONS, TABLES
from ..jobs.result import ChunkResult, Segment, encode_segments
from ..resilience import BREAKERS

EVENTS_KEPT = 500
DURATIONS_KEPT = 200
SAMPLES_KEPT = 200
# Chunk duration buckets (seconds): from cache hits (ms) to very large chunks.
CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# Shared head of every chunk script.  The transition tables arrive as the
# last argument (``machine.TABLES``); every state change is looked up there.
# A chunk's plan entry is its segments, "series,start,end,rows" joined by ';'.
_LIB = """
local T = cjson.decode(ARGV[#ARGV])
local function move(kind, cur, ev)
  local row = T[kind][cur or '']
  return row and row[ev]
end
local function segments(plan)
  local out = {}
  for seg in string.gmatch(plan or '', '[^;]+') do
    local s, a, b, n = string.match(seg, '^(%d+),(%-?%d+),(%-?%d+),(%-?%d+)')
    table.insert(out, {s, tonumber(a), tonumber(b), tonumber(n)})
  end
  return out
end
local function bump_series(job, plan, field, n)
  for _, seg in ipairs(segments(plan)) do
    redis.call('HINCRBY', job, 's' .. seg[1] .. ':' .. field, n)
  end
end
-- A chunk leaves 'leased' by event ev: its lease, and the leased counts, go.
local function unlease(job, state, lease, plan, idx, ev)
  local nxt = move('chunk', redis.call('HGET', state, idx), ev)
  redis.call('HSET', state, idx, nxt)
  redis.call('HDEL', lease, idx)
  redis.call('HINCRBY', job, 'chunks_leased', -1)
  bump_series(job, redis.call('HGET', plan, idx), 'leased', -1)
  return nxt
end
local function token_ok(lease, idx, token)
  local l = redis.call('HGET', lease, idx)
  return l and string.match(l, '|(%d+)$') == token
end
-- Finish the job when every chunk is settled (machine.settle_event).
local function settle(job, events, now)
  local h = redis.call('HMGET', job, 'status', 'chunks_total', 'chunks_done', 'chunks_failed')
  local total, done, failed = tonumber(h[2]) or 0, tonumber(h[3]) or 0, tonumber(h[4]) or 0
  if h[1] ~= 'running' or done + failed < total then return h[1] end
  local ev = T['settle']['clean']
  if failed > 0 then ev = T['settle']['with_errors'] end
  local nxt = move('job', 'running', ev)
  redis.call('HSET', job, 'status', nxt, 'updated', now, 'finished', now)
  redis.call('RPUSH', events, cjson.encode({t=tonumber(now), event=ev, from='running', to=nxt, note=''}))
  return nxt
end
"""

# KEYS: job, events   ARGV: event, now_ms, note, tables
_TRANSITION = _LIB + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
local nxt = move('job', status, ARGV[1])
if not nxt then return {'refused', status} end
redis.call('HSET', KEYS[1], 'status', nxt, 'updated', ARGV[2])
if nxt == 'running' and not redis.call('HGET', KEYS[1], 'started') then
  redis.call('HSET', KEYS[1], 'started', ARGV[2])
end
redis.call('RPUSH', KEYS[2], cjson.encode({t=tonumber(ARGV[2]), event=ARGV[1], from=status, to=nxt, note=ARGV[3]}))
redis.call('LTRIM', KEYS[2], -%d, -1)
return {'ok', nxt}
""" % EVENTS_KEPT  # noqa: UP031 - Lua source: {} are its tables

# KEYS: job, events   ARGV: now_ms, tables
_SETTLE = _LIB + """
return settle(KEYS[1], KEYS[2], ARGV[1])
"""

# KEYS: job, pending, state, lease, plan   ARGV: owner, now_ms, lease_ms, tables
_CLAIM = _LIB + """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then return {-1, status or 'missing'} end
local idx = redis.call('LPOP', KEYS[2])
if not idx then return {-2, status} end
redis.call('HSET', KEYS[3], idx, move('chunk', redis.call('HGET', KEYS[3], idx), 'claim'))
local token = redis.call('HINCRBY', KEYS[1], 'lease_seq', 1)
redis.call('HSET', KEYS[4], idx, ARGV[1] .. '|' .. (tonumber(ARGV[2]) + tonumber(ARGV[3])) .. '|' .. token)
redis.call('HINCRBY', KEYS[1], 'chunks_leased', 1)
local plan = redis.call('HGET', KEYS[5], idx)
bump_series(KEYS[1], plan, 'leased', 1)
-- A segment's 'fresh' hint (no label rows when planned) holds for its
-- first claim only: a later claim may follow a run that wrote part of it.
local spent, changed = {}, false
for seg in string.gmatch(plan, '[^;]+') do
  local _, commas = string.gsub(seg, ',', ',')
  if commas == 6 and string.sub(seg, -2) == ',1' then
    seg = string.sub(seg, 1, -2) .. '0'
    changed = true
  end
  table.insert(spent, seg)
end
if changed then redis.call('HSET', KEYS[5], idx, table.concat(spent, ';')) end
return {tonumber(idx), token, plan}
"""

# The chunk, its job, its series and the deployment's totals, in one step.
# KEYS: job, state, lease, events, durations, plan, stats, samples, records
# ARGV: idx, token, now_ms, duration_s, bucket field, result (JSON), ttl, tables
_COMPLETE = _LIB + """
if not token_ok(KEYS[3], ARGV[1], ARGV[2]) then return {'stale', ''} end
if not move('chunk', redis.call('HGET', KEYS[2], ARGV[1]), 'complete') then return {'stale', ''} end
local r = cjson.decode(ARGV[6])
local plan = redis.call('HGET', KEYS[6], ARGV[1])
unlease(KEYS[1], KEYS[2], KEYS[3], KEYS[6], ARGV[1], 'complete')
local job = KEYS[1]
local names = cjson.decode(redis.call('HGET', job, 'series') or '[]')
local candles, rows = 0, 0
for _, seg in ipairs(r['segments']) do
  local s, c, n, planned = seg[1], seg[2], seg[3], seg[4]
  candles = candles + c
  rows = rows + n
  redis.call('HINCRBY', job, 's' .. s .. ':chunks_done', 1)
  redis.call('HINCRBY', job, 's' .. s .. ':candles_done', c)
  if planned >= 0 then  -- candles added or removed since planning
    redis.call('HINCRBY', job, 's' .. s .. ':candles_total', c - planned)
    redis.call('HINCRBY', job, 'candles_total', c - planned)
  end
  local name = names[s + 1]
  if name then redis.call('HINCRBY', KEYS[7], 'instrument:' .. name[1], c) end
end
redis.call('HINCRBY', job, 'chunks_done', 1)
redis.call('HINCRBY', job, 'candles_done', candles)
redis.call('HINCRBY', job, 'rows_written', rows)
redis.call('HINCRBY', job, 'cache_hits', r['cache_hit'])
redis.call('HINCRBY', job, 'candles_skipped', r['skipped'])
redis.call('HINCRBY', job, 'tb_resolved', r['resolved'])
redis.call('HINCRBY', job, 'tb_ambiguous', r['ambiguous'])
for name, secs in pairs(r['stages']) do
  redis.call('HINCRBYFLOAT', job, 'stage:' .. name, secs)
end
redis.call('HSET', job, 'updated', ARGV[3])
redis.call('RPUSH', KEYS[5], ARGV[4] .. ':' .. candles)
redis.call('LTRIM', KEYS[5], -%d, -1)
redis.call('HINCRBY', KEYS[7], 'chunks', 1)
redis.call('HINCRBY', KEYS[7], 'candles', candles)
redis.call('HINCRBY', KEYS[7], 'rows', rows)
redis.call('HINCRBY', KEYS[7], 'cache_hits', r['cache_hit'])
for _, label in ipairs(cjson.decode(redis.call('HGET', job, 'labels') or '[]')) do
  redis.call('HINCRBY', KEYS[7], 'labels:' .. label, rows)
end
redis.call('HINCRBY', KEYS[7], ARGV[5], 1)
redis.call('HINCRBYFLOAT', KEYS[7], 'chunk_seconds_sum', ARGV[4])
redis.call('HINCRBY', KEYS[7], 'chunk_seconds_count', 1)
-- Samples stay in finishing order with times that never go back: two
-- workers finishing at once may run this in the other order than their
-- clocks read (the later one then takes the earlier one's time).
local sample = r['sample']
if sample[2] > 0 then
  local finished = ARGV[3]
  local last = redis.call('LINDEX', KEYS[8], -1)
  if last then
    local last_t = string.match(last, '^(%%d+),')
    if last_t and tonumber(last_t) > tonumber(finished) then finished = last_t end
  end
  redis.call('RPUSH', KEYS[8], finished .. ',' .. sample[1] .. ',' .. string.format('%%d', sample[2]))
  redis.call('LTRIM', KEYS[8], -%d, -1)
  redis.call('EXPIRE', KEYS[8], tonumber(ARGV[7]))
end
for _, rec in ipairs(r['records']) do redis.call('RPUSH', KEYS[9], rec) end
return {'ok', settle(job, KEYS[4], ARGV[3])}
""" % (DURATIONS_KEPT, SAMPLES_KEPT)  # noqa: UP031 - Lua source

# KEYS: job, state, lease, pending, attempts, errors, events, dlq, counters, plan, stats
# ARGV: idx, token, max_attempts, error, now_ms, retryable(0/1), category,
#       dead-letter entry (JSON, attempts filled in here), tables
_FAIL = _LIB + """
if not token_ok(KEYS[3], ARGV[1], ARGV[2]) then return {'stale', ''} end
local job = KEYS[1]
local plan = redis.call('HGET', KEYS[10], ARGV[1])
local attempts = redis.call('HINCRBY', KEYS[5], ARGV[1], 1)
redis.call('HSET', KEYS[6], ARGV[1], ARGV[4])
redis.call('HINCRBY', job, 'errors', 1)
bump_series(job, plan, 'errors', 1)
redis.call('HINCRBY', KEYS[9], 'errors:' .. ARGV[7], 1)
redis.call('HINCRBY', KEYS[11], 'chunk_failures', 1)
if ARGV[6] == '1' and attempts < tonumber(ARGV[3]) then
  unlease(job, KEYS[2], KEYS[3], KEYS[10], ARGV[1], 'retry')
  redis.call('RPUSH', KEYS[4], ARGV[1])
  return {'retry', tostring(attempts)}
end
local nxt = unlease(job, KEYS[2], KEYS[3], KEYS[10], ARGV[1], 'give_up')
redis.call('HINCRBY', job, 'chunks_failed', 1)
bump_series(job, plan, 'chunks_failed', 1)
local entry = cjson.decode(ARGV[8])
entry['attempts'] = attempts + (tonumber(entry['retries']) or 0)
redis.call('HSET', KEYS[8], entry['id'], cjson.encode(entry))
return {nxt, settle(job, KEYS[7], ARGV[5])}
"""

# KEYS: job, state, pending, attempts, dlq, plan   ARGV: idx, dlq entry id, tables
_REQUEUE = _LIB + """
local nxt = move('chunk', redis.call('HGET', KEYS[2], ARGV[1]), 'requeue')
redis.call('HDEL', KEYS[5], ARGV[2])
if not nxt then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], nxt)
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'chunks_failed', -1)
bump_series(KEYS[1], redis.call('HGET', KEYS[6], ARGV[1]), 'chunks_failed', -1)
return 1
"""

# A leased one-segment chunk cut at mid_ms into two pending chunks.
# KEYS: job, plan, state, lease, pending   ARGV: idx, token, mid_ms, left_rows, right_rows, tables
_SPLIT = _LIB + """
if not token_ok(KEYS[4], ARGV[1], ARGV[2]) then return -1 end
local segs = segments(redis.call('HGET', KEYS[2], ARGV[1]))
if #segs ~= 1 then return -1 end
local s, a, b = segs[1][1], segs[1][2], segs[1][3]
unlease(KEYS[1], KEYS[3], KEYS[4], KEYS[2], ARGV[1], 'split')
local new = tonumber(redis.call('HINCRBY', KEYS[1], 'chunks_total', 1)) - 1
redis.call('HINCRBY', KEYS[1], 's' .. s .. ':chunks_total', 1)
redis.call('HSET', KEYS[2], ARGV[1], s .. ',' .. a .. ',' .. ARGV[3] .. ',' .. ARGV[4])
redis.call('HSET', KEYS[2], new, s .. ',' .. ARGV[3] .. ',' .. b .. ',' .. ARGV[5])
redis.call('HSET', KEYS[3], new, 'pending')
redis.call('LPUSH', KEYS[5], new, ARGV[1])
return new
"""

# A leased pack of several segments broken up: the first segment stays the
# chunk, every other becomes a new chunk; all pending.  (A bad series in a
# pack then fails alone.)
# KEYS: job, plan, state, lease, pending   ARGV: idx, token, tables
_UNPACK = _LIB + """
if not token_ok(KEYS[4], ARGV[1], ARGV[2]) then return -1 end
local segs = segments(redis.call('HGET', KEYS[2], ARGV[1]))
if #segs < 2 then return -1 end
unlease(KEYS[1], KEYS[3], KEYS[4], KEYS[2], ARGV[1], 'split')
local function enc(s) return s[1] .. ',' .. s[2] .. ',' .. s[3] .. ',' .. s[4] end
redis.call('HSET', KEYS[2], ARGV[1], enc(segs[1]))
for k = 2, #segs do
  local new = tonumber(redis.call('HINCRBY', KEYS[1], 'chunks_total', 1)) - 1
  redis.call('HSET', KEYS[2], new, enc(segs[k]))
  redis.call('HSET', KEYS[3], new, 'pending')
  redis.call('LPUSH', KEYS[5], new)
end
redis.call('LPUSH', KEYS[5], ARGV[1])
return #segs - 1
"""

# KEYS: lease   ARGV: idx, token, expires_ms.  Returns 0 unless the lease
# is still ours; else renews it and goes on.
_RENEW_OR_0 = """
local lease = redis.call('HGET', KEYS[1], ARGV[1])
if not lease then return 0 end
local owner, token = string.match(lease, '^(.*)|%d+|(%d+)$')
if token ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], owner .. '|' .. ARGV[3] .. '|' .. token)
"""
_RENEW = _RENEW_OR_0 + "return 1\n"


# KEYS: lease, writes   ARGV: idx, token, expires_ms
# The fence before a chunk writes: its lease renewed if still ours, and
# whether a write was fenced under the same lease before.  0: not ours;
# 1: ours, the lease's first write; 2: ours, but a run under this lease
# reached its write already (Dask re-runs a task whose worker died, with
# the same leases), so rows of that run may be in the table.
_FENCE_WRITE = _RENEW_OR_0 + """
local prior = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], token)
if prior == token then return 2 end
return 1
"""


# KEYS: lease hash, job hash   ARGV: chunk index, token, new deadline (ms)
# A chunk that waited in its batch (chunk.run_chunks) before starting: 'ok'
# (lease renewed), 'lost' (taken back meanwhile) or the job's status when it
# is no longer running (the lease is kept: the caller releases it).
_RESUME = """
local lease = redis.call('HGET', KEYS[1], ARGV[1])
if not lease then return 'lost' end
local owner, token = string.match(lease, '^(.*)|%d+|(%d+)$')
if token ~= ARGV[2] then return 'lost' end
local status = redis.call('HGET', KEYS[2], 'status')
if status ~= 'running' then return status or 'missing' end
redis.call('HSET', KEYS[1], ARGV[1], owner .. '|' .. ARGV[3] .. '|' .. token)
return 'ok'
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

# A label set's writers hash: per series one entry per job,
# "job,start,end" joined by ';'.  An entry holds while its job runs or has
# chunks leased (a pausing job's last chunks still write); others are
# dropped when the series is claimed again.
_WRITERS = """
local function claim_writer(hash, me, prefix, wanted, check)
  local fields, values = {}, {}
  for _, w in ipairs(cjson.decode(wanted)) do
    local field, a, b = w[1], tonumber(w[2]), tonumber(w[3])
    local keep = {}
    for entry in string.gmatch(redis.call('HGET', hash, field) or '', '[^;]+') do
      local job, ea, eb = string.match(entry, '^([^,]+),(%-?%d+),(%-?%d+)$')
      if job and job ~= me then
        local status = redis.call('HGET', prefix .. job, 'status')
        local leased = tonumber(redis.call('HGET', prefix .. job, 'chunks_leased') or '0')
        if status == 'running' or leased > 0 then
          if tonumber(ea) < b and a < tonumber(eb) then
            return {job, status, field}
          end
          table.insert(keep, entry)
        end
      end
    end
    table.insert(keep, me .. ',' .. w[2] .. ',' .. w[3])
    table.insert(fields, field)
    table.insert(values, table.concat(keep, ';'))
  end
  if not check then
    for k = 1, #fields do redis.call('HSET', hash, fields[k], values[k]) end
  end
  return nil
end
"""

# KEYS: writers hash   ARGV: job id, key prefix of jobs, wanted (JSON), "check" to only look
_CLAIM_WRITER = _WRITERS + """
return claim_writer(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4] == 'check') or {'', '', ''}
"""

# Start running a job and claim its writes in one step, so that two jobs
# over the same ranges can never both pass the claim before either runs.
# KEYS: job, events, writers hash   ARGV: job id, key prefix of jobs, wanted
# (JSON), now_ms, tables
_START = _LIB + _WRITERS + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
local nxt = move('job', status, 'execute')
if not nxt then return {'refused', status} end
local other = claim_writer(KEYS[3], ARGV[1], ARGV[2], ARGV[3], false)
if other then return {'writer', other[1], other[2], other[3]} end
redis.call('HSET', KEYS[1], 'status', nxt, 'updated', ARGV[4])
if nxt == 'running' and not redis.call('HGET', KEYS[1], 'started') then
  redis.call('HSET', KEYS[1], 'started', ARGV[4])
end
redis.call('RPUSH', KEYS[2], cjson.encode({t=tonumber(ARGV[4]), event='execute', from=status, to=nxt, note=''}))
redis.call('LTRIM', KEYS[2], -%d, -1)
return {'ok', nxt}
""" % EVENTS_KEPT  # noqa: UP031 - Lua source: {} are its tables

# KEYS: driver   ARGV: expected owner, new owner, ttl_ms
_TAKEOVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS: job, state, lease, pending, plan   ARGV: idx, token ('' = any), tables
_RELEASE = _LIB + """
local lease = redis.call('HGET', KEYS[3], ARGV[1])
if not lease then return 0 end
if ARGV[2] ~= '' and string.match(lease, '|(%d+)$') ~= ARGV[2] then return 0 end
unlease(KEYS[1], KEYS[2], KEYS[3], KEYS[5], ARGV[1], 'release')
redis.call('LPUSH', KEYS[4], ARGV[1])
return 1
"""

# Leases back to pending: those expired before ARGV[2] ('expired'), or those
# of the owner ARGV[2] ('owner', a driver that is gone).
# KEYS: job, state, lease, pending, plan   ARGV: 'expired' | 'owner', now_ms | owner, tables
_RETURN_LEASES = _LIB + """
local n = 0
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  local owner, exp = string.match(all[i + 1], '^(.*)|(%d+)|%d+$')
  local hit
  if ARGV[1] == 'owner' then hit = owner == ARGV[2] else hit = tonumber(exp) < tonumber(ARGV[2]) end
  if hit then
    unlease(KEYS[1], KEYS[2], KEYS[3], KEYS[5], all[i], 'expire')
    redis.call('LPUSH', KEYS[4], all[i])
    n = n + 1
  end
end
return n
"""


def bucket_field(seconds: float) -> str:
    for b in CHUNK_BUCKETS:
        if seconds <= b:
            return f"bucket:{b:g}"
    return "bucket:+Inf"


def _wanted(ranges: list[tuple[str, str, int, int]]) -> str:
    return json.dumps([[f"{i} {g}", str(a), str(b)] for i, g, a, b in ranges])


def now_ms() -> int:
    return int(time.time() * 1000)


class RedisState:
    """The job/chunk store.  All methods raise DependencyError naming the
    server when Redis cannot be reached."""

    def __init__(self, client: redis.Redis, prefix: str, ttl: int, where: str,
                 breaker: pybreaker.CircuitBreaker | None = None):
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self.where = where
        self.breaker = breaker
        self._transition = self.client.register_script(_TRANSITION)
        self._claim = self.client.register_script(_CLAIM)
        self._complete = self.client.register_script(_COMPLETE)
        self._fail = self.client.register_script(_FAIL)
        self._release = self.client.register_script(_RELEASE)
        self._return_leases = self.client.register_script(_RETURN_LEASES)
        self._requeue = self.client.register_script(_REQUEUE)
        self._split = self.client.register_script(_SPLIT)
        self._renew = self.client.register_script(_RENEW)
        self._fence_write = self.client.register_script(_FENCE_WRITE)
        self._resume = self.client.register_script(_RESUME)
        self._settle = self.client.register_script(_SETTLE)
        self._unpack = self.client.register_script(_UNPACK)
        self._takeover = self.client.register_script(_TAKEOVER)
        self._claim_spec = self.client.register_script(_CLAIM_SPEC)
        self._claim_writer = self.client.register_script(_CLAIM_WRITER)
        self._start = self.client.register_script(_START)

    # -- keys --------------------------------------------------------------

    def key(self, job: str, part: str = "") -> str:
        return f"{self.prefix}:job:{job}" + (f":{part}" if part else "")

    def call(self, fn, *args, **kwargs):
        """Run a redis-py call through the breaker, mapping errors to DependencyError."""
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
        self.call(self.client.ping)

    # -- jobs --------------------------------------------------------------

    def create_job(self, job_id: str, fields: dict[str, Any],
                   chunks: Sequence[tuple[Segment, ...] | tuple[int, int, int]]) -> None:
        """Store a planned job, queued.  ``chunks``: each chunk's segments, in
        the order they are to be claimed (a bare (start, end, rows) is one
        segment of series 0)."""
        t = now_ms()
        plans = [(Segment(0, *c),) if isinstance(c[0], int) else tuple(c) for c in chunks]
        base: dict[str, Any] = {
            "status": "queued", "created": t, "updated": t, "chunks_total": len(plans),
            "chunks_done": 0, "chunks_failed": 0, "chunks_leased": 0,
            "candles_total": sum(s.rows for p in plans for s in p),
            "candles_done": 0, "candles_skipped": 0, "rows_written": 0, "cache_hits": 0, "errors": 0,
            "tb_resolved": 0, "tb_ambiguous": 0}
        for p in plans:
            for seg in p:
                base[f"s{seg.series}:chunks_total"] = base.get(f"s{seg.series}:chunks_total", 0) + 1
                base[f"s{seg.series}:candles_total"] = base.get(f"s{seg.series}:candles_total", 0) + seg.rows
        base.update(fields)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key(job_id), mapping={k: _enc(v) for k, v in base.items()})
        if plans:
            pipe.hset(self.key(job_id, "plan"), mapping={i: encode_segments(p) for i, p in enumerate(plans)})
            pipe.hset(self.key(job_id, "state"), mapping={i: "pending" for i in range(len(plans))})
            pipe.rpush(self.key(job_id, "pending"), *range(len(plans)))
        pipe.rpush(self.key(job_id, "events"),
                   json.dumps({"t": t, "event": "create", "from": "", "to": "queued", "note": ""}))
        pipe.zadd(f"{self.prefix}:jobs", {job_id: t})
        if fields.get("spec_key"):
            pipe.persist(fields["spec_key"])
        self.call(pipe.execute)

    def spec_key(self, digest: str) -> str:
        return f"{self.prefix}:spec:{digest}"

    def claim_spec(self, digest: str, job_id: str) -> tuple[str, str] | None:
        """Register ``job_id`` as the one active job of a spec; or the active
        (job id, status) that already has it."""
        other, status = self.call(self._claim_spec, keys=[self.spec_key(digest)],
                                   args=[job_id, f"{self.prefix}:job:", json.dumps(sorted(ACTIVE_JOB_STATES))])
        return (other, status) if other else None

    def claim_writer(self, set_id: str, job_id: str, ranges: list[tuple[str, str, int, int]],
                     check: bool = False) -> tuple[str, str, str] | None:
        """Register ``job_id`` as the writer of its series' ranges of a label
        set, unless a job that is running (or still has chunks leased)
        writes an overlapping range: then (that job, its status,
        "instrument granularity").  While a job holds its ranges no other
        job writes there, so a range without label rows stays so until it
        is written (``Segment.fresh``).  ``check``: only look."""
        other, status, series = self.call(
            self._claim_writer, keys=[self._writers_key(set_id)],
            args=[job_id, f"{self.prefix}:job:", _wanted(ranges), "check" if check else ""])
        return (other, status, series) if other else None

    def start_writing(self, job_id: str, set_id: str, ranges: list[tuple[str, str, int, int]]
                      ) -> tuple[str, tuple[str, str, str] | None]:
        """Move a job to running ('execute') and claim its writes in one
        atomic step: (new status, None), or (its status, the job that writes
        an overlapping range) when the claim is refused and nothing changed."""
        out = self.call(self._start, keys=[self.key(job_id), self.key(job_id, "events"),
                                           self._writers_key(set_id)],
                        args=[job_id, f"{self.prefix}:job:", _wanted(ranges), now_ms(), TABLES])
        if out[0] == "missing":
            raise JobNotFound(f"no job {job_id!r}")
        if out[0] == "refused":
            allowed = ", ".join(JOB_TRANSITIONS[out[1]]) or "nothing (it is final)"
            raise InvalidTransition(f"cannot execute job {job_id}: it is {out[1]} (allowed: {allowed})")
        if out[0] == "writer":
            return "", (out[1], out[2], out[3])
        return out[1], None

    def _writers_key(self, set_id: str) -> str:
        return f"{self.prefix}:writers:{set_id}"

    def set_plan_entries(self, job_id: str, entries: dict[int, tuple[Segment, ...]]) -> None:
        if entries:
            self.call(self.client.hset, self.key(job_id, "plan"),
                      mapping={i: encode_segments(segs) for i, segs in entries.items()})

    def job(self, job_id: str) -> dict[str, Any]:
        h = self.call(self.client.hgetall, self.key(job_id))
        if not h:
            raise JobNotFound(f"no job {job_id!r}")
        return {k: _dec(k, v) for k, v in h.items()}

    def job_ids(self) -> list[str]:
        return list(self.call(self.client.zrange, f"{self.prefix}:jobs", 0, -1))

    def job_exists(self, job_id: str) -> bool:
        return bool(self.call(self.client.exists, self.key(job_id)))

    def set_fields(self, job_id: str, **fields) -> None:
        self.call(self.client.hset, self.key(job_id), mapping={k: _enc(v) for k, v in fields.items()})

    def transition(self, job_id: str, event: str, note: str = "") -> str:
        status, value = self.call(self._transition, keys=[self.key(job_id), self.key(job_id, "events")],
                                   args=[event, now_ms(), note, TABLES])
        if status == "missing":
            raise JobNotFound(f"no job {job_id!r}")
        if status == "refused":
            allowed = ", ".join(JOB_TRANSITIONS[value]) or "nothing (it is final)"
            raise InvalidTransition(f"cannot {event} job {job_id}: it is {value} (allowed: {allowed})")
        if value in FINAL_JOB_STATES:
            self.expire_job(job_id)
        return value

    def settle(self, job_id: str) -> str:
        """End a running job whose chunks are all settled (the same rule the
        last chunk's completion applies); the status either way."""
        return str(self.call(self._settle, keys=[self.key(job_id), self.key(job_id, "events")],
                              args=[now_ms(), TABLES]))

    _PARTS = ("", "plan", "state", "pending", "lease", "attempts", "errors", "events", "durations",
              "samples", "records", "writes")

    def expire_job(self, job_id: str) -> None:
        pipe = self.client.pipeline()
        for part in self._PARTS:
            pipe.expire(self.key(job_id, part), self.ttl)
        self.call(pipe.execute)

    def delete_job(self, job_id: str) -> None:
        dead = [e["id"] for e in self.dead_letters(job_id)]
        spec = self.call(self.client.hget, self.key(job_id), "spec_key")
        pipe = self.client.pipeline()
        if spec and self.call(self.client.get, spec) == job_id:
            pipe.delete(spec)
        if dead:
            pipe.hdel(f"{self.prefix}:dlq", *dead)
        for part in self._PARTS + ("driver",):
            pipe.delete(self.key(job_id, part))
        pipe.zrem(f"{self.prefix}:jobs", job_id)
        self.call(pipe.execute)

    def events(self, job_id: str, last: int = 50) -> list[dict]:
        return [json.loads(e) for e in self.call(self.client.lrange, self.key(job_id, "events"), -last, -1)]

    def note(self, job_id: str, event: str, note: str) -> None:
        pipe = self.client.pipeline()
        pipe.rpush(self.key(job_id, "events"),
                   json.dumps({"t": now_ms(), "event": event, "from": "", "to": "", "note": note}))
        pipe.ltrim(self.key(job_id, "events"), -EVENTS_KEPT, -1)
        self.call(pipe.execute)

    # -- driver ownership --------------------------------------------------

    def acquire_driver(self, job_id: str, owner: str, ttl_ms: int) -> str | None:
        """Become the job's driver unless a live one exists; returns the other owner if refused."""
        key = self.key(job_id, "driver")
        if self.call(self.client.set, key, owner, nx=True, px=ttl_ms):
            return None
        current = self.call(self.client.get, key)
        if current == owner:
            self.call(self.client.pexpire, key, ttl_ms)
            return None
        return current

    def renew_driver(self, job_id: str, owner: str, ttl_ms: int) -> bool:
        key = self.key(job_id, "driver")
        if self.call(self.client.get, key) == owner:
            return bool(self.call(self.client.pexpire, key, ttl_ms))
        return False

    def driver_owner(self, job_id: str) -> str | None:
        """The process holding the job's driver lock (None: no lock, or it expired)."""
        return self.call(self.client.get, self.key(job_id, "driver"))

    def driver_ttl_ms(self, job_id: str) -> int:
        """Milliseconds before the driver lock expires unless renewed (< 0: no lock)."""
        return int(self.call(self.client.pttl, self.key(job_id, "driver")))

    def release_driver(self, job_id: str, owner: str) -> None:
        key = self.key(job_id, "driver")
        if self.call(self.client.get, key) == owner:
            self.call(self.client.delete, key)

    def take_over_driver(self, job_id: str, dead: str, owner: str, ttl_ms: int) -> bool:
        return bool(self.call(self._takeover, keys=[self.key(job_id, "driver")],
                               args=[dead, owner, ttl_ms]))

    # -- chunks ------------------------------------------------------------

    def plan(self, job_id: str) -> dict[int, tuple[Segment, ...]]:
        raw = self.call(self.client.hgetall, self.key(job_id, "plan"))
        return {int(i): Segment.decode_all(v) for i, v in raw.items()}

    def plan_entry(self, job_id: str, idx: int) -> tuple[Segment, ...]:
        raw = self.call(self.client.hget, self.key(job_id, "plan"), idx)
        if raw is None:
            raise JobNotFound(f"job {job_id} has no chunk {idx}")
        return Segment.decode_all(raw)

    def chunk_states(self, job_id: str) -> dict[int, str]:
        return {int(i): s for i, s in self.call(self.client.hgetall, self.key(job_id, "state")).items()}

    def chunk_errors(self, job_id: str) -> dict[int, str]:
        return {int(i): s for i, s in self.call(self.client.hgetall, self.key(job_id, "errors")).items()}

    def chunk_error_heads(self, job_id: str, n: int = 5) -> dict[int, str]:
        """First line of up to ``n`` chunks' last errors (HSCAN, not the whole hash)."""
        out: dict[int, str] = {}
        for i, v in self.call(self.client.hscan_iter, self.key(job_id, "errors"), count=n):
            out[int(i)] = v.splitlines()[0] if v else ""
            if len(out) >= n:
                break
        return out

    def claim(self, job_id: str, owner: str, lease_ms: int
              ) -> tuple[int, int, tuple[Segment, ...]] | str:
        """(chunk index, lease token, its segments), or why not: 'empty' or
        the job status.  The segments are read in the same step because a
        split may have changed them."""
        key = self.key
        out = self.call(self._claim, keys=[key(job_id), key(job_id, "pending"), key(job_id, "state"),
                                            key(job_id, "lease"), key(job_id, "plan")],
                         args=[owner, now_ms(), lease_ms, TABLES])
        if out[0] == -2:
            return "empty"
        if out[0] == -1:
            return out[1]
        return int(out[0]), int(out[1]), Segment.decode_all(out[2])

    def complete(self, job_id: str, idx: int, token: int, result: ChunkResult) -> tuple[str, str]:
        """Record a chunk's result and settle it, atomically (its job's and
        series' counters, the deployment's totals, the ETA sample).
        ('stale', '') when the lease is no longer ours."""
        key = self.key
        body = json.dumps({
            "segments": [[s.series, s.candles, s.rows, s.planned if s.planned else -1]
                         for s in result.segments],
            "cache_hit": int(result.cache_hit), "resolved": result.resolved,
            "skipped": sum(s.candles for s in result.segments if s.cached),
            "ambiguous": result.ambiguous,
            # an empty Lua table would encode as a list: always one key
            "stages": {"total": round(result.duration, 6),
                       **{k: round(v, 6) for k, v in result.stages.items()}},
            # strings, passed through as they are (Lua numbers are doubles)
            "records": [json.dumps(r) for r in result.records],
            # seconds as text: a double through cjson would print as 1.2e-05
            "sample": ([f"{result.duration:.6f}", result.candles] if result.sample is None
                       else [f"{result.sample[0]:.6f}", result.sample[1]])})
        return tuple(self.call(self._complete,
                                keys=[key(job_id), key(job_id, "state"), key(job_id, "lease"),
                                      key(job_id, "events"), key(job_id, "durations"), key(job_id, "plan"),
                                      f"{self.prefix}:stats", key(job_id, "samples"),
                                      key(job_id, "records")],
                                args=[idx, token, now_ms(), f"{result.duration:.6f}",
                                      bucket_field(result.duration), body, self.ttl, TABLES]))

    def records(self, job_id: str, limit: int = 10_000) -> list[tuple]:
        """The oldest manifest rows that chunks of the job recorded and no one
        has inserted into ClickHouse yet (``ChunkResult.records``)."""
        return [tuple(json.loads(r)) for r in self.call(self.client.lrange, self.key(job_id, "records"),
                                                         0, limit - 1)]

    def drop_records(self, job_id: str, n: int) -> None:
        """Forget the oldest ``n`` manifest rows (inserted)."""
        self.call(self.client.ltrim, self.key(job_id, "records"), n, -1)

    def fail(self, job_id: str, idx: int, token: int, error: str, max_attempts: int,
             retryable: bool = True, category: str = "transient",
             detail: dict[str, Any] | None = None) -> tuple[str, str]:
        """Record a failed attempt: back to pending while attempts remain and
        ``retryable``, else the chunk is failed and dead-lettered."""
        key = self.key
        segs = self.plan_entry(job_id, idx)
        entry = {"id": f"{job_id}:{idx}", "job_id": job_id, "chunk": idx,
                 "start_ms": min(s.start_ms for s in segs), "end_ms": max(s.end_ms for s in segs),
                 "category": category, "message": error.splitlines()[0][:500] if error else "",
                 "time_ms": now_ms(), **(detail or {})}
        if len(segs) > 1 or segs[0].series:
            entry["series"] = sorted({s.series for s in segs})
        return tuple(self.call(self._fail,
                                keys=[key(job_id), key(job_id, "state"), key(job_id, "lease"),
                                      key(job_id, "pending"), key(job_id, "attempts"),
                                      key(job_id, "errors"), key(job_id, "events"),
                                      f"{self.prefix}:dlq", f"{self.prefix}:counters", key(job_id, "plan"),
                                      f"{self.prefix}:stats"],
                                args=[idx, token, max_attempts, error[:2000], now_ms(),
                                      "1" if retryable else "0", category, json.dumps(entry), TABLES]))

    def _lease_keys(self, job_id: str) -> list[str]:
        key = self.key
        return [key(job_id), key(job_id, "state"), key(job_id, "lease"), key(job_id, "pending"), key(job_id, "plan")]

    def release(self, job_id: str, idx: int, token: int | None = None) -> bool:
        return bool(self.call(self._release, keys=self._lease_keys(job_id),
                               args=[idx, "" if token is None else token, TABLES]))

    def expire_leases(self, job_id: str) -> int:
        return int(self.call(self._return_leases, keys=self._lease_keys(job_id),
                              args=["expired", now_ms(), TABLES]))

    def release_owner(self, job_id: str, owner: str) -> int:
        """Return every chunk leased by ``owner`` (a driver that is gone) to pending."""
        return int(self.call(self._return_leases, keys=self._lease_keys(job_id),
                              args=["owner", owner, TABLES]))

    def renew_lease(self, job_id: str, idx: int, token: int, lease_ms: int) -> bool:
        """Extend a lease that is still ours; False once it was taken back."""
        return bool(self.call(self._renew, keys=[self.key(job_id, "lease")],
                               args=[idx, token, now_ms() + lease_ms]))

    def fence_write(self, job_id: str, idx: int, token: int, lease_ms: int) -> int:
        """Right before a chunk writes: renew its lease if still ours.  0: not
        ours; 1: ours, and the lease's first write; 2: ours, but a run under
        the same lease reached its write before (its rows may be there)."""
        return int(self.call(self._fence_write, keys=[self.key(job_id, "lease"), self.key(job_id, "writes")],
                             args=[idx, token, now_ms() + lease_ms]))

    def resume_lease(self, job_id: str, idx: int, token: int, lease_ms: int) -> str:
        """Before a chunk that waited behind others in its batch starts: renew
        its lease if it is still ours and the job still running.  'ok',
        'lost', or the job's status (the lease then stays to be released)."""
        return str(self.call(self._resume, keys=[self.key(job_id, "lease"), self.key(job_id)],
                             args=[idx, token, now_ms() + lease_ms]))

    def leases(self, job_id: str) -> dict[int, int]:
        """Chunk index -> token of its current lease."""
        return {int(i): int(v.rsplit("|", 1)[1])
                for i, v in self.call(self.client.hgetall, self.key(job_id, "lease")).items()}

    def split(self, job_id: str, idx: int, token: int, mid_ms: int, left: int, right: int) -> int | None:
        """Cut a leased one-segment chunk at ``mid_ms`` into two pending chunks; the new index."""
        key = self.key
        new = int(self.call(self._split, keys=[key(job_id), key(job_id, "plan"), key(job_id, "state"),
                                                key(job_id, "lease"), key(job_id, "pending")],
                             args=[idx, token, mid_ms, left, right, TABLES]))
        return None if new < 0 else new

    def unpack(self, job_id: str, idx: int, token: int) -> int:
        """Break a leased pack into one chunk per segment, all pending; the
        number of chunks added (0: not ours, or not a pack)."""
        key = self.key
        n = int(self.call(self._unpack, keys=[key(job_id), key(job_id, "plan"), key(job_id, "state"),
                                              key(job_id, "lease"), key(job_id, "pending")],
                          args=[idx, token, TABLES]))
        return max(n, 0)

    def requeue_failed(self, job_id: str) -> int:
        """Put given-up chunks back in the queue (a re-run after a fix)."""
        failed = [i for i, s in self.chunk_states(job_id).items() if s == "failed"]
        return sum(self.requeue(job_id, i) for i in failed)

    def requeue(self, job_id: str, idx: int) -> bool:
        """A failed chunk back to pending, its dead-letter entry removed."""
        key = self.key
        return bool(self.call(self._requeue, keys=[key(job_id), key(job_id, "state"), key(job_id, "pending"),
                                                    key(job_id, "attempts"), f"{self.prefix}:dlq",
                                                    key(job_id, "plan")],
                               args=[idx, f"{job_id}:{idx}", TABLES]))

    # -- dead letters, counters, breakers ------------------------------------

    def dead_letters(self, job_id: str | None = None) -> list[dict[str, Any]]:
        entries = [json.loads(v) for v in self.call(self.client.hvals, f"{self.prefix}:dlq")]
        if job_id is not None:
            entries = [e for e in entries if e["job_id"] == job_id]
        return sorted(entries, key=lambda e: (e["time_ms"], e["job_id"], e["chunk"]))

    def dead_letter(self, entry_id: str) -> dict[str, Any]:
        raw = self.call(self.client.hget, f"{self.prefix}:dlq", entry_id)
        if raw is None:
            raise InvalidTransition(f"no dead-letter entry {entry_id!r} (see `gpubackfill dlq list`)")
        return json.loads(raw)

    def purge_dead_letters(self, ids: list[str]) -> int:
        return int(self.call(self.client.hdel, f"{self.prefix}:dlq", *ids)) if ids else 0

    def count(self, field: str, n: int = 1) -> None:
        self.call(self.client.hincrby, f"{self.prefix}:counters", field, n)

    def counters(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.call(self.client.hgetall, f"{self.prefix}:counters").items()}

    def publish_breaker(self, name: str, state: dict[str, Any]) -> None:
        # Straight to Redis, not through the breakers: this reports on them.
        self.client.hset(f"{self.prefix}:breakers", name, json.dumps(state))

    def breakers(self) -> dict[str, dict[str, Any]]:
        return {k: json.loads(v) for k, v in self.call(self.client.hgetall, f"{self.prefix}:breakers").items()}

    def durations(self, job_id: str) -> list[tuple[float, int]]:
        out = []
        for item in self.call(self.client.lrange, self.key(job_id, "durations"), 0, -1):
            d, _, n = item.partition(":")
            out.append((float(d), int(n)))
        return out


_INT_FIELDS = {"created", "updated", "started", "finished", "chunks_total", "chunks_done",
               "chunks_failed", "chunks_leased", "candles_total", "candles_done", "rows_written", "cache_hits",
               "errors", "lease_seq", "chunk_size", "workers", "start_ms", "end_ms",
               "tb_resolved", "tb_ambiguous", "candles_skipped"}


def _enc(v: Any) -> str:
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def _dec(key: str, v: str) -> Any:
    if key.startswith("stage:"):
        return float(v)
    if key in _INT_FIELDS or (key[:1] == "s" and ":" in key):
        try:
            return int(v)
        except ValueError:
            return v
    if key in ("labels", "params", "spec", "series", "skipped", "instruments", "granularities"):
        return json.loads(v)
    if key == "force":
        return v == "1"
    return v
