-- A chunk's lease is "owner|expires_ms|token", "owner|expires_ms|token|run"
-- once its task has started it (start.lua): from then on only the task's
-- heartbeat renews it, never the driver that submitted it (keep.lua).
local function lease_parts(raw)
  if not raw then return nil end
  local owner, exp, token = string.match(raw, '^(.*)|(%d+)|(%d+)|run$')
  if owner then return owner, exp, token, true end
  owner, exp, token = string.match(raw, '^(.*)|(%d+)|(%d+)$')
  return owner, exp, token, false
end
-- The owner of chunk idx's lease when it carries token (nil: not ours),
-- and whether its task has started it.
local function our_lease(hash, idx, token)
  local owner, _, held, run = lease_parts(redis.call('HGET', hash, idx))
  if held == token then return owner, run end
  return nil
end
-- Extend a lease that is still ours until expires (``run``: mark it
-- started); false once taken back.
local function renew(hash, idx, token, expires, run)
  local owner, started = our_lease(hash, idx, token)
  if not owner then return false end
  local mark = ''
  if started or run then mark = '|run' end
  redis.call('HSET', hash, idx, owner .. '|' .. expires .. '|' .. token .. mark)
  return true
end
