-- A label set's writers hash: per job that writes the set, "start,end" (the
-- range every series of the job covers).  An entry holds while its job runs
-- or has chunks leased (a pausing job's last chunks still write); the
-- others are dropped as they are met.  Whether two jobs share a series is
-- decided by the caller from their series lists (a job's never changes), so
-- a claim reads as many entries as jobs write the set, whatever their series.
-- The first job but me, and but those in cleared (JSON list: jobs whose
-- series the caller found apart from mine), that writes over [a, b) now:
-- {job, status}; else nil, and unless check, my entry is set.
local function claim_writer(hash, me, prefix, a, b, cleared, check)
  local skip = {}
  for _, j in ipairs(cjson.decode(cleared)) do skip[j] = true end
  local all = redis.call('HGETALL', hash)
  for i = 1, #all, 2 do
    local job = all[i]
    if job ~= me then
      local status = redis.call('HGET', prefix .. job, 'status')
      local leased = tonumber(redis.call('HGET', prefix .. job, 'chunks_leased') or '0')
      if status == 'running' or leased > 0 then
        local ea, eb = string.match(all[i + 1], '^(%-?%d+),(%-?%d+)$')
        if not skip[job] and ea and tonumber(ea) < tonumber(b) and tonumber(a) < tonumber(eb) then
          return {job, status}
        end
      elseif not check then
        redis.call('HDEL', hash, job)
      end
    end
  end
  if not check then redis.call('HSET', hash, me, a .. ',' .. b) end
  return nil
end
