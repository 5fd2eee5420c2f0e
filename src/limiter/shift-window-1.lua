--[[
  A request booked at `slot` left `late` ms after it: moves that slot of the cluster-wide log
  to slot + late, so later bookings keep a full span from when the request really left (see
  docs/decisions/limiter.md). Mirrors `shiftSlot` in src/limiter/window.ts. The log stays
  ordered newest first and at most `limit` long; its expiry is kept. A missing log (expired,
  or lost) is left missing: the cold hold-off covers it.

  Input:
    KEYS[1] window key - list of the last `limit` slots in ms, newest first
    ARGV[1] slot       - the booked slot, ms on this server's clock (as acquire-window-2 gave it)
    ARGV[2] late       - ms > 0 it left after the slot
    ARGV[3] limit      - grants allowed in any span

  Output:
    1 moved (or re-added), 0 nothing to do
]]
local slot = tonumber(ARGV[1])
local late = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
if late <= 0 then
  return 0
end
local log = redis.call("LRANGE", KEYS[1], 0, -1)
if #log == 0 then
  return 0
end
local ttl = redis.call("PTTL", KEYS[1])

local values = {}
local found = false
for i = 1, #log do
  local v = tonumber(log[i])
  if not found and v == slot then
    found = true
  else
    values[#values + 1] = v
  end
end
values[#values + 1] = slot + late
table.sort(values, function(a, b) return a > b end)

redis.call("DEL", KEYS[1])
local n = math.min(#values, limit)
for i = 1, n do
  redis.call("RPUSH", KEYS[1], values[i])
end
if ttl > 0 then
  redis.call("PEXPIRE", KEYS[1], ttl)
end
return 1
