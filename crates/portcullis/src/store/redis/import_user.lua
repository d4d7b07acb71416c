local by_sub = user_by_sub_key(ARGV[2])
if redis.call('EXISTS', user_key(ARGV[3])) == 1 or redis.call('EXISTS', by_sub) == 1 then
  return 0
end
apply(user_key(ARGV[3]), 4)
redis.call('SET', by_sub, ARGV[3])
redis.call('ZADD', USERS, 0, ARGV[3])
return 1
