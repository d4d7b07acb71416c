local fams = redis.call('ZRANGE', SESSIONS, 0, num(ARGV[2], 'batch') - 1)
local n = 0
for _, fam in ipairs(fams) do
  if remove_session(fam) then n = n + 1 end
end
if n > 0 then announce('a') end
return {#fams, n}
