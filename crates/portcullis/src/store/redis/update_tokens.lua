local fam = ARGV[2]
local key = session_key(fam)
local version = redis.call('HGET', key, 'token_version')
if not version or num(version, key .. ' token_version') ~= num(ARGV[3], 'expected version') then
  return 0
end
apply(key, 4)
redis.call('HINCRBY', key, 'token_version', 1)
index_session(fam)
announce_session(fam)
return 1
