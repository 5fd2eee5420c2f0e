--[[
  Reads the store's epoch, creating it when it is missing (Redis restarted empty, flushed or
  evicted it; or a fresh deployment). The value is "<random id>:<Redis time ms of creation>", so
  any replica can tell how long ago the store was (re)born.

  KEYS[1] epoch key
  ARGV[1] the id to use if the key is missing

  Output: {value, created (1/0), nowMs}
]]
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local value = redis.call("GET", KEYS[1])
if value then
  return {value, 0, now}
end
value = ARGV[1] .. ":" .. now
redis.call("SET", KEYS[1], value)
return {value, 1, now}
