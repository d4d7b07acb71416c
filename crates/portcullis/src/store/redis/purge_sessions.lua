local now = num(ARGV[2], 'now')
local fams = redis.call('ZRANGEBYSCORE', SESSIONS, '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local n = 0
for _, fam in ipairs(fams) do
  local key = session_key(fam)
  if redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', SESSIONS, fam)
  else
    local ends = session_end(key)
    if ends <= now then
      remove_session(fam)
      n = n + 1
    else
      redis.call('ZADD', SESSIONS, string.format('%d', ends), fam)
    end
  end
end
return {#fams, n}
