//! The Redis store: one cache shared by every worker replica.
//!
//! Each versioned write is one Lua script, so the version check and the
//! write are a single atomic step on the server: two replicas (or a
//! redelivery racing the first attempt) can never both "win" a register.
//! A message's steps ([`Step`]) are sent as one pipeline of script calls:
//! one round trip per message instead of one per write, each call still
//! atomic on the server (READY, rare, keeps its own round trips).
//!
//! # Layout (prefix `P`)
//!
//! * `P:g:<guild>`: hash of the guild's registers: `f` (guild floor),
//!   `lh` (the last four lifecycle versions applied as newest), `gm`/`gj`
//!   (a session-gap join's READY mark and its snapshot's version),
//!   `f<kind letter>` (per-collection floors), `sh` (admitted), `core`, `av`,
//!   `cb`/`cm` (member-count base and the snapshot version it is from).
//! * `P:g:<guild>:c|r|m|e|p|v`: channels, roles, members, emojis,
//!   presences, voice states; field = id.
//! * `P:g:<guild>:d`: member-count deltas; field = version.
//! * `P:u`: users; field = id. `P:bots`: the bot's own user ids (READY),
//!   never collected.
//! * `P:s:<total>:<shard>:<epoch>` (+ `:low`): the delivery window of a
//!   session.
//! * `P:ready:<total>:<shard>` (`v`, `at`, `p`) and `P:ready:<total>:<shard>:L`:
//!   the shard's latest READY and the guilds it listed (`:P`: those of the
//!   one before, `p` = 1 when there was one, for session-gap joins);
//!   `P:shard:<total>:<shard>:guilds`: the
//!   guilds admitted from that shard (meta field `sh` marks admission).
//! * `P:reshard` (`k`, `m`): the newest reshard marker; `P:pair:<guild>`:
//!   the unmatched copies of a reshard window (field = fingerprint, value =
//!   `total:count:at_ms`), expiring (see [`crate::reshard`]).
//!   A shard is named with its total because during a live reshard shard 3
//!   of 64 and shard 3 of 128 are two live sessions (see
//!   [`envelope::ShardRef`]).
//!
//! A register's value is `<version><L json | D deleted-at-ms>`. Versions are
//! fixed-width lowercase hex (`epoch` then `seq`, 16 digits each), compared
//! in Lua 8 digits at a time as numbers, which is exact (no float rounding,
//! no locale-dependent string collation).

use crate::model::{
    Channel, Emoji, Entity, GuildCore, GuildView, Kind, Member, Presence, Role, User, UserVersion,
    Versioned, VoiceState,
};
use crate::mutation::Mutation;
use crate::redis_scripts::SWEEP_USERS;
use crate::store::{Step, Store, StoreError};
use envelope::{ReshardMarker, ShardRef, Version};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

mod writes;

/// Largest seq the delivery window can hold exactly (a Redis score is a
/// double).
const MAX_EXACT_SEQ: u64 = 1 << 53;

fn ver(v: Version) -> String {
    format!("{:016x}{:016x}", v.epoch, v.seq)
}

fn user_ver(v: UserVersion) -> String {
    format!(
        "{:016x}{:08x}{:016x}{:016x}",
        v.received_at, v.shard_id, v.version.epoch, v.version.seq
    )
}

fn parse_ver(s: &str) -> Option<Version> {
    let epoch = u64::from_str_radix(s.get(..16)?, 16).ok()?;
    let seq = u64::from_str_radix(s.get(16..32)?, 16).ok()?;
    Some(Version::new(epoch, seq))
}

fn letter(kind: Kind) -> &'static str {
    match kind {
        Kind::Channel => "c",
        Kind::Role => "r",
        Kind::Member => "m",
        Kind::Emoji => "e",
        Kind::Presence => "p",
        Kind::Voice => "v",
    }
}

fn live<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map(|j| format!("L{j}"))
        .map_err(|e| StoreError::Corrupt {
            key: "(encode)".into(),
            reason: e.to_string(),
        })
}

