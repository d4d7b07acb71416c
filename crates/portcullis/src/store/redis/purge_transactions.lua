local now = num(ARGV[2], 'now')
local states = redis.call('ZRANGEBYSCORE', TX_EXPIRY, '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local n = 0
for _, state in ipairs(states) do
  local expires = redis.call('HGET', tx_key(state), 'expires_at')
  if not expires or num(expires, tx_key(state) .. ' expires_at') <= now then
    if remove_tx(state) then n = n + 1 end
  else
    redis.call('ZADD', TX_EXPIRY, expires, state)
  end
end
return {#states, n}
