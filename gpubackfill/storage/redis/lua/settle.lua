-- uses: machine
-- KEYS: job, events   ARGV: now_ms, tables
return settle(KEYS[1], KEYS[2], ARGV[1])
