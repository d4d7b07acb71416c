local issuer, sid = ARGV[2], ARGV[3]
local set = psid_key(issuer, sid)
local n = 0
for _, fam in ipairs(redis.call('SMEMBERS', set)) do
  local f = redis.call('HMGET', session_key(fam), 'user_id', 'provider_sid')
  if not f[1] then
    redis.call('SREM', set, fam)
  elseif f[2] == sid and redis.call('HGET', user_key(f[1]), 'issuer') == issuer then
    local text = remove_session(fam)
    if text then
      announce(text)
      n = n + 1
    end
  end
end
return n
