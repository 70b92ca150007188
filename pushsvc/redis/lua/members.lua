-- ARGV[4] channel -> {user, info, ...}
local out = {}
for u, info in pairs(union(ARGV[4])) do table.insert(out, u); table.insert(out, info) end
return out
