--[[
  Holds off every replica's grants on one bucket until server time now + ms (never
  shortens a penalty already in force).

  Input:
    KEYS[1] penalty key - server time in ms until which grants are refused
    ARGV[1] ms          - integer > 0

  Output:
    ms until the penalty in force ends
]]
local ms = tonumber(ARGV[1])
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untilMs = now + ms

local current = tonumber(redis.call("GET", KEYS[1]) or "0")
if current >= untilMs then
  return current - now
end
redis.call("SET", KEYS[1], untilMs, "PX", ms)
return ms
