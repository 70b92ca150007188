-- ARGV[4] channel, [5] user -> {absent, gone}
local absent = touch()
local c, u = ARGV[4], ARGV[5]
local gone = 0
if redis.call('HDEL', presKey(c, node), u) == 1 and not elsewhere(c, u, node) then gone = 1 end
if redis.call('HLEN', presKey(c, node)) == 0 then
  redis.call('SREM', presNodes(c), node)
  redis.call('SREM', mineKey(node), c)
end
return {absent, gone}
