-- heartbeat and reaping -> {absent, {channel, user, ...} no longer present anywhere}
local absent = touch()
local out = {}
local seen = {}
for _, d in ipairs(redis.call('ZRANGEBYSCORE', nodesKey, '-inf', now)) do
  if d ~= node then
    redis.call('ZREM', nodesKey, d)
    redis.call('DEL', P .. ':subs:' .. d)
    for _, c in ipairs(redis.call('SMEMBERS', mineKey(d))) do
      local users = redis.call('HKEYS', presKey(c, d))
      redis.call('DEL', presKey(c, d))
      redis.call('SREM', presNodes(c), d)
      for _, u in ipairs(users) do
        local k = c .. '\n' .. u
        if seen[k] == nil and not elsewhere(c, u, d) then
          seen[k] = true
          table.insert(out, c); table.insert(out, u)
        end
      end
    end
    redis.call('DEL', mineKey(d))
  end
end
return {absent, out}
