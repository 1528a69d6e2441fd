-- uses: lease
-- KEYS: lease   ARGV: idx, token, expires_ms.  1: renewed; 0: no longer ours.
if renew(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 1 end
return 0
