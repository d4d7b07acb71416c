local mode, fam, uid, hash, prev = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local key = session_key(fam)
if redis.call('EXISTS', key) == 1 then
  if mode == 'import' then return 0 end
  return redis.error_reply('session ' .. fam .. ' already exists')
end
local issuer = redis.call('HGET', user_key(uid), 'issuer')
if not issuer then
  return redis.error_reply('session ' .. fam .. ' names no stored user')
end
local hashes = {hash}
if prev ~= '' then hashes[2] = prev end
for _, h in ipairs(hashes) do
  local other = redis.call('GET', sid_key(h))
  if other and redis.call('EXISTS', session_key(other)) == 1 then
    return redis.error_reply('a session id hash is already in use')
  end
end
apply(key, 7)
for _, h in ipairs(hashes) do redis.call('SET', sid_key(h), fam) end
redis.call('SADD', user_sessions_key(uid), fam)
local psid = redis.call('HGET', key, 'provider_sid')
if psid then redis.call('SADD', psid_key(issuer, psid), fam) end
index_session(fam)
return 1
