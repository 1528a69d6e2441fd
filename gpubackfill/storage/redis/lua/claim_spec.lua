-- KEYS: spec key   ARGV: job id, key prefix of jobs, active states (JSON list)
-- The key expires unless the job is created (create_job persists it), so a
-- process that dies in between does not block the spec for good.
local other = redis.call('GET', KEYS[1])
if other then
  local status = redis.call('HGET', ARGV[2] .. other, 'status')
  if not status then return {other, 'being created'} end
  for _, s in ipairs(cjson.decode(ARGV[3])) do
    if status == s then return {other, status} end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', 30000)
return {'', ''}
