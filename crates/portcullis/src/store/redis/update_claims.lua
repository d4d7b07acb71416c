local fam = ARGV[2]
if redis.call('EXISTS', session_key(fam)) == 0 then return 0 end
redis.call('HSET', session_key(fam), 'claims', ARGV[3], 'email_verified', ARGV[4])
announce_session(fam)
return 1
