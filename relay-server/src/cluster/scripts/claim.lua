-- claim: a binary for a server-id upgrades on this node (§11).
-- ARGV: prefix, sid, node, epoch.
-- Returns {'fenced'} | {'ours'} | {'took'} | {'took', from} | {'held', node, addr}.
local p, sid, me, epoch = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
-- Taking anything under an epoch that is not live would leave an entry dead on arrival.
if redis.call('HGET', p .. 'node:' .. me, 'epoch') ~= epoch then
  return {'fenced'}
end
local key = p .. 'sid:' .. sid
local cur = redis.call('HMGET', key, 'node', 'epoch')
local holder, hepoch = cur[1], cur[2]
if holder then
  if holder == me and hepoch == epoch then
    return {'ours'}
  end
  if holder ~= me then
    local live = redis.call('HMGET', p .. 'node:' .. holder, 'epoch', 'addr')
    if live[1] and live[1] == hepoch then
      return {'held', holder, live[2]}
    end
  end
  -- A dead node's entry (our own previous life included): take it over.
  redis.call('SREM', p .. 'owned:' .. holder, sid)
end
redis.call('HSET', key, 'node', me, 'epoch', epoch)
redis.call('SADD', p .. 'owned:' .. me, sid)
if holder then
  return {'took', holder}
end
return {'took'}
