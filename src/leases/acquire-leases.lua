--[[
  Takes the leases of ALL given instances, or none (no partial holds, hence no deadlock
  between overlapping requests). Variadic: called with numkeys = 1 + number of instances.

  KEYS[1]      fencing counter of the scope (keygate:{scope}:lease-fence)
  KEYS[2..n]   lease keys (keygate:{scope}:lease:<instanceId>), same hash tag as KEYS[1]
  ARGV[1]      owner (replica name)
  ARGV[2]      TTL in milliseconds

  Returns {1, fence} when taken, or {0, i, pttl} where KEYS[i + 1] is held by someone else
  for another pttl ms.
]]
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    return {0, i - 1, redis.call('PTTL', KEYS[i])}
  end
end
local fence = redis.call('INCR', KEYS[1])
local token = fence .. ':' .. ARGV[1]
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], token, 'PX', ARGV[2])
end
return {1, fence}
