--[[
  Stores the first definitive outcome under an idempotency key; later ones never overwrite it.

  KEYS[1]   keygate:idem:{<hash of tenant + key>}
  ARGV[1]   fingerprint of the request
  ARGV[2]   encoded outcome
  ARGV[3]   TTL in milliseconds (24 h, counted from completion)

  Returns 1 when stored, 0 when the key already had an outcome or belongs to another fingerprint.
]]
local fp = redis.call('HGET', KEYS[1], 'fp')
if fp and (fp ~= ARGV[1] or redis.call('HEXISTS', KEYS[1], 'outcome') == 1) then
  return 0
end
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'outcome', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
