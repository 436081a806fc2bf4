//! The write side of the Redis store: each mutation or step as its Lua
//! script call ([`crate::redis_scripts`]), READY's few round trips, and a
//! message's calls as one pipeline.

use super::{Invocation, MAX_EXACT_SEQ, RedisStore, entity_payload, letter, live, user_ver, ver};
use crate::model::Kind;
use crate::mutation::{Mutation, Snapshot};
use crate::redis_scripts::{
    ADMIT, ANNOUNCED, AVAIL, DELTA, GAP_JOIN, LIST, LISTED, PAIR, PUT, READY, REG, REMOVE,
    RESHARD_MARK, SEEN, SNAPSHOT,
};
use crate::store::{DELIVERY_WINDOW, MAX_COUNT_DELTAS, Step, StoreError};
use envelope::{ShardRef, Version};

impl RedisStore {
    pub(super) async fn ready(
        &self,
        shard: ShardRef,
        version: Version,
        at_ms: u64,
        guilds: &[u64],
        handover: bool,
    ) -> Result<bool, StoreError> {
        let [ready, listed, members, previous] = self.shard_keys(shard);
        let mut inv = READY.prepare_invoke();
        inv.key(&ready)
            .key(&listed)
            .key(&previous)
            .arg(ver(version))
            .arg(at_ms);
        for g in guilds {
            inv.arg(g);
        }
        let mut con = self.con.clone();
        let applied: i64 = inv.invoke_async(&mut con).await?;
        if applied == 0 {
            return Ok(false);
        }
        // 2: a retry of a READY whose per-guild steps may not all have run.
        for &g in guilds {
            let mut inv = LISTED.prepare_invoke();
            inv.key(self.meta(g))
                .key(&members)
                .key(&ready)
                .key(&previous)
                .arg(g)
                .arg(ver(version))
                .arg(if handover { "1" } else { "0" });
            self.invoke(&mut inv).await?;
        }
        // Guilds admitted after the READY script see its record themselves.
        let known: Vec<u64> = redis::cmd("SMEMBERS")
            .arg(&members)
            .query_async(&mut con)
            .await?;
        let listed: std::collections::HashSet<u64> = guilds.iter().copied().collect();
        for g in known.into_iter().filter(|g| !listed.contains(g)) {
            let mut inv = REMOVE.prepare_invoke();
            self.guild_script_keys(g, &mut inv);
            inv.arg(ver(version)).arg(at_ms);
            self.invoke(&mut inv).await?;
        }
        Ok(applied == 1)
    }

    pub(super) fn snapshot(&self, s: &Snapshot) -> Result<Invocation, StoreError> {
        let mut inv = SNAPSHOT.prepare_invoke();
        self.guild_script_keys(s.guild_id, &mut inv);
        let complete: String = Kind::ALL
            .iter()
            .filter(|k| s.complete[k.index()])
            .map(|k| letter(*k))
            .collect();
        inv.arg(ver(s.version))
            .arg(live(&s.core)?)
            .arg(s.member_count.map(|n| n.to_string()).unwrap_or_default())
            .arg(complete);
        for kind in Kind::ALL {
            let items: Vec<_> = s
                .entities
                .iter()
                .filter(|(_, e)| e.kind() == kind)
                .collect();
            inv.arg(items.len());
            for (id, entity) in items {
                inv.arg(id).arg(entity_payload(entity)?);
            }
        }
        Ok(inv)
    }

    /// The script call of a mutation; `None` for READY, which takes
    /// several round trips ([`RedisStore::ready`]).
    pub(super) fn invocation(&self, mutation: &Mutation) -> Result<Option<Invocation>, StoreError> {
        match *mutation {
            Mutation::Snapshot(ref s) => self.snapshot(s).map(Some),
            Mutation::List {
                guild_id,
                version,
                kind,
                ref items,
            } => {
                let mut inv = LIST.prepare_invoke();
                inv.key(self.meta(guild_id))
                    .key(self.kind_key(guild_id, kind))
                    .arg(ver(version))
                    .arg(letter(kind));
                for (id, entity) in items.iter().filter(|(_, e)| e.kind() == kind) {
                    inv.arg(id).arg(entity_payload(entity)?);
                }
                Ok(Some(inv))
            }
            Mutation::Remove {
                guild_id,
                version,
                at_ms,
            } => {
                let mut inv = REMOVE.prepare_invoke();
                self.guild_script_keys(guild_id, &mut inv);
                inv.arg(ver(version)).arg(at_ms);
                Ok(Some(inv))
            }
            Mutation::Ready { .. } => Ok(None),
            Mutation::Availability {
                guild_id,
                version,
                available,
            } => {
                let mut inv = AVAIL.prepare_invoke();
                inv.key(self.meta(guild_id))
                    .arg(ver(version))
                    .arg(if available { "1" } else { "0" });
                Ok(Some(inv))
            }
            Mutation::Core {
                guild_id,
                version,
                ref core,
            } => {
                let mut inv = REG.prepare_invoke();
                inv.key(self.meta(guild_id))
                    .arg("core")
                    .arg(ver(version))
                    .arg(live(core)?);
                Ok(Some(inv))
            }
            Mutation::Put {
                guild_id,
                version,
                id,
                ref entity,
            } => {
                let kind = entity.kind();
                let mut inv = PUT.prepare_invoke();
                inv.key(self.meta(guild_id))
                    .key(self.kind_key(guild_id, kind))
                    .arg(format!("f{}", letter(kind)))
                    .arg(id)
                    .arg(ver(version))
                    .arg(entity_payload(entity)?);
                Ok(Some(inv))
            }
            Mutation::Delete {
                guild_id,
                version,
                kind,
                id,
                at_ms,
            } => {
                let mut inv = PUT.prepare_invoke();
                inv.key(self.meta(guild_id))
                    .key(self.kind_key(guild_id, kind))
                    .arg(format!("f{}", letter(kind)))
                    .arg(id)
                    .arg(ver(version))
                    .arg(format!("D{at_ms}"));
                Ok(Some(inv))
            }
            Mutation::MemberDelta {
                guild_id,
                version,
                delta,
            } => {
                let [_, _, _, _, _, _, d, meta] = self.guild_keys(guild_id);
                let mut inv = DELTA.prepare_invoke();
                inv.key(meta)
                    .key(d)
                    .arg(ver(version))
                    .arg(delta)
                    .arg(MAX_COUNT_DELTAS);
                Ok(Some(inv))
            }
            Mutation::User {
                id,
                version,
                ref user,
            } => {
                let mut inv = REG.prepare_invoke();
                inv.key(format!("{}:u", self.prefix))
                    .arg(id)
                    .arg(user_ver(version))
                    .arg(live(user)?);
                Ok(Some(inv))
            }
        }
    }

