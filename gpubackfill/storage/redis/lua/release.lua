-- uses: lease, machine
-- KEYS: job, state, lease, pending, plan   ARGV: idx, token ('' = any), tables
local owner, _, token = lease_parts(redis.call('HGET', KEYS[3], ARGV[1]))
if not owner then return 0 end
if ARGV[2] ~= '' and token ~= ARGV[2] then return 0 end
unlease(KEYS[1], KEYS[2], KEYS[3], KEYS[5], ARGV[1], 'release')
redis.call('LPUSH', KEYS[4], ARGV[1])
return 1
