"""The traffic policy's Redis scripts: the global buckets (TAKE) and instance liveness (HEARTBEAT).

Time comes from the Redis server (TIME inside the scripts), never from gateway clocks, so instances with
skewed clocks still share one bucket. Keys carry a hash tag ({...}) so every key of one script call lands
in one Redis Cluster slot (each script declares its key templates: fastgw/store/keys.py checks them). They
run through fastgw/store/redis.py (loaded once per connection, called by SHA).
"""
from __future__ import annotations

from fastgw.store.redis import Script

# Units: microseconds of Redis server time.
#
# TAKE: KEYS[i] holds the state of limit i. ARGV = want, partial, then 4 values per limit:
#   kind (1 rate; 2 minute, 3 hour, 4 day, 5 month quota), a (rate: emission interval µs; quota: count),
#   b (rate: tau = burst * interval µs), enforce (1/0).
# Grants g tokens: g = want when every enforced limit has that many; with partial = 1, the most every
# enforced limit can give (maybe 0); with partial = 0, want or nothing. Granted tokens are charged to
# every limit (shadow limits too, capped at what they have). Reply: {g, shadowed, then per limit:
# remaining after the grant, ms until more quota is made available (rate: the next token; quota: the
# window end; the `t` of draft-ietf-httpapi-ratelimit-headers-10 §4.1.2), ms until one more token when
# none is left (the same number: a 429's Retry-After and t agree)}.
TAKE = Script("TAKE", r"""
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000000 + tonumber(t[2])
local want = tonumber(ARGV[1])
local partial = ARGV[2] == '1'
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m > 2) and (m - 3) or (m + 9)
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function window_end(kind)
  if kind == 2 then return (math.floor(sec / 60) + 1) * 60 end
  if kind == 3 then return (math.floor(sec / 3600) + 1) * 3600 end
  if kind == 4 then return (math.floor(sec / 86400) + 1) * 86400 end
  local z = math.floor(sec / 86400) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = (mp < 10) and (mp + 3) or (mp - 9)
  if m <= 2 then y = y + 1 end
  if m == 12 then return days_from_civil(y + 1, 1, 1) * 86400 end
  return days_from_civil(y, m + 1, 1) * 86400
end
local n = #KEYS
local grant = want
local st = {}
local shadow = 0
for i = 1, n do
  local base = 2 + (i - 1) * 4
  local kind = tonumber(ARGV[base + 1])
  local a = tonumber(ARGV[base + 2])
  local b = tonumber(ARGV[base + 3])
  local enforce = ARGV[base + 4] == '1'
  local can, s0, s1
  if kind == 1 then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tat < now then tat = now end
    can = math.floor((b - (tat - now)) / a)
    s0 = tat
  else
    local wend = window_end(kind)
    local v = redis.call('HMGET', KEYS[i], 'w', 'n')
    local cnt = 0
    if tonumber(v[1]) == wend then cnt = tonumber(v[2]) or 0 end
    can = a - cnt
    s0 = wend
    s1 = cnt
  end
  if can < 0 then can = 0 end
  st[i] = {kind, a, b, enforce, can, s0, s1}
  if enforce then
    if can < grant then grant = can end
  elseif can < want then
    shadow = shadow + 1
  end
end
if (not partial) and grant < want then grant = 0 end
local out = {grant, shadow}
for i = 1, n do
  local kind, a, b, enforce, can, s0, s1 = unpack(st[i])
  local g = grant
  if g > can then g = can end
  local left = can - g
  local reset, retry
  if kind == 1 then
    local tat = s0 + g * a
    if g > 0 then
      redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
    end
    local credit = b - (tat - now)
    reset = math.ceil(((left + 1) * a - credit) / 1000)
    retry = 0
    if left < 1 then retry = reset end
  else
    if g > 0 then
      redis.call('HSET', KEYS[i], 'w', s0, 'n', s1 + g)
      redis.call('PEXPIREAT', KEYS[i], s0 * 1000 + 60000)
    end
    reset = math.ceil((s0 * 1000000 - now) / 1000)
    retry = 0
    if left < 1 then retry = reset end
  end
  out[#out + 1] = left
  out[#out + 1] = reset
  out[#out + 1] = retry
end
return out
""", keys=(b"fgw:{<tag>}:<name>:<n>",))

# HEARTBEAT: KEYS[1] a sorted set of instances scored by their last beat (ms of Redis time).
# ARGV[1] this instance's id, ARGV[2] ms after which a silent instance no longer counts. Returns the
# number of live instances (this one included).
HEARTBEAT = Script("HEARTBEAT", r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])
""", keys=(b"fgw:{hb}:instances",))

SCRIPTS = [TAKE, HEARTBEAT]
HEARTBEAT_KEY = HEARTBEAT.keys[0]
# TAKE's keys: the limit's key hash as the hash tag (every limit of one plan and key in one slot), the plan
# name, the limit's position.
TAKE_KEY = TAKE.keys[0].replace(b"<tag>", b"%s").replace(b"<name>", b"%s").replace(b"<n>", b"%d")
