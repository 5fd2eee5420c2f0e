--[[
  A waiter that gives up (deadline, cancel) drops its fairness reservations at once, so that
  younger acquirers are not held back until the reservations expire.
  Variadic: numkeys = number of instances.

  KEYS[1..n]   reservation keys (keygate:{scope}:lease-queue:<instanceId>), same {scope} tag
  ARGV[1]      the waiter's ticket "<since>:<id>"

  Returns how many reservations were dropped.
]]
local n = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    n = n + 1
  end
end
return n
