local key = P .. ':lease:' .. ARGV[2]
local l = redis.call('HMGET', key, 'holder', 'until')
if l[1] and l[1] ~= ARGV[3] and num(l[2], key .. ' until') > num(ARGV[4], 'now') then
  return 0
end
redis.call('HSET', key, 'holder', ARGV[3], 'until', ARGV[5])
redis.call('PEXPIRE', key, ttl_ms(num(ARGV[5], 'until'), num(ARGV[4], 'now')))
return 1
