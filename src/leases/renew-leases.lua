--[[
  Extends a request's leases only when every one is still ours (same owner and fence):
  a lease that expired and was taken by another request must never be stretched.
  Variadic: numkeys = number of instances.

  KEYS[1..n]   lease keys, all with the same {scope} hash tag
  ARGV[1]      token "<fence>:<owner>"
  ARGV[2]      TTL in milliseconds

  Returns 1 when renewed, 0 when any lease is no longer ours (nothing extended).
]]
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[1] then
    return 0
  end
end
for i = 1, #KEYS do
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return 1
