--[[
  A waiter that gives up (deadline, cancel) drops its fairness reservations at once, so that
  younger acquirers are not held back until the reservations expire; they are told on ARGV[2].
  Variadic: numkeys = number of instances.

  KEYS[1..n]   reservation keys (keygate:{scope}:lease-queue:<instanceId>), same {scope} tag
  ARGV[1]      the waiter's ticket "<since>:<id>"
  ARGV[2]      the scope's release channel (keygate:{scope}:lease-released)

  Returns how many reservations were dropped.
]]
local n = 0
local freed = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    n = n + 1
    freed[n] = string.match(KEYS[i], ':lease%-queue:([^:]*)$')
  end
end
if n > 0 and ARGV[2] then
  redis.call('PUBLISH', ARGV[2], table.concat(freed, ','))
end
return n
