-- ARGV[4..] channel, count pairs (0 deletes) -> {absent, {"+"|"-", channel, ...}, {channel, n,
-- ...}}: the channels whose cluster-wide count went from 0 ("+", occupied) or to 0 ("-",
-- vacated), and every channel's new cluster-wide count. Nodes dead but
-- not yet reaped still count here: their channels are vacated when they are reaped (beat.lua),
-- so each occupied has exactly one vacated after it.
local absent = touch()
local key = P .. ':subs:' .. node
local nodes = redis.call('ZRANGE', nodesKey, 0, -1)
local out = {}
local totals = {}
for i = 4, #ARGV, 2 do
  local c = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  local others = 0
  for _, d in ipairs(nodes) do
    if d ~= node then
      others = others + tonumber(redis.call('HGET', P .. ':subs:' .. d, c) or '0')
    end
  end
  local before = others + tonumber(redis.call('HGET', key, c) or '0')
  if n > 0 then
    redis.call('HSET', key, c, n)
  else
    redis.call('HDEL', key, c)
  end
  local after = others + n
  table.insert(totals, c); table.insert(totals, after)
  if before == 0 and after > 0 then
    table.insert(out, '+'); table.insert(out, c)
  elseif before > 0 and after == 0 then
    table.insert(out, '-'); table.insert(out, c)
  end
end
return {absent, out, totals}
