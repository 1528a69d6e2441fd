-- A label set's writers hash: per series one entry per job,
-- "job,start,end" joined by ';'.  An entry holds while its job runs or has
-- chunks leased (a pausing job's last chunks still write); others are
-- dropped when the series is claimed again.
local function claim_writer(hash, me, prefix, wanted, check)
  local fields, values = {}, {}
  for _, w in ipairs(cjson.decode(wanted)) do
    local field, a, b = w[1], tonumber(w[2]), tonumber(w[3])
    local keep = {}
    for entry in string.gmatch(redis.call('HGET', hash, field) or '', '[^;]+') do
      local job, ea, eb = string.match(entry, '^([^,]+),(%-?%d+),(%-?%d+)$')
      if job and job ~= me then
        local status = redis.call('HGET', prefix .. job, 'status')
        local leased = tonumber(redis.call('HGET', prefix .. job, 'chunks_leased') or '0')
        if status == 'running' or leased > 0 then
          if tonumber(ea) < b and a < tonumber(eb) then
            return {job, status, field}
          end
          table.insert(keep, entry)
        end
      end
    end
    table.insert(keep, me .. ',' .. w[2] .. ',' .. w[3])
    table.insert(fields, field)
    table.insert(values, table.concat(keep, ';'))
  end
  if not check then
    for k = 1, #fields do redis.call('HSET', hash, fields[k], values[k]) end
  end
  return nil
end
