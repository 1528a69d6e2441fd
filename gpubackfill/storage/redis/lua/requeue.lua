-- uses: machine, requeue_chunk
-- KEYS: job, state, pending, attempts, dlq, plan   ARGV: idx, dlq entry id, tables
return requeue_chunk(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1], ARGV[2])
