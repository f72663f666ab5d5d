-- join: a new life for a node (directory.rs Directory::join, memory.rs is the reference).
-- ARGV: prefix, node, addr, lease_ms, floor. Returns the new epoch.
-- The epoch is above the floor even if the counter was lost (a Redis restart without
-- persistence), so a rejoining node never gets back an epoch it had.
local p, node, addr, lease, floor = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local counter = p .. 'epoch'
local e = redis.call('INCR', counter)
if e <= floor then
  e = floor + 1
  redis.call('SET', counter, e)
end
local key = p .. 'node:' .. node
redis.call('DEL', key)
redis.call('HSET', key, 'epoch', string.format('%d', e), 'addr', addr)
redis.call('PEXPIRE', key, lease)
return e
