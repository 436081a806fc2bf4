//! The Lua scripts of the Redis store: each one is a versioned
//! check-and-write that Redis runs atomically.
//!
//! # Algorithm
//!
//! Registers hold `<version><L json | D ms>`; versions are fixed-width
//! lowercase hex and `newer(a, b)` compares them 8 digits (32 bits) at a
//! time as Lua numbers, exact in a double and independent of the server's
//! collation locale. The helpers mirror the in-memory store: `lww` is a
//! last-writer-wins register write, `raise` lifts a collection's floor and
//! deletes what lies below it, `setcount` installs a snapshot's member
//! count and drops the deltas it includes, `bump` moves the guild floor and
//! `remember`s it as an applied lifecycle write (`lh`: the last four, so a
//! redelivery after a crash can re-derive its announcement). `gm`/`gj`:
//! a session-gap join's READY mark and the snapshot that consumed it.

use redis::Script;
use std::sync::LazyLock;

const LIB: &str = r#"
local function newer(a, b)
  for i = 1, #a, 8 do
    local x = tonumber(string.sub(a, i, i + 7), 16)
    local y = tonumber(string.sub(b, i, i + 7), 16)
    if x ~= y then return x > y end
  end
  return false
end
local function lww(key, field, v, payload)
  local cur = redis.call('HGET', key, field)
  if cur and not newer(v, string.sub(cur, 1, #v)) then return 0 end
  redis.call('HSET', key, field, v .. payload)
  return 1
end
local function raise(meta, field, key, v)
  local fl = redis.call('HGET', meta, field)
  if fl and not newer(v, fl) then return 0 end
  redis.call('HSET', meta, field, v)
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    if newer(v, string.sub(all[i + 1], 1, #v)) then redis.call('HDEL', key, all[i]) end
  end
  return 1
end
local function setcount(meta, dkey, v, n)
  local cm = redis.call('HGET', meta, 'cm')
  if cm and not newer(v, cm) then return end
  redis.call('HSET', meta, 'cm', v, 'cb', n)
  local all = redis.call('HGETALL', dkey)
  for i = 1, #all, 2 do
    if not newer(all[i], v) then redis.call('HDEL', dkey, all[i]) end
  end
end
local function remember(meta, v)
  local h = v .. (redis.call('HGET', meta, 'lh') or '')
  redis.call('HSET', meta, 'lh', string.sub(h, 1, 4 * #v))
end
local function bump(meta, v)
  local f = redis.call('HGET', meta, 'f')
  if f and not newer(v, f) then return 0 end
  redis.call('HSET', meta, 'f', v)
  remember(meta, v)
  return 1
end
local names = {'c', 'r', 'm', 'e', 'p', 'v'}
local function remove_guild(k, v, at)
  local applied = bump(k[1], v)
  for i = 1, 6 do raise(k[1], 'f' .. names[i], k[i + 1], v) end
  setcount(k[1], k[8], v, '0')
  lww(k[1], 'core', v, 'D' .. at)
  return applied
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{LIB}\n{body}"))
}

/// An availability change (GUILD_DELETE unavailable). KEYS: meta. ARGV:
/// version, '1' or '0'. Remembered as a lifecycle write when applied.
pub(crate) static AVAIL: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if lww(KEYS[1], 'av', ARGV[1], ARGV[2]) == 0 then return 0 end
remember(KEYS[1], ARGV[1])
return 1
"#,
    )
});

/// Whether a lifecycle write was applied as the guild's newest, among the
/// last four (`lh`: their versions, newest first). KEYS: meta. ARGV:
/// version.
pub(crate) static ANNOUNCED: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local h = redis.call('HGET', KEYS[1], 'lh') or ''
for i = 1, #h, #ARGV[1] do
  if string.sub(h, i, i + #ARGV[1] - 1) == ARGV[1] then return 1 end
end
return 0
"#,
    )
});

/// KEYS: hash. ARGV: field, version, payload.
pub(crate) static REG: LazyLock<Script> =
    LazyLock::new(|| script("return lww(KEYS[1], ARGV[1], ARGV[2], ARGV[3])"));

/// KEYS: meta, hash. ARGV: floor field, id, version, payload.
pub(crate) static PUT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local fl = redis.call('HGET', KEYS[1], ARGV[1])
if fl and newer(fl, ARGV[3]) then return 0 end
return lww(KEYS[2], ARGV[2], ARGV[3], ARGV[4])
"#,
    )
});

