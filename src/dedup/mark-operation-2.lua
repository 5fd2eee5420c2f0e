--[[
  Records how far our execution got with its cloud call, only while the claim and the record
  are still ours (fenced: an executor that lost its claim must not send).

  KEYS[1]   keygate:op:{<fingerprint>}:claim
  KEYS[2]   keygate:op:{<fingerprint>}:record
  ARGV[1]   our claim token
  ARGV[2]   phase: sending | sent | uncertain, or claimed (a `sending` that led to no send)
  ARGV[3]   sentAt, epoch ms ('' = keep)
  ARGV[4]   upstream request id ('' = keep)
  ARGV[5]   record TTL in milliseconds

  Returns 1 when written, 0 when the operation is no longer ours.
]]
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('HGET', KEYS[2], 'token') ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'sending' then
  -- A new send: a request id of an earlier one no longer describes it.
  redis.call('HDEL', KEYS[2], 'requestId')
elseif ARGV[2] == 'claimed' then
  redis.call('HDEL', KEYS[2], 'requestId', 'sentAt')
end
redis.call('HSET', KEYS[2], 'phase', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], 'sentAt', ARGV[3])
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], 'requestId', ARGV[4])
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
