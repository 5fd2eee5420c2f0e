--[[
  Publishes an execution's outcome to the calls that joined it and drops the claim, in one
  step: a joiner never sees the claim gone without the outcome in place.

  KEYS[1]   keygate:op:{<fingerprint>}:claim
  KEYS[2]   keygate:op:{<fingerprint>}:result:<our token>
  ARGV[1]   our claim token
  ARGV[2]   encoded outcome
  ARGV[3]   result TTL in milliseconds (joiners poll far more often than this)
  ARGV[4]   channel to tell this replica's and others' joiners on (keygate:op-finished)
  ARGV[5]   the fingerprint, the message

  Returns 1 when the claim was still ours, 0 otherwise (the outcome is stored either way).
]]
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if ARGV[4] then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
