-- ARGV[4] name prefix -> {channel, subscription count, user count or -1, ...}
local prefix = ARGV[4]
local counts = {}
for _, n in ipairs(liveNodes()) do
  local kv = redis.call('HGETALL', P .. ':subs:' .. n)
  for i = 1, #kv, 2 do
    local c = kv[i]
    if string.sub(c, 1, #prefix) == prefix and string.sub(c, 1, 1) ~= '#' then
      counts[c] = (counts[c] or 0) + tonumber(kv[i + 1])
    end
  end
end
local out = {}
for c, count in pairs(counts) do
  local users = -1
  if string.sub(c, 1, 9) == 'presence-' then
    users = 0
    for _ in pairs(union(c)) do users = users + 1 end
  end
  table.insert(out, c); table.insert(out, count); table.insert(out, users)
end
return out
