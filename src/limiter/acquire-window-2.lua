--[[
  Books one slot of a cluster-wide sliding-window log, timed by this Redis server's clock
  (TIME), so replicas with skewed clocks still agree. Mirrors `decide` in src/limiter/window.ts.

    slot = max(now, newest, log[limit] + span, penalty)

  The slot is booked (recorded in the log at its own, possibly future, time) when it lies at most
  `horizon` ms ahead; the caller then sends at the slot, never earlier. Slots never go backwards
  and any limit + 1 consecutive slots lie at least `span` apart, so no span holds more than
  `limit`. Booking ahead spaces the slots by this arithmetic alone: a replica that wakes a few ms
  late no longer pushes every later slot back by its delay.

  Input:
    KEYS[1] window key  - list of the last `limit` slots in ms, newest first
    KEYS[2] penalty key - server time in ms until which every grant is refused
    ARGV[1] limit       - grants allowed in any span
    ARGV[2] span        - ms: the upstream's window plus the safety margin
    ARGV[3] cold        - ms an idle log is kept; when it is missing (first use, idle longer
                          than this, or Redis lost its data in a restart) the log is taken as
                          full at now + horizon, so nobody is granted for span + horizon: slots
                          booked just before a data loss still count. 0 = off (log kept 2 spans).
    ARGV[4] horizon     - ms: how far ahead of now a slot may be booked (0 = grant only now)
    ARGV[5] gap         - ms: least distance between slots that wait for the window, so that
                          replicas do not all wake and send in the same ms (0 = none)
    ARGV[6] warm        - 1: a missing log is known to be older than one span (the caller saw the
                          store down for longer than that just before), so it is simply empty

  Output:
    {1, remaining, nowMs, delayMs, timeMs} booked; send delayMs after nowMs; remaining = grants
                                   still free at that slot
    {0, waitMs, nowMs, timeMs}     refused; nothing recorded, ask again in waitMs
  nowMs is the time the decision counts from (held back after the clock ran backwards, below);
  timeMs is this server's TIME as read, from which callers learn how its clock stands to theirs.
]]
local limit = tonumber(ARGV[1])
local span = tonumber(ARGV[2])
local cold = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4] or "0")
local gap = tonumber(ARGV[5] or "0")
local warm = ARGV[6] == "1"

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local time = now
local penalty = tonumber(redis.call("GET", KEYS[2]) or "0")

local log = redis.call("LRANGE", KEYS[1], 0, limit - 1)
if cold > 0 and #log == 0 and not warm then
  for _ = 1, limit do
    redis.call("LPUSH", KEYS[1], now + horizon)
  end
  redis.call("PEXPIRE", KEYS[1], cold)
  local first = now + horizon + span
  if penalty > first then
    first = penalty
  end
  return {0, first - now - horizon, now, time}
end

-- A booking is at most `horizon` ahead of the clock that made it: a newest slot further ahead
-- means the server clock ran backwards (e.g. after a failover), so now stands still behind it.
local newest = tonumber(log[1] or "0")
if newest - horizon > now then
  now = newest - horizon
end

local slot = now
if newest > slot then
  slot = newest
end
if #log >= limit then
  local free = tonumber(log[limit]) + span
  if free > now then
    if free > slot then
      slot = free
    end
    if newest + gap > slot then
      slot = newest + gap
    end
  end
end
if penalty > slot then
  slot = penalty
end

local delay = slot - now
if delay > horizon then
  local wait = delay - horizon
  if wait < 1 then
    wait = 1
  end
  return {0, wait, now, time}
end

local inWindow = 0
for i = 1, #log do
  if tonumber(log[i]) > slot - span then
    inWindow = inWindow + 1
  end
end

redis.call("LPUSH", KEYS[1], slot)
redis.call("LTRIM", KEYS[1], 0, limit - 1)
-- After one span past the newest slot every entry is irrelevant; twice that keeps a margin, then
-- idle buckets vanish.
if cold > 0 then
  redis.call("PEXPIRE", KEYS[1], cold)
else
  redis.call("PEXPIRE", KEYS[1], span * 2 + delay)
end
return {1, limit - inWindow - 1, now, delay, time}