fn entity_payload(e: &Entity) -> Result<String, StoreError> {
    match e {
        Entity::Channel(v) => live(v),
        Entity::Role(v) => live(v),
        Entity::Member(v) => live(v),
        Entity::Emoji(v) => live(v),
        Entity::Presence(v) => live(v),
        Entity::Voice(v) => live(v),
    }
}

/// A decoded register: version and live JSON (`None` for a tombstone).
fn split(key: &str, raw: &str) -> Result<(Version, Option<String>), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    let version = parse_ver(raw).ok_or_else(|| corrupt("bad version"))?;
    match raw.get(32..33) {
        Some("L") => Ok((version, raw.get(33..).map(str::to_owned))),
        Some("D") => Ok((version, None)),
        _ => Err(corrupt("bad register tag")),
    }
}

fn decode<T: DeserializeOwned>(key: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// A prepared script call (the scripts are statics).
type Invocation = redis::ScriptInvocation<'static>;

/// The versioned cache in Redis.
#[derive(Clone)]
pub struct RedisStore {
    /// Reconnects after a Redis outage (a multiplexed connection alone
    /// never does, and the worker would stay broken).
    con: dnscache::RedisConnection,
    prefix: String,
    window_ttl_ms: u64,
    pipelined: bool,
}

impl RedisStore {
    /// The users `ids` that are cached, in one round trip (`HMGET`): what a
    /// GUILD_CREATE or a member chunk needs for its members, without a
    /// round trip per member.
    pub async fn users(&self, ids: &[u64]) -> Result<HashMap<u64, User>, StoreError> {
        let mut out = HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(out);
        }
        let mut con = self.con.clone();
        let key = format!("{}:u", self.prefix);
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&key)
            .arg(ids)
            .query_async(&mut con)
            .await?;
        for (id, raw) in ids.iter().zip(raw) {
            if let Some(raw) = raw {
                out.insert(*id, user_register(&key, &raw)?);
            }
        }
        Ok(out)
    }

    /// Connects to `url` and keeps every key under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let con =
            dnscache::RedisConnection::with_client(client, redis::AsyncConnectionConfig::new());
        Self::over(con, prefix).await
    }

    /// A store on `con`, e.g. `dnscache::RedisConnection::lazy(&resolver,
    /// url)`, so the host name is resolved by the process's caching
    /// resolver and `rediss://` trusts `[tls]`; dials now, so an
    /// unreachable Redis is an error at start-up.
    pub async fn over(con: dnscache::RedisConnection, prefix: &str) -> Result<Self, StoreError> {
        con.ready().await?;
        Ok(Self::lazy(con, prefix))
    }

    /// A store on `con` that dials on first use: for a reader that must
    /// start (and report not ready) while Redis is down, not exit.
    pub fn lazy(con: dnscache::RedisConnection, prefix: &str) -> Self {
        Self {
            con,
            prefix: prefix.to_owned(),
            window_ttl_ms: 24 * 3600 * 1000,
            pipelined: true,
        }
    }

    /// Every guild admitted from any shard of any total (the union of
    /// `P:shard:*:guilds`), ascending: what a reader of the whole cache (the
    /// relay) lists. A guild the bot left is in no set any more.
    pub async fn guild_ids(&self) -> Result<Vec<u64>, StoreError> {
        let mut con = self.con.clone();
        let pattern = format!("{}:shard:*:guilds", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<u64> = redis::cmd("SUNION")
            .arg(&keys)
            .query_async(&mut con)
            .await?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// The bot's own user id, from the READYs seen (`P:bots`).
    pub async fn bot_user_id(&self) -> Result<Option<u64>, StoreError> {
        let mut con = self.con.clone();
        let ids: Vec<u64> = redis::cmd("SMEMBERS")
            .arg(format!("{}:bots", self.prefix))
            .query_async(&mut con)
            .await?;
        Ok(ids.into_iter().min())
    }

    /// How long a session's delivery window outlives its last event.
    pub fn with_window_ttl_ms(mut self, ttl_ms: u64) -> Self {
        self.window_ttl_ms = ttl_ms.max(1);
        self
    }

    /// With `false`, [`Store::run`] makes one round trip per step instead
    /// of one per batch (kept to measure what pipelining buys).
    pub fn with_pipelining(mut self, pipelined: bool) -> Self {
        self.pipelined = pipelined;
        self
    }

    /// The guild's keys: one per [`Kind`] (in [`Kind::index`] order), the
    /// deltas, the meta hash.
    fn guild_keys(&self, g: u64) -> [String; 8] {
        let m = format!("{}:g:{g}", self.prefix);
        [
            format!("{m}:c"),
            format!("{m}:r"),
            format!("{m}:m"),
            format!("{m}:e"),
            format!("{m}:p"),
            format!("{m}:v"),
            format!("{m}:d"),
            m,
        ]
    }

    /// Keys in script order: meta, the kinds, the deltas.
    fn guild_script_keys(&self, g: u64, inv: &mut Invocation) {
        let [c, r, m, e, p, v, d, meta] = self.guild_keys(g);
        inv.key(meta)
            .key(c)
            .key(r)
            .key(m)
            .key(e)
            .key(p)
            .key(v)
            .key(d);
    }

    fn shard_keys(&self, shard: ShardRef) -> [String; 4] {
        let ShardRef { id, total } = shard;
        let r = format!("{}:ready:{total}:{id}", self.prefix);
        [
            r.clone(),
            format!("{r}:L"),
            format!("{}:shard:{total}:{id}:guilds", self.prefix),
            format!("{r}:P"),
        ]
    }

    /// The reshard window: `k` (order key) and `m` (the marker's JSON).
    fn reshard_key(&self) -> String {
        format!("{}:reshard", self.prefix)
    }

    fn meta(&self, g: u64) -> String {
        format!("{}:g:{g}", self.prefix)
    }

    fn kind_key(&self, g: u64, kind: Kind) -> String {
        format!("{}:g:{g}:{}", self.prefix, letter(kind))
    }

    async fn invoke(&self, inv: &mut Invocation) -> Result<bool, StoreError> {
        let mut con = self.con.clone();
        let n: i64 = inv.invoke_async(&mut con).await?;
        Ok(n != 0)
    }

    /// Every key matching `pattern` (SCAN, never KEYS).
    async fn scan(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut con = self.con.clone();
        let mut cursor: u64 = 0;
        let mut all = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut con)
                .await?;
            all.extend(keys);
            if next == 0 {
                return Ok(all);
            }
            cursor = next;
        }
    }

    /// Deletes every key under the prefix (tests, tear-down). Uses SCAN,
    /// never KEYS.
    pub async fn purge(&self) -> Result<usize, StoreError> {
        let mut con = self.con.clone();
        let pattern = format!("{}:*", self.prefix);
        let mut cursor: u64 = 0;
        let mut n = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut con)
                .await?;
            if !keys.is_empty() {
                n += keys.len();
                let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut con).await?;
            }
            if next == 0 {
                return Ok(n);
            }
            cursor = next;
        }
    }
}

