-- uses: lease, machine
-- A leased one-segment chunk cut at mid_ms into two pending chunks.
-- KEYS: job, plan, state, lease, pending   ARGV: idx, token, mid_ms, left_rows, right_rows, tables
if not our_lease(KEYS[4], ARGV[1], ARGV[2]) then return -1 end
local segs = segments(redis.call('HGET', KEYS[2], ARGV[1]))
if #segs ~= 1 then return -1 end
local s, a, b = segs[1][1], segs[1][2], segs[1][3]
unlease(KEYS[1], KEYS[3], KEYS[4], KEYS[2], ARGV[1], 'split')
local new = tonumber(redis.call('HINCRBY', KEYS[1], 'chunks_total', 1)) - 1
redis.call('HINCRBY', series_key(KEYS[1]), s .. ':chunks_total', 1)
redis.call('HSET', KEYS[2], ARGV[1], s .. ',' .. a .. ',' .. ARGV[3] .. ',' .. ARGV[4])
redis.call('HSET', KEYS[2], new, s .. ',' .. ARGV[3] .. ',' .. b .. ',' .. ARGV[5])
redis.call('HSET', KEYS[3], new, 'pending')
redis.call('LPUSH', KEYS[5], new, ARGV[1])
return new
