--[[
  Deletes the leases that still carry our token; a lease that expired and now belongs to
  another request is left alone. Variadic: numkeys = number of instances.

  KEYS[1..n]   lease keys, all with the same {scope} hash tag
  ARGV[1]      token "<fence>:<owner>"

  Returns how many leases were deleted.
]]
local n = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    n = n + 1
  end
end
return n
