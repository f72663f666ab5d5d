-- locate: who holds a server-id, for a phone upgrading on this node (§11). Read-only.
-- ARGV: prefix, sid, node. Returns {'nobody'} | {'us'} | {'peer', node, addr}.
local p, sid, me = ARGV[1], ARGV[2], ARGV[3]
local cur = redis.call('HMGET', p .. 'sid:' .. sid, 'node', 'epoch')
local holder, hepoch = cur[1], cur[2]
if not holder then
  return {'nobody'}
end
if holder == me then
  return {'us'}
end
local live = redis.call('HMGET', p .. 'node:' .. holder, 'epoch', 'addr')
if live[1] and live[1] == hepoch then
  return {'peer', holder, live[2]}
end
return {'nobody'}
