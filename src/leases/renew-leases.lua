--[[
  Extends a request's leases only when every one is still ours (same owner and fence):
  a lease that expired and was taken by another request must never be stretched.
  Variadic: numkeys = number of instances.

  KEYS[1..n]   lease keys, all with the same {scope} hash tag
  ARGV[1]      token "<fence>:<owner>"
  ARGV[2]      TTL in milliseconds
  ARGV[3]      how long the key outlives the lease (see acquire-leases.lua), ms

  Returns 1 when renewed, 0 when any lease is no longer ours (nothing extended).
]]
local function token(v)
  return v and string.match(v, '^%d+/(.*)$')
end
for i = 1, #KEYS do
  if token(redis.call('GET', KEYS[i])) ~= ARGV[1] then
    return 0
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local value = (now + tonumber(ARGV[2])) .. '/' .. ARGV[1]
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], value, 'PX', tonumber(ARGV[2]) + tonumber(ARGV[3]))
end
return 1
