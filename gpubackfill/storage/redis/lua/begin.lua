-- uses: lease, machine, writers, requeue_chunk, leases_back
-- The start of a run, in one step: take the driver lock; a job that can
-- run again becomes running with its writes claimed (start.lua) and its
-- failed chunks queued again when it had given up on them; a running job
-- (a driver taking over) claims its writes again; expired leases return;
-- a job whose chunks are all settled ends (settle).  Nothing changes when
-- it is refused ('missing', 'driver': another holds the lock, 'refused':
-- the job's status cannot run, 'writer': another job writes there).
-- KEYS: job, events, driver, state, lease, pending, plan, attempts, dlq
-- ARGV: job id, key prefix of jobs, writers key prefix, owner, ttl_ms, now_ms,
--       cleared (JSON: jobs the caller found to share no series with this one), tables
-- Reply: {'ok', status before, status after}; or
-- {'writer', job, its status, '', status}: a job not cleared writes the label
-- set over an overlapping range (the caller compares their series, and
-- clears it or refuses).  The
-- job's fields (its series list among them) and the pending chunks' plan
-- entries are read after, the entries in pages (``pending_plans``): read
-- here, a job of 100k chunks held Redis for seconds.
local job = KEYS[1]
local status = redis.call('HGET', job, 'status')
if not status then return {'missing'} end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[4] then
  return {'driver', holder, tostring(redis.call('PTTL', KEYS[3]))}
end
local h = redis.call('HMGET', job, 'label_set', 'start_ms', 'end_ms')
local writers = ARGV[3] .. (h[1] or '')
local restart = {queued=1, interrupted=1, failed=1, paused=1, completed_with_errors=1}
if restart[status] then
  local _, nxt = job_step(job, 'execute')
  if not nxt then return {'refused', status} end
  local other = claim_writer(writers, ARGV[1], ARGV[2], h[2] or '0', h[3] or '0', ARGV[7], false)
  if other then return {'writer', other[1], other[2], '', status} end
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
  enter(job, KEYS[2], 'execute', status, nxt, ARGV[6], '')
  if status == 'completed_with_errors' or status == 'failed' then
    local failed = redis.call('SMEMBERS', failed_key(job))
    if #failed == 0 and tonumber(redis.call('HGET', job, 'chunks_failed') or '0') > 0 then
      -- failed before the set was kept: the chunks' states say which
      local states = redis.call('HGETALL', KEYS[4])
      for i = 1, #states, 2 do
        if states[i + 1] == 'failed' then table.insert(failed, states[i]) end
      end
    end
    for _, idx in ipairs(failed) do
      requeue_chunk(job, KEYS[4], KEYS[6], KEYS[8], KEYS[9], KEYS[7], idx, ARGV[1] .. ':' .. idx)
    end
  end
elseif status == 'running' then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
  redis.call('HSET', writers, ARGV[1], (h[2] or '0') .. ',' .. (h[3] or '0'))
else
  return {'refused', status}
end
leases_back(job, KEYS[4], KEYS[5], KEYS[6], KEYS[7], 'expired', ARGV[6])
local after = settle(job, KEYS[2], ARGV[6])
return {'ok', status, after}
