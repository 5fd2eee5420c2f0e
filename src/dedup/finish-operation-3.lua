--[[
  Publishes an execution's outcome to the calls that joined it and drops the claim, in one
  step: a joiner never sees the claim gone without the outcome in place. While the record is
  still ours, a final outcome closes it (identical calls within the join window get it); a
  transient one drops a record that never got past 'claimed', and otherwise leaves the phase
  for the next executor to inherit.

  KEYS[1]   keygate:op:{<fingerprint>}:claim
  KEYS[2]   keygate:op:{<fingerprint>}:result:<our token>
  KEYS[3]   keygate:op:{<fingerprint>}:record
  ARGV[1]   our claim token
  ARGV[2]   encoded outcome
  ARGV[3]   result TTL in milliseconds (joiners poll far more often than this)
  ARGV[4]   channel to tell this replica's and others' joiners on (keygate:op-finished)
  ARGV[5]   the fingerprint, the message
  ARGV[6]   '1' when the outcome is final, '0' when transient
  ARGV[7]   join window in milliseconds (0 = none)

  Returns 1 when the claim was still ours, 0 otherwise (the outcome is stored either way).
]]
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if redis.call('HGET', KEYS[3], 'token') == ARGV[1] then
  if ARGV[6] == '1' then
    if tonumber(ARGV[7]) > 0 then
      redis.call('HSET', KEYS[3], 'phase', 'done', 'outcome', ARGV[2])
      redis.call('PEXPIRE', KEYS[3], ARGV[7])
    else
      redis.call('DEL', KEYS[3])
    end
  elseif redis.call('HGET', KEYS[3], 'phase') == 'claimed' then
    redis.call('DEL', KEYS[3])
  end
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
