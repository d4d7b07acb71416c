local min = '-'
if ARGV[2] ~= '' then min = '(' .. ARGV[2] end
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYLEX', USERS, min, '+', 'LIMIT', 0, ARGV[3])) do
  local u = redis.call('HGETALL', user_key(id))
  if #u == 0 then corrupt(user_key(id)) end
  out[#out + 1] = u
end
return out
