local by_sub = user_by_sub_key(ARGV[2])
local uid = redis.call('GET', by_sub)
if not uid then return 0 end
local u = redis.call('HMGET', user_key(uid), 'issuer', 'subject')
if u[1] ~= ARGV[3] or u[2] ~= ARGV[4] then corrupt(by_sub) end
return remove_user_sessions(uid)
