local fam = ARGV[2]
local key = session_key(fam)
local f = redis.call('HMGET', key, 'last_seen_at', 'idle_expires_at', 'id_hash', 'current_seen', 'previous_id_hash')
if not f[3] then return 0 end
local later_seen = num(ARGV[3], 'last seen') > num(f[1], key .. ' last_seen_at')
local later_idle = num(ARGV[4], 'idle deadline') > num(f[2], key .. ' idle_expires_at')
if later_seen then redis.call('HSET', key, 'last_seen_at', ARGV[3]) end
if later_idle then redis.call('HSET', key, 'idle_expires_at', ARGV[4]) end
-- The first sighting of a rotated id decides the theft rule: announced.
if ARGV[5] ~= '' and ARGV[5] == f[3] and f[4] == '0' then
  redis.call('HSET', key, 'current_seen', '1')
  announce(message(fam, f[3], f[5]))
end
index_session(fam)
return 1
