--[[
  Extends a claim only while it is still ours.

  KEYS[1]   keygate:op:{<fingerprint>}:claim
  ARGV[1]   our claim token
  ARGV[2]   claim TTL in milliseconds

  Returns 1 when renewed, 0 when the claim is gone or someone else's.
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
