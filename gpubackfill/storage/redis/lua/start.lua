-- uses: machine, writers
-- Start running a job and claim its writes in one step, so that two jobs
-- over the same ranges can never both pass the claim before either runs.
-- KEYS: job, events, writers hash
-- ARGV: job id, key prefix of jobs, wanted (JSON), now_ms, tables
local status, nxt = job_step(KEYS[1], 'execute')
if not status then return nxt end
local other = claim_writer(KEYS[3], ARGV[1], ARGV[2], ARGV[3], false)
if other then return {'writer', other[1], other[2], other[3]} end
enter(KEYS[1], KEYS[2], 'execute', status, nxt, ARGV[4], '')
return {'ok', nxt}