    /// The script call of any step but a READY.
    pub(super) fn step_invocation(&self, step: &Step) -> Result<Option<Invocation>, StoreError> {
        match step {
            Step::Apply(m) => self.invocation(m),
            Step::Admit { shard, guild_id } => Ok(Some(self.admit_invocation(*shard, *guild_id))),
            Step::FirstDelivery { shard, version } => {
                self.seen_invocation(*shard, *version).map(Some)
            }
            Step::Announced { guild_id, version } => {
                let mut inv = ANNOUNCED.prepare_invoke();
                inv.key(self.meta(*guild_id)).arg(ver(*version));
                Ok(Some(inv))
            }
            Step::GapJoin { guild_id, version } => {
                let mut inv = GAP_JOIN.prepare_invoke();
                inv.key(self.meta(*guild_id)).arg(ver(*version));
                Ok(Some(inv))
            }
            Step::Marker(m) => {
                let mut inv = RESHARD_MARK.prepare_invoke();
                inv.key(self.reshard_key())
                    .arg(format!("{:016x}{}", m.id, m.phase as u8))
                    .arg(m.payload());
                Ok(Some(inv))
            }
            Step::Pair {
                guild_id,
                total,
                fingerprint,
                at_ms,
            } => {
                let mut inv = PAIR.prepare_invoke();
                inv.key(format!("{}:pair:{guild_id}", self.prefix))
                    .arg(format!("{fingerprint:016x}"))
                    .arg(*total)
                    .arg(*at_ms)
                    .arg(crate::reshard::PAIR_TTL_MS);
                Ok(Some(inv))
            }
        }
    }

    pub(super) fn seen_invocation(
        &self,
        shard: ShardRef,
        version: Version,
    ) -> Result<Invocation, StoreError> {
        if version.seq >= MAX_EXACT_SEQ {
            return Err(StoreError::Unsupported(
                "seq above 2^53 cannot be tracked in a Redis delivery window",
            ));
        }
        let ShardRef { id, total } = shard;
        let window = format!("{}:s:{total}:{id}:{:016x}", self.prefix, version.epoch);
        let mut inv = SEEN.prepare_invoke();
        inv.key(&window)
            .key(format!("{window}:low"))
            .arg(version.seq)
            .arg(DELIVERY_WINDOW)
            .arg(self.window_ttl_ms);
        Ok(inv)
    }

    pub(super) fn admit_invocation(&self, shard: ShardRef, guild_id: u64) -> Invocation {
        let [ready, listed, members, _] = self.shard_keys(shard);
        let mut inv = ADMIT.prepare_invoke();
        self.guild_script_keys(guild_id, &mut inv);
        inv.key(ready).key(listed).key(members).arg(guild_id);
        inv
    }

    /// Runs `invs` in one pipelined round trip, each script atomic on the
    /// server. A script missing from the server's cache (restarted, or
    /// `SCRIPT FLUSH`) is loaded and its calls retried; the calls are
    /// independent, idempotent register writes, so the retry is safe.
    pub(super) async fn pipeline(&self, invs: &[Invocation]) -> Result<Vec<bool>, StoreError> {
        if invs.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for inv in invs {
            pipe.invoke_script(inv);
        }
        let answers: Vec<redis::RedisResult<i64>> = pipe.query_async(&mut con).await?;
        let mut out = Vec::with_capacity(invs.len());
        for (inv, answer) in invs.iter().zip(answers) {
            let n = match answer {
                Ok(n) => n,
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    inv.invoke_async(&mut con).await?
                }
                Err(e) => return Err(e.into()),
            };
            out.push(n != 0);
        }
        Ok(out)
    }
}
