--[[
  Forgets a pending idempotency key after a transient failure, so that a retry runs again.
  A key with an outcome, or bound to another fingerprint, is left alone.

  KEYS[1]   keygate:idem:{<hash of tenant + key>}
  ARGV[1]   fingerprint of the request

  Returns 1 when deleted, 0 otherwise.
]]
if redis.call('HGET', KEYS[1], 'fp') == ARGV[1] and redis.call('HEXISTS', KEYS[1], 'outcome') == 0 then
  return redis.call('DEL', KEYS[1])
end
return 0