impl Store for RedisStore {
    async fn apply(&self, mutation: Mutation) -> Result<bool, StoreError> {
        match self.invocation(&mutation)? {
            Some(mut inv) => self.invoke(&mut inv).await,
            None => match mutation {
                Mutation::Ready {
                    shard,
                    version,
                    at_ms,
                    guilds,
                    bot_id,
                    handover,
                } => {
                    if let Some(id) = bot_id {
                        let mut con = self.con.clone();
                        let _: i64 = redis::cmd("SADD")
                            .arg(format!("{}:bots", self.prefix))
                            .arg(id)
                            .query_async(&mut con)
                            .await?;
                    }
                    self.ready(shard, version, at_ms, &guilds, handover).await
                }
                _ => Ok(false),
            },
        }
    }

    async fn run(&self, steps: Vec<Step>) -> Result<Vec<bool>, StoreError> {
        let mut out = Vec::with_capacity(steps.len());
        let mut invs = Vec::with_capacity(steps.len());
        for step in steps {
            match self.step_invocation(&step)? {
                Some(mut inv) if !self.pipelined => out.push(self.invoke(&mut inv).await?),
                Some(inv) => invs.push(inv),
                None => {
                    // READY: flush what precedes it, keeping the order.
                    out.extend(self.pipeline(&std::mem::take(&mut invs)).await?);
                    if let Step::Apply(m) = step {
                        out.push(Store::apply(self, m).await?);
                    }
                }
            }
        }
        out.extend(self.pipeline(&invs).await?);
        Ok(out)
    }

