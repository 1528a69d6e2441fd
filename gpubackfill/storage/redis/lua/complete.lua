-- uses: lease, machine
-- The chunk, its job, its series and the deployment's totals, in one step.
-- KEYS: job, state, lease, events, durations, plan, stats, samples, records
-- ARGV: idx, token, now_ms, duration_s, bucket field, result (JSON), ttl, tables
if not our_lease(KEYS[3], ARGV[1], ARGV[2]) then return {'stale', ''} end
if not move('chunk', redis.call('HGET', KEYS[2], ARGV[1]), 'complete') then return {'stale', ''} end
local r = cjson.decode(ARGV[6])
unlease(KEYS[1], KEYS[2], KEYS[3], KEYS[6], ARGV[1], 'complete')
local job = KEYS[1]
-- Each segment names its instrument: decoding the job's series list here
-- cost every completion time in proportion to the job's series.
local names = nil
local candles, rows = 0, 0
for _, seg in ipairs(r['segments']) do
  local s, c, n, planned = seg[1], seg[2], seg[3], seg[4]
  candles = candles + c
  rows = rows + n
  redis.call('HINCRBY', series_key(job), s .. ':chunks_done', 1)
  redis.call('HINCRBY', series_key(job), s .. ':candles_done', c)
  if planned >= 0 then  -- candles added or removed since planning
    redis.call('HINCRBY', series_key(job), s .. ':candles_total', c - planned)
    redis.call('HINCRBY', job, 'candles_total', c - planned)
  end
  local inst = seg[5]
  if not inst then  -- a caller that did not name them
    names = names or cjson.decode(redis.call('HGET', job, 'series') or '[]')
    inst = names[s + 1] and names[s + 1][1]
  end
  if inst then redis.call('HINCRBY', KEYS[7], 'instrument:' .. inst, c) end
end
redis.call('HINCRBY', job, 'chunks_done', 1)
redis.call('HINCRBY', job, 'candles_done', candles)
redis.call('HINCRBY', job, 'rows_written', rows)
redis.call('HINCRBY', job, 'cache_hits', r['cache_hit'])
redis.call('HINCRBY', job, 'candles_skipped', r['skipped'])
for name, n in pairs(r['counters']) do redis.call('HINCRBY', job, name, n) end
for name, secs in pairs(r['stages']) do
  redis.call('HINCRBYFLOAT', job, 'stage:' .. name, secs)
end
redis.call('HSET', job, 'updated', ARGV[3])
redis.call('RPUSH', KEYS[5], ARGV[4] .. ':' .. candles)
redis.call('LTRIM', KEYS[5], -DURATIONS_KEPT, -1)
redis.call('HINCRBY', KEYS[7], 'chunks', 1)
redis.call('HINCRBY', KEYS[7], 'candles', candles)
redis.call('HINCRBY', KEYS[7], 'rows', rows)
redis.call('HINCRBY', KEYS[7], 'cache_hits', r['cache_hit'])
for _, label in ipairs(cjson.decode(redis.call('HGET', job, 'labels') or '[]')) do
  redis.call('HINCRBY', KEYS[7], 'labels:' .. label, rows)
end
redis.call('HINCRBY', KEYS[7], ARGV[5], 1)
redis.call('HINCRBYFLOAT', KEYS[7], 'chunk_seconds_sum', ARGV[4])
redis.call('HINCRBY', KEYS[7], 'chunk_seconds_count', 1)
-- Samples stay in finishing order with times that never go back: two
-- workers finishing at once may run this in the other order than their
-- clocks read (the later one then takes the earlier one's time).
local sample = r['sample']
if sample[2] > 0 then
  local finished = ARGV[3]
  local last = redis.call('LINDEX', KEYS[8], -1)
  if last then
    local last_t = string.match(last, '^(%d+),')
    if last_t and tonumber(last_t) > tonumber(finished) then finished = last_t end
  end
  redis.call('RPUSH', KEYS[8], finished .. ',' .. sample[1] .. ',' .. string.format('%d', sample[2]))
  redis.call('LTRIM', KEYS[8], -SAMPLES_KEPT, -1)
  redis.call('EXPIRE', KEYS[8], tonumber(ARGV[7]))
end
for _, rec in ipairs(r['records']) do redis.call('RPUSH', KEYS[9], rec) end
return {'ok', settle(job, KEYS[4], ARGV[3])}
