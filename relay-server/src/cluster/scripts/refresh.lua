-- refresh: push a node's liveness entry back by a lease, only if it has our epoch.
-- ARGV: prefix, node, epoch, lease_ms. Returns 'alive' | 'gone' | 'usurped'.
local p, node, epoch, lease = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = p .. 'node:' .. node
local cur = redis.call('HGET', key, 'epoch')
if not cur then
  return 'gone'
end
if cur ~= epoch then
  return 'usurped'
end
redis.call('PEXPIRE', key, lease)
return 'alive'