/// KEYS: meta, c, r, m, e, p, v, deltas. ARGV: version, core payload, count
/// or '', complete kinds (subset of "crmepv"), then per kind: n, n x (id,
/// payload).
pub(crate) static SNAPSHOT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local v = ARGV[1]
local before = redis.call('HGET', KEYS[1], 'f')
local core = redis.call('HGET', KEYS[1], 'core')
local live = core and string.sub(core, #v + 1, #v + 1) == 'L'
local applied = bump(KEYS[1], v)
local gm = redis.call('HGET', KEYS[1], 'gm')
if applied == 1 and not live and gm and (not before or newer(gm, before)) and newer(v, gm) then
  redis.call('HSET', KEYS[1], 'gj', v)
end
for k = 1, 6 do
  if string.find(ARGV[4], names[k], 1, true) then raise(KEYS[1], 'f' .. names[k], KEYS[k + 1], v) end
end
lww(KEYS[1], 'core', v, ARGV[2])
lww(KEYS[1], 'av', v, '1')
if ARGV[3] ~= '' then setcount(KEYS[1], KEYS[8], v, ARGV[3]) end
local idx = 5
for k = 1, 6 do
  local n = tonumber(ARGV[idx])
  idx = idx + 1
  local fl = redis.call('HGET', KEYS[1], 'f' .. names[k])
  local ok = not (fl and newer(fl, v))
  for j = 1, n do
    if ok then lww(KEYS[k + 1], ARGV[idx], v, ARGV[idx + 1]) end
    idx = idx + 2
  end
end
return applied
"#,
    )
});

/// KEYS: meta, hash. ARGV: version, kind letter, then (id, payload) pairs.
pub(crate) static LIST: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local v = ARGV[1]
local fl = redis.call('HGET', KEYS[1], 'f' .. ARGV[2])
if fl and newer(fl, v) then return 0 end
local changed = raise(KEYS[1], 'f' .. ARGV[2], KEYS[2], v)
for i = 3, #ARGV, 2 do
  changed = math.max(changed, lww(KEYS[2], ARGV[i], v, ARGV[i + 1]))
end
return changed
"#,
    )
});

/// KEYS: meta, c, r, m, e, p, v, deltas. ARGV: version, deleted-at ms.
pub(crate) static REMOVE: LazyLock<Script> =
    LazyLock::new(|| script("return remove_guild(KEYS, ARGV[1], ARGV[2])"));

/// First sight of a guild from a shard. KEYS: meta, c, r, m, e, p, v,
/// deltas, the shard's READY hash, its listed set, its guild set. ARGV:
/// guild id.
pub(crate) static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HSETNX', KEYS[1], 'sh', '1') == 0 then return 0 end
redis.call('SADD', KEYS[11], ARGV[1])
local rv = redis.call('HGET', KEYS[9], 'v')
if rv and redis.call('SISMEMBER', KEYS[10], ARGV[1]) == 0 then
  remove_guild(KEYS, rv, redis.call('HGET', KEYS[9], 'at'))
end
return 1
"#,
    )
});

/// A newer READY for a shard. KEYS: READY hash, listed set, the previous
/// READY's listed set. ARGV: version, at ms, listed guild ids. Returns 1
/// when applied, 2 when this READY is already the shard's latest (a retry:
/// its per-guild steps are idempotent and run again), 0 when older. The
/// previous list is kept (`p`: whether there was one) for [`LISTED`].
pub(crate) static READY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local cur = redis.call('HGET', KEYS[1], 'v')
if cur and cur == ARGV[1] then return 2 end
if cur and not newer(ARGV[1], cur) then return 0 end
redis.call('DEL', KEYS[3])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[3]) end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'at', ARGV[2], 'p', cur and '1' or '0')
for i = 3, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
return 1
"#,
    )
});

/// A guild listed by READY. KEYS: meta, the shard's guild set, the READY
/// hash, the previous READY's listed set. ARGV: guild id, version,
/// hand-over (`1`: leave availability alone, see `Mutation::Ready`). Marks a
/// session-gap join (`gm`, see `Store::gap_join`) when the cache holds the
/// guild as not the bot's: removed before this READY, or never seen and
/// not listed by the shard's previous READY (when there was one).
pub(crate) static LISTED: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
redis.call('HSETNX', KEYS[1], 'sh', '1')
redis.call('SADD', KEYS[2], ARGV[1])
local v = ARGV[2]
local core = redis.call('HGET', KEYS[1], 'core')
local gone
if core then
  gone = string.sub(core, #v + 1, #v + 1) == 'D' and newer(v, string.sub(core, 1, #v))
else
  gone = redis.call('HGET', KEYS[3], 'p') == '1' and redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 0
end
if gone then
  local gm = redis.call('HGET', KEYS[1], 'gm')
  if not gm or newer(v, gm) then redis.call('HSET', KEYS[1], 'gm', v) end
end
if ARGV[3] == '1' then return 1 end
return lww(KEYS[1], 'av', v, '0')
"#,
    )
});

