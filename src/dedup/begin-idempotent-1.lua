--[[
  Looks up an idempotency key and binds it to a fingerprint when it is new.

  KEYS[1]   keygate:idem:{<hash of tenant + key>}  (hash: fp, outcome)
  ARGV[1]   fingerprint of the request
  ARGV[2]   TTL in milliseconds (24 h)

  Returns {'new'}, {'pending'}, {'done', outcome} or {'mismatch'}.
]]
local fp = redis.call('HGET', KEYS[1], 'fp')
if not fp then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'new'}
end
if fp ~= ARGV[1] then
  return {'mismatch'}
end
local outcome = redis.call('HGET', KEYS[1], 'outcome')
if outcome then
  return {'done', outcome}
end
return {'pending'}
