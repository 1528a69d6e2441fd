-- uses: machine
-- KEYS: job, state, pending, attempts, dlq, plan   ARGV: idx, dlq entry id, tables
local nxt = move('chunk', redis.call('HGET', KEYS[2], ARGV[1]), 'requeue')
redis.call('HDEL', KEYS[5], ARGV[2])
if not nxt then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], nxt)
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'chunks_failed', -1)
bump_series(KEYS[1], redis.call('HGET', KEYS[6], ARGV[1]), 'chunks_failed', -1)
return 1