/// Whether the snapshot at a version was a session-gap join (`gj`). KEYS:
/// meta. ARGV: version.
pub(crate) static GAP_JOIN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HGET', KEYS[1], 'gj') == ARGV[1] then return 1 end
return 0
"#,
    )
});

/// KEYS: meta, deltas. ARGV: version, delta, cap (see
/// [`MAX_COUNT_DELTAS`](crate::MAX_COUNT_DELTAS): beyond it the older half is folded into `cb`).
pub(crate) static DELTA: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local cm = redis.call('HGET', KEYS[1], 'cm')
if cm and not newer(ARGV[1], cm) then return 0 end
local fresh = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
if redis.call('HLEN', KEYS[2]) > tonumber(ARGV[3]) then
  local all = redis.call('HGETALL', KEYS[2])
  local vs = {}
  for i = 1, #all, 2 do vs[#vs + 1] = all[i] end
  table.sort(vs, function(a, b) return newer(b, a) end)
  local base = tonumber(redis.call('HGET', KEYS[1], 'cb') or '0')
  local n = math.floor(#vs / 2)
  for i = 1, n do
    base = base + tonumber(redis.call('HGET', KEYS[2], vs[i]))
    redis.call('HDEL', KEYS[2], vs[i])
  end
  redis.call('HSET', KEYS[1], 'cb', base, 'cm', vs[n])
end
return fresh
"#,
    )
});

/// KEYS: window zset, low key. ARGV: seq, capacity, ttl ms.
pub(crate) static SEEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local low = tonumber(redis.call('GET', KEYS[2]) or '0')
local s = tonumber(ARGV[1])
if s <= low then return 0 end
if redis.call('ZADD', KEYS[1], 'NX', s, ARGV[1]) == 0 then return 0 end
if redis.call('ZCARD', KEYS[1]) > tonumber(ARGV[2]) then
  local p = redis.call('ZPOPMIN', KEYS[1])
  redis.call('SET', KEYS[2], p[2], 'PX', ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#,
    )
});

/// Users found unreferenced by a sweep. KEYS: users hash. ARGV: cutoff
/// (unix ms, 16 hex digits), then user ids. Deletes each user whose last
/// write was received before the cutoff (the first 16 digits of its
/// version); returns how many.
pub(crate) static SWEEP_USERS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local n = 0
for i = 2, #ARGV do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur and newer(ARGV[1], string.sub(cur, 1, 16)) then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"#,
    )
});

/// A reshard marker, kept when newer. KEYS: the reshard hash. ARGV: the
/// marker's order key (reshard id as 16 hex digits, then the phase
/// digit), its JSON. Returns 1 when it was newer (announce it), else 0.
pub(crate) static RESHARD_MARK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('HGET', KEYS[1], 'k')
if cur and cur >= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'k', ARGV[1], 'm', ARGV[2])
return 1
"#,
    )
});

/// One copy of a guild event in a reshard window (see `crate::reshard`).
/// KEYS: the guild's pair hash (field = fingerprint, value =
/// `total:unmatched:at_ms`). ARGV: fingerprint, total, at_ms, ttl ms.
/// Returns 0 when the copy pairs with an unmatched one of another total,
/// else 1 (and counts it).
pub(crate) static PAIR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local total = tonumber(ARGV[2])
local at = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local v = redis.call('HGET', KEYS[1], ARGV[1])
local keep = ARGV[2] .. ':1:' .. ARGV[3]
if v then
  local t, n, a = string.match(v, '^(%d+):(%d+):(%d+)$')
  t = tonumber(t)
  n = tonumber(n)
  if t and at - tonumber(a) <= ttl then
    if t ~= total and n > 0 then
      if n == 1 then
        redis.call('HDEL', KEYS[1], ARGV[1])
      else
        redis.call('HSET', KEYS[1], ARGV[1], t .. ':' .. (n - 1) .. ':' .. a)
      end
      return 0
    end
    if t == total then
      if tonumber(a) > at then keep = ARGV[2] .. ':' .. (n + 1) .. ':' .. a
      else keep = ARGV[2] .. ':' .. (n + 1) .. ':' .. ARGV[3] end
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], keep)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
"#,
    )
});
