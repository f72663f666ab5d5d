-- release: the holder freed the slot (§11 "Release"). Deletes the entry only if it still
-- names this node with this epoch: a stale release must never touch a successor.
-- ARGV: prefix, sid, node, epoch. Returns 1 if deleted, else 0.
local p, sid, me, epoch = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = p .. 'sid:' .. sid
local cur = redis.call('HMGET', key, 'node', 'epoch')
if cur[1] == me and cur[2] == epoch then
  redis.call('DEL', key)
  redis.call('SREM', p .. 'owned:' .. me, sid)
  return 1
end
return 0
