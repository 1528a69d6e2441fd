-- uses: lease
-- Leases of chunks that have not started: those of a task waiting in
-- Dask's queue (kept by the driver that submitted it), or of the chunks
-- waiting behind the running one in its task (kept by its heartbeat).  A
-- started chunk's lease is its own heartbeat's to keep.
-- KEYS: lease hash   ARGV: new deadline (ms), then chunk index, token, ...
-- Returns the positions (from 0) of the chunks not renewed: started, or
-- no longer ours.
local out = {}
for i = 2, #ARGV, 2 do
  local owner, run = our_lease(KEYS[1], ARGV[i], ARGV[i + 1])
  if owner and not run then
    renew(KEYS[1], ARGV[i], ARGV[i + 1], ARGV[1])
  else
    table.insert(out, (i - 2) / 2)
  end
end
return out
