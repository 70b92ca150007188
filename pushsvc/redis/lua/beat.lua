-- heartbeat and reaping -> {absent, {channel, user, ...} no longer present anywhere,
-- {channel, ...} no longer subscribed anywhere}
local absent = touch()
local out = {}
local seen = {}
local emptied = {}
for _, d in ipairs(redis.call('ZRANGEBYSCORE', nodesKey, '-inf', now)) do
  if d ~= node then
    redis.call('ZREM', nodesKey, d)
    for _, c in ipairs(redis.call('HKEYS', P .. ':subs:' .. d)) do emptied[c] = true end
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
local vacated = {}
if next(emptied) ~= nil then
  local nodes = redis.call('ZRANGE', nodesKey, 0, -1)
  for c, _ in pairs(emptied) do
    local held = false
    for _, n in ipairs(nodes) do
      if tonumber(redis.call('HGET', P .. ':subs:' .. n, c) or '0') > 0 then
        held = true
        break
      end
    end
    if not held then table.insert(vacated, c) end
  end
end
return {absent, out, vacated}
