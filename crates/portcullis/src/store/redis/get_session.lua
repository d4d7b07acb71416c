local hash = ARGV[2]
local fam = redis.call('GET', sid_key(hash))
if not fam then return false end
local key = session_key(fam)
local f = redis.call('HMGET', key, 'id_hash', 'previous_id_hash', 'user_id')
if f[1] ~= hash and f[2] ~= hash then return false end
return {redis.call('HGETALL', key), redis.call('HGETALL', user_key(f[3] or ''))}
