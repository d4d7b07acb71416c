local P = ARGV[1]
-- TTLs only collect garbage: the deadline as the caller counts it, plus a minute.
local MARGIN_MS = 60000
local MAX_TTL_MS = 315360000000
local SESSIONS = P .. ':sessions'
local USERS = P .. ':users'
local TX_ALL = P .. ':tx_all'
local TX_EXPIRY = P .. ':tx_expiry'
local FEED = P .. ':feed'

local function corrupt(what)
  error({err = 'CORRUPT ' .. what})
end

local function num(v, what)
  local n = tonumber(v)
  if n == nil then corrupt(what) end
  return n
end

local function session_key(fam) return P .. ':session:' .. fam end
local function sid_key(hash) return P .. ':sid:' .. hash end
local function user_key(id) return P .. ':user:' .. id end
local function user_by_sub_key(hex) return P .. ':user_by_sub:' .. hex end
local function user_sessions_key(id) return P .. ':user_sessions:' .. id end
-- The issuer is length-prefixed so that no (issuer, sid) pair can pose as another;
-- members are checked against the session before they are acted on anyway.
local function psid_key(issuer, sid)
  return P .. ':psid:' .. redis.sha1hex(string.len(issuer) .. ':' .. issuer .. '\n' .. sid)
end
local function tx_key(state) return P .. ':tx:' .. state end
local function binding_key(binding) return P .. ':tx_by_binding:' .. binding end

local function ttl_ms(deadline, now)
  local ms = (deadline - now) * 1000 + MARGIN_MS
  if ms < 1000 then ms = 1000 end
  if ms > MAX_TTL_MS then ms = MAX_TTL_MS end
  return string.format('%d', ms)
end

-- Lengthens a key's TTL to at least `ms`: an index outlives every member.
local function extend(key, ms)
  local left = redis.call('PTTL', key)
  if left ~= -2 and left < tonumber(ms) then redis.call('PEXPIRE', key, ms) end
end

-- Hash fields from ARGV[i]: a count n, n (field, value) pairs, a count m, m fields
-- to remove.
local function apply(key, i)
  local n = num(ARGV[i], 'argument count')
  local d = i + 2 * n + 1
  local m = num(ARGV[d], 'argument count')
  for j = 1, n do
    redis.call('HSET', key, ARGV[i + 2 * j - 1], ARGV[i + 2 * j])
  end
  for j = 1, m do
    redis.call('HDEL', key, ARGV[d + j])
  end
end

-- The moment a session ends by itself: the earliest of its deadlines.
local function session_end(key)
  local f = redis.call('HMGET', key, 'idle_expires_at', 'absolute_expires_at', 'refresh_expires_at')
  local e = math.min(num(f[1], key .. ' idle_expires_at'), num(f[2], key .. ' absolute_expires_at'))
  if f[3] then e = math.min(e, num(f[3], key .. ' refresh_expires_at')) end
  return e
end

-- After a write: the session's end in the `sessions` index, and every TTL counted
-- from its last activity (never later than the caller's now, so never too short).
local function index_session(fam)
  local key = session_key(fam)
  local f = redis.call('HMGET', key, 'id_hash', 'previous_id_hash', 'user_id', 'provider_sid', 'last_seen_at')
  if not f[1] or not f[3] then corrupt(key) end
  local ends = session_end(key)
  local ms = ttl_ms(ends, num(f[5], key .. ' last_seen_at'))
  redis.call('PEXPIRE', key, ms)
  redis.call('PEXPIRE', sid_key(f[1]), ms)
  if f[2] then redis.call('PEXPIRE', sid_key(f[2]), ms) end
  extend(user_sessions_key(f[3]), ms)
  if f[4] then
    local issuer = redis.call('HGET', user_key(f[3]), 'issuer')
    if issuer then extend(psid_key(issuer, f[4]), ms) end
  end
  redis.call('ZADD', SESSIONS, string.format('%d', ends), fam)
  extend(SESSIONS, ms)
end

-- The change-feed message naming a session and its id hashes (feed::changed_text).
local function message(fam, first, second)
  local text = 's ' .. fam
  if first then text = text .. ' ' .. first end
  if second then text = text .. ' ' .. second end
  return text
end

local function announce(text)
  redis.call('PUBLISH', FEED, text)
end

local function announce_session(fam)
  local f = redis.call('HMGET', session_key(fam), 'id_hash', 'previous_id_hash')
  announce(message(fam, f[1], f[2]))
end

local function drop_sid(hash, fam)
  if redis.call('GET', sid_key(hash)) == fam then redis.call('DEL', sid_key(hash)) end
end

-- Removes a session and every index entry naming it. Returns the message announcing
-- it, or nil when there was no such session (a stale index entry, now gone too).
local function remove_session(fam)
  local key = session_key(fam)
  redis.call('ZREM', SESSIONS, fam)
  if redis.call('EXISTS', key) == 0 then return nil end
  local f = redis.call('HMGET', key, 'id_hash', 'previous_id_hash', 'user_id', 'provider_sid')
  if f[1] then drop_sid(f[1], fam) end
  if f[2] then drop_sid(f[2], fam) end
  if f[3] then
    redis.call('SREM', user_sessions_key(f[3]), fam)
    if f[4] then
      local issuer = redis.call('HGET', user_key(f[3]), 'issuer')
      if issuer then redis.call('SREM', psid_key(issuer, f[4]), fam) end
    end
  end
  redis.call('DEL', key)
  return message(fam, f[1], f[2])
end

local function remove_user_sessions(uid)
  local set = user_sessions_key(uid)
  local n = 0
  for _, fam in ipairs(redis.call('SMEMBERS', set)) do
    if redis.call('HGET', session_key(fam), 'user_id') == uid then
      local text = remove_session(fam)
      if text then
        announce(text)
        n = n + 1
      end
    else
      redis.call('SREM', set, fam)
    end
  end
  return n
end

local function remove_tx(state)
  local key = tx_key(state)
  local binding = redis.call('HGET', key, 'binding_hash')
  redis.call('DEL', key)
  redis.call('ZREM', TX_ALL, state)
  redis.call('ZREM', TX_EXPIRY, state)
  if binding then
    redis.call('ZREM', binding_key(binding), state)
    return true
  end
  return false
end

-- Keeps the newest `limit` members of `index` (scored by creation), oldest evicted
-- first, never `keep` (the transaction just stored).
local function trim(index, limit, keep)
  local excess = redis.call('ZCARD', index) - limit
  if excess <= 0 then return end
  for _, state in ipairs(redis.call('ZRANGE', index, 0, excess)) do
    if excess == 0 then break end
    if state ~= keep then
      remove_tx(state)
      redis.call('ZREM', index, state)
      excess = excess - 1
    end
  end
end
