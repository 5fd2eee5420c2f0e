--[[
  Decides one grant of a cluster-wide sliding-window log, timed by this Redis server's
  clock (TIME), so replicas with skewed clocks still agree. Mirrors src/limiter/window.ts.

  Input:
    KEYS[1] window key  - list of the last `limit` grant times in ms, newest first
    KEYS[2] penalty key - server time in ms until which every grant is refused
    ARGV[1] limit       - grants allowed in any span
    ARGV[2] span        - ms: the upstream's window plus the safety margin
    ARGV[3] cold        - ms an idle log is kept; when it is missing (first use, idle longer
                          than this, or Redis lost its data in a restart) the log is taken as
                          full at now, so nobody is granted for one span: grants made just
                          before a data loss still count. 0 = off (log kept 2 spans).

  Output:
    {1, remaining, nowMs} granted; remaining = grants still free in the current span
    {0, waitMs, nowMs}    refused; nothing recorded, ask again in waitMs
]]
local limit = tonumber(ARGV[1])
local span = tonumber(ARGV[2])
local cold = tonumber(ARGV[3])

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local penalty = tonumber(redis.call("GET", KEYS[2]) or "0")
if now < penalty then
  return {0, penalty - now, now}
end

local log = redis.call("LRANGE", KEYS[1], 0, limit - 1)
if cold > 0 and #log == 0 then
  for _ = 1, limit do
    redis.call("LPUSH", KEYS[1], now)
  end
  redis.call("PEXPIRE", KEYS[1], cold)
  return {0, span, now}
end
-- A server clock that ran backwards (e.g. after a failover) stands still at the newest grant.
local newest = tonumber(log[1] or "0")
if newest > now then
  now = newest
end

local inWindow = 0
for i = 1, #log do
  if tonumber(log[i]) > now - span then
    inWindow = inWindow + 1
  end
end

if inWindow >= limit then
  local wait = tonumber(log[limit]) + span - now
  if wait < 1 then
    wait = 1
  end
  return {0, wait, now}
end

redis.call("LPUSH", KEYS[1], now)
redis.call("LTRIM", KEYS[1], 0, limit - 1)
-- After one span every entry is irrelevant; twice that keeps a margin, then idle buckets vanish.
if cold > 0 then
  redis.call("PEXPIRE", KEYS[1], cold)
else
  redis.call("PEXPIRE", KEYS[1], span * 2)
end
return {1, limit - inWindow - 1, now}
