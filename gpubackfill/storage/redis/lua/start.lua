-- uses: lease
-- A chunk about to start in its task (chunk.run_chunks): 'ok' (lease
-- renewed and marked started: the driver no longer keeps it), 'lost'
-- (taken back while it waited), or, for a chunk that waited behind others
-- in its task (check = '1'), the job's status when it is no longer running
-- (the lease is kept: the caller releases it).  The task's first chunk
-- starts whatever the job's status, as a claimed chunk always has.
-- KEYS: lease hash, job hash   ARGV: chunk index, token, new deadline (ms), check
if not our_lease(KEYS[1], ARGV[1], ARGV[2]) then return 'lost' end
if ARGV[4] == '1' then
  local status = redis.call('HGET', KEYS[2], 'status')
  if status ~= 'running' then return status or 'missing' end
end
renew(KEYS[1], ARGV[1], ARGV[2], ARGV[3], true)
return 'ok'
