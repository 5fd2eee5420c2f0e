--[[
  Deletes the leases that still carry our token (value "<expiresAt>/<token>"); a lease that
  expired and now belongs to another request is left alone. Deleting (not letting it expire)
  is what tells the next acquirer the instances were released, not abandoned. Variadic: numkeys = number of instances.
  Then tells waiters: PUBLISHes the freed instance ids (comma-separated) on ARGV[2].

  KEYS[1..n]   lease keys, all with the same {scope} hash tag
  ARGV[1]      token "<fence>:<owner>"
  ARGV[2]      the scope's release channel (keygate:{scope}:lease-released)

  Returns how many leases were deleted.
]]
local n = 0
local freed = {}
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v and string.match(v, '^%d+/(.*)$') == ARGV[1] then
    redis.call('DEL', KEYS[i])
    n = n + 1
    freed[n] = string.match(KEYS[i], ':lease:([^:]*)$')
  end
end
if n > 0 and ARGV[2] then
  redis.call('PUBLISH', ARGV[2], table.concat(freed, ','))
end
return n
