-- uses: lease, machine, writers, requeue_chunk, leases_back
-- The start of a run, in one step: take the driver lock; a job that can
-- run again becomes running with its writes claimed (start.lua) and its
-- failed chunks queued again when it had given up on them; a running job
-- (a driver taking over) claims its writes again; expired leases return;
-- a job whose chunks are all settled ends (settle).  Nothing changes when
-- it is refused ('missing', 'driver': another holds the lock, 'refused':
-- the job's status cannot run, 'writer': another job writes there).
-- KEYS: job, events, driver, state, lease, pending, plan, attempts, dlq
-- ARGV: job id, key prefix of jobs, writers key prefix, owner, ttl_ms, now_ms, tables
-- Reply: {'ok', status before, status after, the job's fields (flat)}.  The
-- pending chunks' plan entries are read after, in pages (``pending_plans``):
-- read here, a job of 100k chunks held Redis for seconds.
local job = KEYS[1]
local status = redis.call('HGET', job, 'status')
if not status then return {'missing'} end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[4] then
  return {'driver', holder, tostring(redis.call('PTTL', KEYS[3]))}
end
local h = redis.call('HMGET', job, 'label_set', 'series', 'start_ms', 'end_ms')
local ranges = {}
for _, s in ipairs(cjson.decode(h[2] or '[]')) do
  table.insert(ranges, {s[1] .. ' ' .. s[2], h[3], h[4]})
end
local wanted = '[]'  -- cjson writes an empty table as {}
if #ranges > 0 then wanted = cjson.encode(ranges) end
local writers = ARGV[3] .. (h[1] or '')
local restart = {queued=1, interrupted=1, failed=1, paused=1, completed_with_errors=1}
if restart[status] then
  local _, nxt = job_step(job, 'execute')
  if not nxt then return {'refused', status} end
  local other = claim_writer(writers, ARGV[1], ARGV[2], wanted, false)
  if other then return {'writer', other[1], other[2], other[3], status} end
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
  enter(job, KEYS[2], 'execute', status, nxt, ARGV[6], '')
  if status == 'completed_with_errors' or status == 'failed' then
    local states = redis.call('HGETALL', KEYS[4])
    for i = 1, #states, 2 do
      if states[i + 1] == 'failed' then
        requeue_chunk(job, KEYS[4], KEYS[6], KEYS[8], KEYS[9], KEYS[7], states[i], ARGV[1] .. ':' .. states[i])
      end
    end
  end
elseif status == 'running' then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
  claim_writer(writers, ARGV[1], ARGV[2], wanted, false)
else
  return {'refused', status}
end
leases_back(job, KEYS[4], KEYS[5], KEYS[6], KEYS[7], 'expired', ARGV[6])
local after = settle(job, KEYS[2], ARGV[6])
return {'ok', status, after, redis.call('HGETALL', job)}