    async fn first_delivery(&self, shard: ShardRef, version: Version) -> Result<bool, StoreError> {
        self.invoke(&mut self.seen_invocation(shard, version)?)
            .await
    }

    async fn admit(&self, shard: ShardRef, guild_id: u64) -> Result<(), StoreError> {
        self.invoke(&mut self.admit_invocation(shard, guild_id))
            .await
            .map(|_| ())
    }

    async fn guild(&self, guild_id: u64) -> Result<Option<GuildView>, StoreError> {
        let keys = self.guild_keys(guild_id);
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.hgetall(k);
        }
        let mut con = self.con.clone();
        type Rows = Vec<(u64, String)>;
        #[allow(clippy::type_complexity)]
        let (c, r, m, e, p, v, d, meta): (
            Rows,
            Rows,
            Rows,
            Rows,
            Rows,
            Rows,
            Vec<(String, i64)>,
            Vec<(String, String)>,
        ) = pipe.query_async(&mut con).await?;
        let kinds = [c, r, m, e, p, v];
        if kinds.iter().all(Vec::is_empty) && d.is_empty() && meta.is_empty() {
            return Ok(None);
        }
        let meta_key = &keys[7];
        let field = |name: &str| {
            meta.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let mut view = GuildView::default();
        if let Some(raw) = field("core") {
            match split(meta_key, raw)? {
                (version, Some(json)) => {
                    view.core = Some(Versioned {
                        version,
                        value: decode::<GuildCore>(meta_key, &json)?,
                    })
                }
                (_, None) => return Ok(None),
            }
        }
        view.available = field("av").is_some_and(|raw| raw.ends_with('1'));
        let base: i64 = field("cb").and_then(|s| s.parse().ok()).unwrap_or(0);
        // `cb` and the deltas come from Redis: a corrupt value must not
        // overflow (a panic in debug builds).
        view.member_count = d.iter().fold(base, |acc, (_, x)| acc.saturating_add(*x));
        for (kind, rows) in Kind::ALL.into_iter().zip(kinds) {
            let key = &keys[kind.index()];
            let floor = field(&format!("f{}", letter(kind)))
                .and_then(parse_ver)
                .unwrap_or(Version::ZERO);
            for (id, raw) in rows {
                let (version, json) = split(key, &raw)?;
                let Some(json) = json.filter(|_| version >= floor) else {
                    continue;
                };
                let entity = match kind {
                    Kind::Channel => Entity::Channel(decode::<Channel>(key, &json)?),
                    Kind::Role => Entity::Role(decode::<Role>(key, &json)?),
                    Kind::Member => Entity::Member(decode::<Member>(key, &json)?),
                    Kind::Emoji => Entity::Emoji(decode::<Emoji>(key, &json)?),
                    Kind::Presence => Entity::Presence(decode::<Presence>(key, &json)?),
                    Kind::Voice => Entity::Voice(decode::<VoiceState>(key, &json)?),
                };
                view.insert(id, version, entity);
            }
        }
        Ok(Some(view))
    }

