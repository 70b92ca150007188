-- KEYS[1] the cache key -> {frame or false, ms left}
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
