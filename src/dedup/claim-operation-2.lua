--[[
  Claims the right to execute a fingerprint; or names the call that holds it; or answers with
  the final outcome of an execution that finished less than the join window ago.
  The record passes to the new claimer with the phase a vanished executor left in it.

  KEYS[1]   keygate:op:{<fingerprint>}:claim    the executor's token (short TTL, renewed)
  KEYS[2]   keygate:op:{<fingerprint>}:record   hash: token, phase, sentAt, requestId, outcome
  ARGV[1]   our claim token
  ARGV[2]   claim TTL in milliseconds
  ARGV[3]   record TTL in milliseconds (how long an unfinished record waits for an heir)

  Returns {0, holderToken} when held, {2, outcome} when finished within the join window,
  {1, phase, sentAt, requestId} when claimed (phase '' or 'claimed': nothing was sent before).
]]
local holder = redis.call('GET', KEYS[1])
if holder then
  return {0, holder}
end
local rec = redis.call('HMGET', KEYS[2], 'phase', 'sentAt', 'requestId', 'outcome')
local phase = rec[1]
if phase == 'done' and rec[4] then
  return {2, rec[4]}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if phase == 'sending' or phase == 'sent' or phase == 'uncertain' then
  redis.call('HSET', KEYS[2], 'token', ARGV[1])
else
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'token', ARGV[1], 'phase', 'claimed')
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {1, phase or '', rec[2] or '', rec[3] or ''}
