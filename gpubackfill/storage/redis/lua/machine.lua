-- The transition tables arrive as the last argument (machine.TABLES);
-- every state change is looked up there.  A chunk's plan entry is its
-- segments, "series,start,end,rows" joined by ';'.
local T = cjson.decode(ARGV[#ARGV])
local function move(kind, cur, ev)
  local row = T[kind][cur or '']
  return row and row[ev]
end
local function segments(plan)
  local out = {}
  for seg in string.gmatch(plan or '', '[^;]+') do
    local s, a, b, n = string.match(seg, '^(%d+),(%-?%d+),(%-?%d+),(%-?%d+)')
    table.insert(out, {s, tonumber(a), tonumber(b), tonumber(n)})
  end
  return out
end
-- A job's per-series counters live in a hash of their own ("<series>:<counter>"),
-- so that the job's hash does not grow with its series.
local function series_key(job) return job .. ':series' end
-- The job's failed chunks, so that a run again finds them without reading
-- every chunk's state.
local function failed_key(job) return job .. ':failed' end
local function bump_series(job, plan, field, n)
  for _, seg in ipairs(segments(plan)) do
    redis.call('HINCRBY', series_key(job), seg[1] .. ':' .. field, n)
  end
end
-- A chunk leaves 'leased' by event ev: its lease, and the leased counts, go.
local function unlease(job, state, lease, plan, idx, ev)
  local nxt = move('chunk', redis.call('HGET', state, idx), ev)
  redis.call('HSET', state, idx, nxt)
  redis.call('HDEL', lease, idx)
  redis.call('HINCRBY', job, 'chunks_leased', -1)
  bump_series(job, redis.call('HGET', plan, idx), 'leased', -1)
  return nxt
end
-- The job's status and the one event ev leads to; or, when there is
-- none, nil and the reply that says why.
local function job_step(job, ev)
  local status = redis.call('HGET', job, 'status')
  if not status then return nil, {'missing', ''} end
  local nxt = move('job', status, ev)
  if not nxt then return nil, {'refused', status} end
  return status, nxt
end
-- The job moves from status to nxt by event ev, in its events.
local function enter(job, events, ev, status, nxt, now, note)
  redis.call('HSET', job, 'status', nxt, 'updated', now)
  if nxt == 'running' and not redis.call('HGET', job, 'started') then
    redis.call('HSET', job, 'started', now)
  end
  redis.call('RPUSH', events, cjson.encode({t=tonumber(now), event=ev, from=status, to=nxt, note=note}))
  redis.call('LTRIM', events, -EVENTS_KEPT, -1)
end
-- Finish the job when every chunk is settled (machine.settle_event).
local function settle(job, events, now)
  local h = redis.call('HMGET', job, 'status', 'chunks_total', 'chunks_done', 'chunks_failed')
  local total, done, failed = tonumber(h[2]) or 0, tonumber(h[3]) or 0, tonumber(h[4]) or 0
  if h[1] ~= 'running' or done + failed < total then return h[1] end
  local ev = T['settle']['clean']
  if failed > 0 then ev = T['settle']['with_errors'] end
  local nxt = move('job', 'running', ev)
  redis.call('HSET', job, 'status', nxt, 'updated', now, 'finished', now)
  redis.call('RPUSH', events, cjson.encode({t=tonumber(now), event=ev, from='running', to=nxt, note=''}))
  return nxt
end
