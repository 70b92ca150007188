-- Run before every script. ARGV[1] = P, ARGV[2] = this node, ARGV[3] = node TTL in ms;
-- script arguments from ARGV[4].
local P = ARGV[1]
local node = ARGV[2]
local ttl = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nodesKey = P .. ':nodes'
local function live(n)
  local s = redis.call('ZSCORE', nodesKey, n)
  return s and tonumber(s) > now
end
local function touch()
  -- No node was heard of for over half the TTL: Redis stalled (or no node could reach it),
  -- which held every node's heartbeat up alike. Time stood still for them: every expiry moves
  -- on by the gap, before anything is judged by it.
  local top = redis.call('ZRANGE', nodesKey, -1, -1, 'WITHSCORES')
  if top[2] then
    local gap = now - (tonumber(top[2]) - ttl)
    if gap > ttl / 2 then
      local scores = redis.call('ZRANGE', nodesKey, 0, -1, 'WITHSCORES')
      for i = 1, #scores, 2 do
        redis.call('ZADD', nodesKey, tonumber(scores[i + 1]) + gap, scores[i])
      end
    end
  end
  local absent = 0
  if redis.call('ZSCORE', nodesKey, node) == false then absent = 1 end
  redis.call('ZADD', nodesKey, now + ttl, node)
  return absent
end
local function presKey(c, n) return P .. ':pres:' .. c .. ':' .. n end
local function presNodes(c) return P .. ':pres:' .. c .. ':nodes' end
local function mineKey(n) return P .. ':node:' .. n .. ':pres' end
local function elsewhere(c, u, except)
  for _, n in ipairs(redis.call('SMEMBERS', presNodes(c))) do
    if n ~= except and live(n) and redis.call('HEXISTS', presKey(c, n), u) == 1 then
      return true
    end
  end
  return false
end
local function union(c)
  local users = {}
  for _, n in ipairs(redis.call('SMEMBERS', presNodes(c))) do
    if live(n) then
      local kv = redis.call('HGETALL', presKey(c, n))
      for i = 1, #kv, 2 do
        if users[kv[i]] == nil then users[kv[i]] = kv[i + 1] end
      end
    end
  end
  return users
end
local function liveNodes()
  return redis.call('ZRANGEBYSCORE', nodesKey, '(' .. now, '+inf')
end
