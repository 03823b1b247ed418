"""The Lua scripts the Redis broker runs inside Redis, each one atomic there.

Seqs and ids are compared as decimal strings, not Lua numbers: Redis' Lua numbers are doubles,
which lose integers above 2^53, and a source's seq may go up to 2^63.
"""

_NEWER = """
local function newer(a, b)  -- decimal strings without leading zeros
  if #a ~= #b then return #a > #b end
  return a > b
end
"""
# KEYS: stream, seqs, lease. ARGV: holder, then (id, source, seq, json) per tick, in id order.
APPEND = (
    _NEWER
    + """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return redis.error_reply('LEASELOST') end
local top = '0'
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if newest[1] then top = string.match(newest[1][1], '^(%d+)') end
local last, added = {}, 0
for i = 2, #ARGV, 4 do
  local id, source, seq = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local known = last[source] or redis.call('HGET', KEYS[2], source) or '0'
  if newer(seq, known) and newer(id, top) then
    redis.call('XADD', KEYS[1], id .. '-0', 't', ARGV[i + 3])
    last[source], top, added = seq, id, added + 1
  end
end
for source, seq in pairs(last) do redis.call('HSET', KEYS[2], source, seq) end
return added
"""
)
RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# KEYS: stream, trimmed. ARGV: the lowest id to keep. Trims exactly (an approximate trim keeps whole
# nodes of 100 entries) and records the mark, never lowering it.
TRIM = (
    _NEWER
    + """
local mark = redis.call('GET', KEYS[2]) or '0'
if not newer(ARGV[1], mark) then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
return redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1] .. '-0')
"""
)
