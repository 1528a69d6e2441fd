-- uses: machine
-- KEYS: job, events   ARGV: event, now_ms, note, tables
local status, nxt = job_step(KEYS[1], ARGV[1])
if not status then return nxt end
enter(KEYS[1], KEYS[2], ARGV[1], status, nxt, ARGV[2], ARGV[3])
return {'ok', nxt}
