-- leave: SIGTERM (§11). Deletes every entry naming this node with this epoch, and the
-- liveness entry if it still has this epoch, so binaries reconnecting elsewhere claim at once.
-- ARGV: prefix, node, epoch. Returns how many entries were deleted.
local p, me, epoch = ARGV[1], ARGV[2], ARGV[3]
local nodekey = p .. 'node:' .. me
if redis.call('HGET', nodekey, 'epoch') == epoch then
  redis.call('DEL', nodekey)
end
local owned = p .. 'owned:' .. me
local deleted = 0
for _, sid in ipairs(redis.call('SMEMBERS', owned)) do
  local key = p .. 'sid:' .. sid
  local cur = redis.call('HMGET', key, 'node', 'epoch')
  if cur[1] == me and cur[2] == epoch then
    redis.call('DEL', key)
    redis.call('SREM', owned, sid)
    deleted = deleted + 1
  end
end
return deleted
