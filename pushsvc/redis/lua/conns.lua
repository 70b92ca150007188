-- connection counts (max_connections across the cluster): ARGV[4] = this node's open connections
-- of the app -> the sum over the other live nodes. Each node's entry is "count:expiry (ms)";
-- expired entries (a node gone) are dropped here. Written by each node every heartbeat.
local key = P .. ':conns'
redis.call('HSET', key, node, ARGV[4] .. ':' .. (now + ttl))
local total = 0
local kv = redis.call('HGETALL', key)
for i = 1, #kv, 2 do
  if kv[i] ~= node then
    local count, expiry = string.match(kv[i + 1], '^(%d+):(%d+)$')
    if count and tonumber(expiry) > now then
      total = total + tonumber(count)
    else
      redis.call('HDEL', key, kv[i])
    end
  end
end
redis.call('PEXPIRE', key, ttl * 2)
return total
