-- ARGV[4] JSON {"subs": {channel: n}, "pres": {channel: {user: info}}}, ARGV[5] "1" to
-- retire this node -> {absent, {"+"|"-", channel, user, info, ...}}
local absent = touch()
local want = cjson.decode(ARGV[4])
local subsKey = P .. ':subs:' .. node
redis.call('DEL', subsKey)
for c, n in pairs(want.subs) do redis.call('HSET', subsKey, c, n) end
local channels = {}
for _, c in ipairs(redis.call('SMEMBERS', mineKey(node))) do channels[c] = true end
for c, _ in pairs(want.pres) do channels[c] = true end
local out = {}
for c, _ in pairs(channels) do
  local before = union(c)
  local key = presKey(c, node)
  redis.call('DEL', key)
  local users = want.pres[c]
  if users ~= nil and next(users) ~= nil then
    for u, info in pairs(users) do redis.call('HSET', key, u, info) end
    redis.call('SADD', presNodes(c), node)
    redis.call('SADD', mineKey(node), c)
  else
    redis.call('SREM', presNodes(c), node)
    redis.call('SREM', mineKey(node), c)
  end
  local after = union(c)
  for u, info in pairs(after) do
    if before[u] == nil then
      table.insert(out, '+'); table.insert(out, c); table.insert(out, u); table.insert(out, info)
    end
  end
  for u, _ in pairs(before) do
    if after[u] == nil then
      table.insert(out, '-'); table.insert(out, c); table.insert(out, u); table.insert(out, '')
    end
  end
end
if ARGV[5] == '1' then
  redis.call('ZREM', nodesKey, node)
  redis.call('DEL', subsKey)
  redis.call('DEL', mineKey(node))
end
return {absent, out}
