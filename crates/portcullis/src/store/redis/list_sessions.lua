local uid = ARGV[5]
local fams
if uid ~= '' then
  fams = redis.call('SMEMBERS', user_sessions_key(uid))
else
  fams = redis.call('ZRANGEBYSCORE', SESSIONS, '(' .. ARGV[2], '+inf', 'LIMIT', ARGV[3], ARGV[4])
end
local out = {#fams}
for _, fam in ipairs(fams) do
  local key = session_key(fam)
  local owner = redis.call('HGET', key, 'user_id')
  if owner and (uid == '' or owner == uid) then
    out[#out + 1] = {redis.call('HGETALL', key), redis.call('HGETALL', user_key(owner))}
  end
end
return out
