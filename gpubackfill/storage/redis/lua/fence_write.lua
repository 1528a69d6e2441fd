-- uses: lease
-- The fence before a chunk writes: its lease renewed if still ours, and
-- whether a write was fenced under the same lease before.  0: not ours;
-- 1: ours, the lease's first write; 2: ours, but a run under this lease
-- reached its write already (Dask re-runs a task whose worker died, with
-- the same leases), so rows of that run may be in the table.
-- KEYS: lease, writes   ARGV: idx, token, expires_ms
if not renew(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
local prior = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if prior == ARGV[2] then return 2 end
return 1