    async fn announced(&self, guild_id: u64, version: Version) -> Result<bool, StoreError> {
        let step = Step::Announced { guild_id, version };
        match self.step_invocation(&step)? {
            Some(mut inv) => self.invoke(&mut inv).await,
            None => Ok(false),
        }
    }

    async fn gap_join(&self, guild_id: u64, version: Version) -> Result<bool, StoreError> {
        let step = Step::GapJoin { guild_id, version };
        match self.step_invocation(&step)? {
            Some(mut inv) => self.invoke(&mut inv).await,
            None => Ok(false),
        }
    }

    async fn reshard_mark(&self, marker: ReshardMarker) -> Result<bool, StoreError> {
        match self.step_invocation(&Step::Marker(marker))? {
            Some(mut inv) => self.invoke(&mut inv).await,
            None => Ok(false),
        }
    }

    async fn reshard_window(&self) -> Result<Option<ReshardMarker>, StoreError> {
        let mut con = self.con.clone();
        let json: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(self.reshard_key())
            .arg("m")
            .query_async(&mut con)
            .await?;
        json.map(|j| {
            serde_json::from_slice(&j).map_err(|e| StoreError::Corrupt {
                key: self.reshard_key(),
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    async fn pair(
        &self,
        guild_id: u64,
        total: u32,
        fingerprint: u64,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        let step = Step::Pair {
            guild_id,
            total,
            fingerprint,
            at_ms,
        };
        match self.step_invocation(&step)? {
            Some(mut inv) => self.invoke(&mut inv).await,
            None => Ok(true),
        }
    }

    async fn collect_users(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let mut con = self.con.clone();
        // Every live member id, from each guild's member hash.
        let mut referenced: std::collections::HashSet<u64> = redis::cmd("SMEMBERS")
            .arg(format!("{}:bots", self.prefix))
            .query_async::<Vec<u64>>(&mut con)
            .await?
            .into_iter()
            .collect();
        for key in self.scan(&format!("{}:g:*:m", self.prefix)).await? {
            let rows: Vec<(u64, String)> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut con)
                .await?;
            referenced.extend(
                rows.into_iter()
                    .filter(|(_, raw)| raw.get(32..33) == Some("L"))
                    .map(|(id, _)| id),
            );
        }
        // Unreferenced users, deleted by a script that re-checks each one's
        // write time, so a user rewritten meanwhile stays.
        let users = format!("{}:u", self.prefix);
        let mut cursor: u64 = 0;
        let mut dropped = 0usize;
        loop {
            let (next, page): (u64, Vec<(u64, String)>) = redis::cmd("HSCAN")
                .arg(&users)
                .arg(cursor)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut con)
                .await?;
            let gone: Vec<u64> = page
                .into_iter()
                .filter(|(id, _)| !referenced.contains(id))
                .map(|(id, _)| id)
                .collect();
            if !gone.is_empty() {
                let mut inv = SWEEP_USERS.prepare_invoke();
                inv.key(&users).arg(format!("{cutoff_ms:016x}")).arg(&gone);
                let n: i64 = inv.invoke_async(&mut con).await?;
                dropped += usize::try_from(n).unwrap_or(0);
            }
            if next == 0 {
                return Ok(dropped);
            }
            cursor = next;
        }
    }

    async fn user(&self, user_id: u64) -> Result<Option<User>, StoreError> {
        let mut con = self.con.clone();
        let key = format!("{}:u", self.prefix);
        let raw: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg(user_id)
            .query_async(&mut con)
            .await?;
        raw.map(|raw| user_register(&key, &raw)).transpose()
    }
}

/// A user's register (`<56 header chars>L<payload>`) decoded.
fn user_register(key: &str, raw: &str) -> Result<User, StoreError> {
    match raw.get(56..57) {
        Some("L") => decode(key, raw.get(57..).unwrap_or_default()),
        _ => Err(StoreError::Corrupt {
            key: key.to_owned(),
            reason: "bad user register".into(),
        }),
    }
}
