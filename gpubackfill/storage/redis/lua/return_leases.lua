-- uses: lease, machine
-- Leases back to pending: those expired before ARGV[2] ('expired'), or those
-- of the owner ARGV[2] ('owner', a driver that is gone).
-- KEYS: job, state, lease, pending, plan   ARGV: 'expired' | 'owner', now_ms | owner, tables
local n = 0
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  local owner, exp = lease_parts(all[i + 1])
  local hit
  if ARGV[1] == 'owner' then hit = owner == ARGV[2] else hit = tonumber(exp) < tonumber(ARGV[2]) end
  if hit then
    unlease(KEYS[1], KEYS[2], KEYS[3], KEYS[5], all[i], 'expire')
    redis.call('LPUSH', KEYS[4], all[i])
    n = n + 1
  end
end
return n
