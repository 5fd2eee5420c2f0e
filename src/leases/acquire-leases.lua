--[[
  Takes the leases of ALL given instances, or none (no partial holds, hence no deadlock
  between overlapping requests). Variadic: numkeys = 1 + 2 * number of instances.
  Fairness: an instance reserved by an older waiter counts as busy; a waiter that asks to
  reserve takes the reservation of every wanted instance not reserved by someone older.

  KEYS[1]          fencing counter of the scope (keygate:{scope}:lease-fence)
  KEYS[2..n+1]     lease keys (keygate:{scope}:lease:<instanceId>)
  KEYS[n+2..2n+1]  reservation keys (keygate:{scope}:lease-queue:<instanceId>), same order
                   (all keys share the {scope} hash tag)
  ARGV[1]          holder (replica name and the acquisition's id: unique, so that a token never
                   repeats, even after Redis restarted empty and the fence counter with it)
  ARGV[2]          lease TTL in milliseconds
  ARGV[3]          waiter's start time (ms)
  ARGV[4]          waiter id (unique per acquire call)
  ARGV[5]          '1' to reserve when busy, '0' not to
  ARGV[6]          reservation TTL in milliseconds
  ARGV[7]          how long an expired lease is remembered after its expiry (ms)

  A lease's value is "<expiresAt ms>/<fence>:<owner>", timed by Redis TIME. The key itself lives
  ARGV[7] longer than the lease, so an acquirer can tell a lease that EXPIRED (its holder stalled
  or died, its cloud task may still run) from one that was released (the key is deleted).

  Returns {1, fence, tookOver} when taken (tookOver 1 when an expired lease was taken over), or
  {0, i, pttl}: instance i (1-based) is held or reserved by someone else for another pttl ms.
]]
local n = (#KEYS - 1) / 2
local since = tonumber(ARGV[3])
local me = ARGV[3] .. ':' .. ARGV[4]

local function older(ticket)
  local s, id = string.match(ticket, '^(%d+):(.*)$')
  s = tonumber(s)
  return s < since or (s == since and id < ARGV[4])
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local busy, pttl, tookOver = 0, -1, 0
for i = 1, n do
  local v = redis.call('GET', KEYS[1 + i])
  if v then
    local exp = tonumber(string.match(v, '^(%d+)/'))
    if exp and exp <= now then
      tookOver = 1
    else
      busy, pttl = i, exp and (exp - now) or redis.call('PTTL', KEYS[1 + i])
      break
    end
  end
end
if busy == 0 then
  for i = 1, n do
    local r = redis.call('GET', KEYS[1 + n + i])
    if r and r ~= me and older(r) then
      busy, pttl = i, redis.call('PTTL', KEYS[1 + n + i])
      break
    end
  end
end

if busy > 0 then
  if ARGV[5] == '1' then
    for i = 1, n do
      local r = redis.call('GET', KEYS[1 + n + i])
      if (not r) or r == me or not older(r) then
        redis.call('SET', KEYS[1 + n + i], me, 'PX', ARGV[6])
      end
    end
  end
  return {0, busy, pttl}
end

local fence = redis.call('INCR', KEYS[1])
local value = (now + tonumber(ARGV[2])) .. '/' .. fence .. ':' .. ARGV[1]
local keep = tonumber(ARGV[2]) + tonumber(ARGV[7])
for i = 1, n do
  redis.call('SET', KEYS[1 + i], value, 'PX', keep)
  if redis.call('GET', KEYS[1 + n + i]) == me then
    redis.call('DEL', KEYS[1 + n + i])
  end
end
return {1, fence, tookOver}
