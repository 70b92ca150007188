-- ARGV[4] channel -> {subscription count, user count or -1}
local c = ARGV[4]
local count = 0
for _, n in ipairs(liveNodes()) do
  count = count + tonumber(redis.call('HGET', P .. ':subs:' .. n, c) or '0')
end
local users = -1
if string.sub(c, 1, 9) == 'presence-' then
  users = 0
  for _ in pairs(union(c)) do users = users + 1 end
end
return {count, users}
