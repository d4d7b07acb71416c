local fam, new = ARGV[2], ARGV[4]
local key = session_key(fam)
local f = redis.call('HMGET', key, 'token_version', 'id_hash', 'previous_id_hash', 'current_seen')
if not f[1] or num(f[1], key .. ' token_version') ~= num(ARGV[3], 'expected version') then
  return 0
end
if not f[2] then corrupt(key .. ' id_hash') end
local keep = ARGV[7] == '1'
-- A lost rotation keeps the previous id only while the current one is still unseen.
if keep and (f[4] ~= '0' or not f[3]) then return 0 end
local other = redis.call('GET', sid_key(new))
if other and other ~= fam and redis.call('EXISTS', session_key(other)) == 1 then
  return redis.error_reply('a session id hash is already in use')
end
local previous = f[2]
if keep then
  -- The unseen current id (never delivered) stops finding the session.
  drop_sid(f[2], fam)
  previous = f[3]
elseif f[3] then
  -- The id two rotations back stops finding the session.
  drop_sid(f[3], fam)
end
redis.call('HSET', key, 'previous_id_hash', previous, 'previous_valid_until', ARGV[5],
  'previous_handover', ARGV[6], 'id_hash', new, 'current_seen', '0')
apply(key, 8)
redis.call('HINCRBY', key, 'token_version', 1)
redis.call('SET', sid_key(new), fam)
index_session(fam)
announce(message(fam, new, f[2]))
return 1
