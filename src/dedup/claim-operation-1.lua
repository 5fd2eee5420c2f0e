--[[
  Claims the right to execute a fingerprint, or names the call that already has it.

  KEYS[1]   keygate:op:{<fingerprint>}:claim
  ARGV[1]   our claim token
  ARGV[2]   claim TTL in milliseconds (renewed while executing)

  Returns {1} when claimed, {0, holderToken} when another call holds it.
]]
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1}
end
return {0, redis.call('GET', KEYS[1])}
