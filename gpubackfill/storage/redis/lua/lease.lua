-- A chunk's lease is "owner|expires_ms|token".
local function lease_parts(raw)
  if not raw then return nil end
  return string.match(raw, '^(.*)|(%d+)|(%d+)$')
end
-- The owner of chunk idx's lease when it carries token (nil: not ours).
local function our_lease(hash, idx, token)
  local owner, _, held = lease_parts(redis.call('HGET', hash, idx))
  if held == token then return owner end
  return nil
end
-- Extend a lease that is still ours until expires; false once taken back.
local function renew(hash, idx, token, expires)
  local owner = our_lease(hash, idx, token)
  if not owner then return false end
  redis.call('HSET', hash, idx, owner .. '|' .. expires .. '|' .. token)
  return true
end
