-- uses: lease, machine
-- KEYS: job, state, lease, pending, attempts, errors, events, dlq, counters, plan, stats
-- ARGV: idx, token, max_attempts, error, now_ms, retryable(0/1), category,
--       dead-letter entry (JSON, attempts filled in here), tables
if not our_lease(KEYS[3], ARGV[1], ARGV[2]) then return {'stale', ''} end
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
redis.call('SADD', failed_key(job), ARGV[1])
redis.call('HINCRBY', job, 'chunks_failed', 1)
bump_series(job, plan, 'chunks_failed', 1)
local entry = cjson.decode(ARGV[8])
entry['attempts'] = attempts + (tonumber(entry['retries']) or 0)
redis.call('HSET', KEYS[8], entry['id'], cjson.encode(entry))
return {nxt, settle(job, KEYS[7], ARGV[5])}
