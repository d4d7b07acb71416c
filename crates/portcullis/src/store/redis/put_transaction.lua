local state, binding, created, expires = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local per_browser, total = num(ARGV[6], 'limit'), num(ARGV[7], 'limit')
local key = tx_key(state)
if redis.call('EXISTS', key) == 1 then
  return redis.error_reply('login transaction already exists')
end
-- Expired ones go first (a bounded batch; purge_expired takes the rest); at the bound
-- the new one is refused, never a live one dropped (D01).
for _, old in ipairs(redis.call('ZRANGEBYSCORE', TX_EXPIRY, '-inf', created, 'LIMIT', 0, 1000)) do
  remove_tx(old)
end
if redis.call('ZCARD', TX_ALL) >= total then
  return 0
end
local ms = ttl_ms(num(expires, 'expires at'), num(created, 'created at'))
apply(key, 8)
redis.call('PEXPIRE', key, ms)
local by_binding = binding_key(binding)
redis.call('ZADD', by_binding, created, state)
extend(by_binding, ms)
redis.call('ZADD', TX_ALL, created, state)
extend(TX_ALL, ms)
redis.call('ZADD', TX_EXPIRY, expires, state)
extend(TX_EXPIRY, ms)
trim(by_binding, per_browser, state)
return 1
