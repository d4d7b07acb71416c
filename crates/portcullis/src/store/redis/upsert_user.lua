local by_sub = user_by_sub_key(ARGV[2])
local id = redis.call('GET', by_sub)
local existed = id ~= false
if id then
  local u = redis.call('HMGET', user_key(id), 'issuer', 'subject', 'kind')
  -- Identities from before kinds were kept have no `kind`: users.
  if u[1] ~= ARGV[4] or u[2] ~= ARGV[5] or (u[3] or 'user') ~= ARGV[7] then corrupt(by_sub) end
else
  id = ARGV[3]
  if redis.call('EXISTS', user_key(id)) == 1 then
    return redis.error_reply('user id already exists')
  end
  redis.call('HSET', user_key(id), 'id', id, 'issuer', ARGV[4], 'subject', ARGV[5], 'kind', ARGV[7], 'created_at', ARGV[6])
  redis.call('SET', by_sub, id)
  redis.call('ZADD', USERS, 0, id)
end
local before = redis.call('HMGET', user_key(id), 'email', 'name')
redis.call('HSET', user_key(id), 'updated_at', ARGV[6])
apply(user_key(id), 8)
local after = redis.call('HMGET', user_key(id), 'email', 'name')
-- G09: a changed profile is announced with the write.
if existed and (before[1] ~= after[1] or before[2] ~= after[2]) then
  announce('u ' .. id)
end
return redis.call('HGETALL', user_key(id))
