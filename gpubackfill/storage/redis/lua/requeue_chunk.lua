-- A failed chunk back to pending, its dead-letter entry removed; 1 if it moved.
local function requeue_chunk(job, state, pending, attempts, dlq, plan, idx, entry)
  local nxt = move('chunk', redis.call('HGET', state, idx), 'requeue')
  redis.call('HDEL', dlq, entry)
  if not nxt then return 0 end
  redis.call('HSET', state, idx, nxt)
  redis.call('SREM', failed_key(job), idx)
  redis.call('RPUSH', pending, idx)
  redis.call('HDEL', attempts, idx)
  redis.call('HINCRBY', job, 'chunks_failed', -1)
  bump_series(job, redis.call('HGET', plan, idx), 'chunks_failed', -1)
  return 1
end
