local key = P .. ':replay:' .. ARGV[2]
local deadline = redis.call('GET', key)
if deadline and num(deadline, key) > num(ARGV[3], 'now') then return 0 end
redis.call('SET', key, ARGV[4], 'PX', ttl_ms(num(ARGV[4], 'until'), num(ARGV[3], 'now')))
return 1
