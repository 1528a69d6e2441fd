-- Leases back to pending: those expired before arg ('expired', arg: now_ms),
-- or those of the owner arg ('owner', a driver that is gone); how many.
local function leases_back(job, state, lease, pending, plan, mode, arg)
  local n = 0
  local all = redis.call('HGETALL', lease)
  for i = 1, #all, 2 do
    local owner, exp = lease_parts(all[i + 1])
    local hit
    if mode == 'owner' then hit = owner == arg else hit = tonumber(exp) < tonumber(arg) end
    if hit then
      unlease(job, state, lease, plan, all[i], 'expire')
      redis.call('LPUSH', pending, all[i])
      n = n + 1
    end
  end
  return n
end
