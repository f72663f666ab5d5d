-- reassert: after a rejoin, the slots this node still holds locally (fencing, §11 and
-- docs/scaling.md). Missing or naming us (any epoch) -> rewritten to the new epoch;
-- naming another node -> reported lost, left alone.
-- ARGV: prefix, node, epoch, sid... Returns {'fenced'} or {'done', r1, r2, ...} where each
-- r is '' (kept) or the name of the node that holds it now.
local p, me, epoch = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', p .. 'node:' .. me, 'epoch') ~= epoch then
  return {'fenced'}
end
local owned = p .. 'owned:' .. me
local out = {'done'}
for i = 4, #ARGV do
  local sid = ARGV[i]
  local key = p .. 'sid:' .. sid
  local holder = redis.call('HGET', key, 'node')
  if holder and holder ~= me then
    out[#out + 1] = holder
  else
    redis.call('HSET', key, 'node', me, 'epoch', epoch)
    redis.call('SADD', owned, sid)
    out[#out + 1] = ''
  end
end
return out
