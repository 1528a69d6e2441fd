-- uses: lease, machine, leases_back
-- KEYS: job, state, lease, pending, plan   ARGV: 'expired' | 'owner', now_ms | owner, tables
return leases_back(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2])
