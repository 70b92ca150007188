-- ARGV[4..] channel, count pairs (0 deletes) -> absent
local absent = touch()
local key = P .. ':subs:' .. node
for i = 4, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) > 0 then
    redis.call('HSET', key, ARGV[i], ARGV[i + 1])
  else
    redis.call('HDEL', key, ARGV[i])
  end
end
return absent
