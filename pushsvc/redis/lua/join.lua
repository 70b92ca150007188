-- ARGV[4] channel, [5] user, [6] user info -> {absent, new}
local absent = touch()
local c, u = ARGV[4], ARGV[5]
local new = 0
if redis.call('HEXISTS', presKey(c, node), u) == 0 and not elsewhere(c, u, node) then new = 1 end
redis.call('HSET', presKey(c, node), u, ARGV[6])
redis.call('SADD', presNodes(c), node)
redis.call('SADD', mineKey(node), c)
return {absent, new}
