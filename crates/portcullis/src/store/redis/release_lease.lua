local key = P .. ':lease:' .. ARGV[2]
if redis.call('HGET', key, 'holder') == ARGV[3] then redis.call('DEL', key) end
return 1
