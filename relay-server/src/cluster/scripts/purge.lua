-- purge: delete what a previous life of this node left (entries naming it with another
-- epoch), and forget server-ids other nodes took meanwhile.
-- ARGV: prefix, node, epoch. Returns how many entries were deleted.
local p, me, epoch = ARGV[1], ARGV[2], ARGV[3]
local owned = p .. 'owned:' .. me
local purged = 0
for _, sid in ipairs(redis.call('SMEMBERS', owned)) do
  local key = p .. 'sid:' .. sid
  local cur = redis.call('HMGET', key, 'node', 'epoch')
  if cur[1] == me and cur[2] ~= epoch then
    redis.call('DEL', key)
    redis.call('SREM', owned, sid)
    purged = purged + 1
  elseif cur[1] ~= me then
    redis.call('SREM', owned, sid)
  end
end
return purged
