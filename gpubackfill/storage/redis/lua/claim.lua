-- uses: machine
-- KEYS: job, pending, state, lease, plan   ARGV: owner, now_ms, lease_ms, tables
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then return {-1, status or 'missing'} end
local idx = redis.call('LPOP', KEYS[2])
if not idx then return {-2, status} end
redis.call('HSET', KEYS[3], idx, move('chunk', redis.call('HGET', KEYS[3], idx), 'claim'))
local token = redis.call('HINCRBY', KEYS[1], 'lease_seq', 1)
redis.call('HSET', KEYS[4], idx, ARGV[1] .. '|' .. (tonumber(ARGV[2]) + tonumber(ARGV[3])) .. '|' .. token)
redis.call('HINCRBY', KEYS[1], 'chunks_leased', 1)
local plan = redis.call('HGET', KEYS[5], idx)
bump_series(KEYS[1], plan, 'leased', 1)
-- A segment's 'fresh' hint (no label rows when planned) holds for its
-- first claim only: a later claim may follow a run that wrote part of it.
local spent, changed = {}, false
for seg in string.gmatch(plan, '[^;]+') do
  local _, commas = string.gsub(seg, ',', ',')
  if commas == 6 and string.sub(seg, -2) == ',1' then
    seg = string.sub(seg, 1, -2) .. '0'
    changed = true
  end
  table.insert(spent, seg)
end
if changed then redis.call('HSET', KEYS[5], idx, table.concat(spent, ';')) end
return {tonumber(idx), token, plan}
