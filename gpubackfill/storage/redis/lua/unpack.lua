-- uses: lease, machine
-- A leased pack of several segments broken up: the first segment stays the
-- chunk, every other becomes a new chunk; all pending.  (A bad series in a
-- pack then fails alone.)
-- KEYS: job, plan, state, lease, pending   ARGV: idx, token, tables
if not our_lease(KEYS[4], ARGV[1], ARGV[2]) then return -1 end
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
