-- KEYS[1] the cache key; ARGV[1] Redis channel, [2] envelope, [3] event frame, [4] TTL in ms.
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
