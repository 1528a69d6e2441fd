-- uses: writers
-- KEYS: writers hash   ARGV: job id, key prefix of jobs, start_ms, end_ms, cleared (JSON), "check" to only look
return claim_writer(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6] == 'check') or {'', ''}
