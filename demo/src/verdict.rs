//! The two checks a demo run must pass: the cache equals the simulator's
//! ground truth, and no guild was announced as joined that the bot did not
//! really join.
//!
//! # Algorithm
//! **Cache against truth.** Each guild of [`Truth`] is rendered as a
//! GUILD_CREATE and parsed by the worker's own parser into a scratch
//! [`MemoryStore`], so both sides go through one model; versions are
//! erased and the guild's fields, channels, roles, members, member count
//! and availability compared with what the demo's store returns. Guilds the
//! run saw that are no longer in the truth (removed) must not be cached.
//!
//! **Real joins.** The simulator's ledger lists every dispatch of every
//! session in seq order. A GUILD_CREATE is a real join when its guild was
//! not listed in that session's READY and had no GUILD_CREATE before in
//! that session; any other GUILD_CREATE is an initial load or the end of
//! an outage. (A guild in an outage at READY is listed there, so its late
//! GUILD_CREATE is not a join.) READY's list comes from the READY payload
//! the simulator sent, as the worker saw it. An announced join whose guild
//! is not a real join, or a real join announced twice, is a false join.

use discord_sim::{GuildTruth, Ledger, Truth};
use envelope::{Event, GuildCreateKind};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use worker::{Channel, GuildCore, GuildView, Member, MemoryStore, Role, Store, StoreError};

/// A guild as compared: the view without versions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plain {
    core: Option<GuildCore>,
    available: bool,
    member_count: i64,
    channels: BTreeMap<u64, Channel>,
    roles: BTreeMap<u64, Role>,
    members: BTreeMap<u64, Member>,
}

impl Plain {
    fn of(v: GuildView) -> Self {
        fn values<T>(m: BTreeMap<u64, worker::Versioned<T>>) -> BTreeMap<u64, T> {
            m.into_iter().map(|(k, v)| (k, v.value)).collect()
        }
        Self {
            core: v.core.map(|c| c.value),
            available: v.available,
            member_count: v.member_count,
            channels: values(v.channels),
            roles: values(v.roles),
            members: values(v.members),
        }
    }

    /// The first field that differs, for the report.
    fn difference(&self, other: &Self) -> &'static str {
        if self.core != other.core {
            "guild fields"
        } else if self.available != other.available {
            "availability"
        } else if self.member_count != other.member_count {
            "member_count"
        } else if self.channels != other.channels {
            "channels"
        } else if self.roles != other.roles {
            "roles"
        } else {
            "members"
        }
    }
}

/// The truth of one guild through the worker's parser.
fn expected(guild_id: u64, t: &GuildTruth) -> Option<Plain> {
    let mut g = t.guild.clone();
    if !g.is_object() {
        g = json!({});
    }
    g["id"] = json!(guild_id.to_string());
    g["member_count"] = json!(t.member_count);
    g["channels"] = Value::Array(t.channels.values().cloned().collect());
    g["roles"] = Value::Array(t.roles.values().cloned().collect());
    g["members"] = Value::Array(t.members.values().cloned().collect());
    let d = g.to_string();
    let ev = Event {
        epoch: 1,
        seq: 1,
        received_at: 0,
        t: "GUILD_CREATE",
        guild_id: Some(guild_id),
        guild_create: Some(GuildCreateKind::Initial),
        d: d.as_bytes(),
    };
    let scratch = MemoryStore::new();
    // A scratch store of one guild: any total above the shard id names it.
    let shard = envelope::ShardRef::new(t.shard, u32::MAX);
    let parsed = worker::parse(shard, &ev, &worker::CacheOptions::default()).ok()?;
    for m in parsed.mutations {
        scratch.apply_now(m);
    }
    let mut view = Plain::of(scratch.guild_now(guild_id)?);
    view.available = !t.unavailable;
    Some(view)
}

/// The outcome of comparing the cache with the truth.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Guilds compared (the truth's and the removed ones).
    pub guilds: usize,
    /// `"guild <id>: <what differs>"`, at most [`MAX_REPORTED`].
    pub mismatches: Vec<String>,
    /// All mismatching guilds.
    pub mismatched: usize,
}

/// Mismatches listed in a [`Comparison`].
pub const MAX_REPORTED: usize = 5;

impl Comparison {
    pub fn equal(&self) -> bool {
        self.mismatched == 0
    }

    fn differs(&mut self, what: String) {
        self.mismatched += 1;
        if self.mismatches.len() < MAX_REPORTED {
            self.mismatches.push(what);
        }
    }
}

/// Compares `store` with `truth`; `seen` are other guild ids the run saw
/// (they must be gone from the cache unless the truth has them).
pub async fn compare_cache<S: Store>(
    store: &S,
    truth: &Truth,
    seen: impl IntoIterator<Item = u64>,
) -> Result<Comparison, StoreError> {
    let mut out = Comparison::default();
    for (&gid, t) in &truth.guilds {
        out.guilds += 1;
        let Some(want) = expected(gid, t) else {
            out.differs(format!("guild {gid}: the truth does not parse"));
            continue;
        };
        match store.guild(gid).await? {
            None => out.differs(format!("guild {gid}: not cached")),
            Some(v) => {
                let got = Plain::of(v);
                if got != want {
                    out.differs(format!("guild {gid}: {} differ", got.difference(&want)));
                }
            }
        }
    }
    let gone: BTreeSet<u64> = seen
        .into_iter()
        .filter(|g| !truth.guilds.contains_key(g))
        .collect();
    for gid in gone {
        out.guilds += 1;
        if store.guild(gid).await?.is_some_and(|v| v.core.is_some()) {
            out.differs(format!("guild {gid}: removed, still cached"));
        }
    }
    Ok(out)
}

/// Every guild id the ledger mentions.
pub fn ledger_guilds(ledger: &Ledger) -> BTreeSet<u64> {
    ledger
        .shards
        .values()
        .flatten()
        .filter_map(|e| e.guild_id)
        .collect()
}

/// The clean stream against the ledger's logical events: what a live
/// reshard must keep (each event once although both totals got it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamCheck {
    /// Logical guild events some session received.
    pub events: usize,
    /// Of those, received by sessions of two totals.
    pub both: usize,
    /// Sent (per guild and event name) more often than emitted.
    pub lost: usize,
    /// Emitted more often than sent.
    pub twice: usize,
    /// The first few differences, for the table.
    pub examples: Vec<String>,
}

/// Per guild and gateway event name, the logical events of `ledger` that
/// reached a session against `emitted` (the worker's clean events by the
/// same key, READY-time loads and markers left out). GUILD_CREATE is left
/// to the join audit: a guild back from an outage that a session's READY
/// listed as unavailable is announced as that session's load (`initial`),
/// which READY-time loads share, so the two cannot be told apart here.
pub fn check_stream(ledger: &Ledger, emitted: &HashMap<(u64, String), u64>) -> StreamCheck {
    let mut out = StreamCheck::default();
    let mut want: HashMap<(u64, String), u64> = HashMap::new();
    for e in ledger.logical_events().into_values() {
        let Some(g) = e.guild_id else { continue };
        if e.deliveries.is_empty() || e.event == "GUILD_CREATE" {
            continue;
        }
        out.events += 1;
        let first = e.deliveries[0].shard_total;
        if e.deliveries.iter().any(|d| d.shard_total != first) {
            out.both += 1;
        }
        *want.entry((g, e.event)).or_default() += 1;
    }
    let keys: BTreeSet<&(u64, String)> = want
        .keys()
        .chain(emitted.keys())
        .filter(|k| k.1 != "GUILD_CREATE")
        .collect();
    for k in keys {
        let (w, got) = (
            want.get(k).copied().unwrap_or(0),
            emitted.get(k).copied().unwrap_or(0),
        );
        if w != got && out.examples.len() < 5 {
            out.examples
                .push(format!("guild {} {}: sent {w}, emitted {got}", k.0, k.1));
        }
        out.lost += usize::try_from(w.saturating_sub(got)).unwrap_or(usize::MAX);
        out.twice += usize::try_from(got.saturating_sub(w)).unwrap_or(usize::MAX);
    }
    out
}

/// Joins, real and announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinAudit {
    /// Guilds the bot really joined while a session was live.
    pub real: usize,
    /// `GUILD_JOINED` announcements.
    pub announced: usize,
    /// Announcements of a guild that was not a real join, plus repeats.
    pub false_joins: usize,
    /// Real joins never announced.
    pub missed: usize,
    /// Ledger sessions whose READY the worker never saw (their
    /// GUILD_CREATEs cannot be classified and are not counted as joins).
    pub sessions_without_ready: usize,
}

/// Audits `announced` against the joins in `ledger`, given each session's
/// READY guild list.
pub fn audit_joins(
    ledger: &Ledger,
    ready_guilds: &HashMap<String, HashSet<u64>>,
    announced: &[u64],
) -> JoinAudit {
    let mut real: BTreeSet<u64> = BTreeSet::new();
    let mut without_ready: HashSet<&str> = HashSet::new();
    let mut created: HashMap<&str, HashSet<u64>> = HashMap::new();
    for e in ledger.shards.values().flatten() {
        let (Some(g), "GUILD_CREATE") = (e.guild_id, e.event.as_str()) else {
            continue;
        };
        let Some(listed) = ready_guilds.get(&e.session_id) else {
            without_ready.insert(&e.session_id);
            continue;
        };
        let before = created.entry(&e.session_id).or_default();
        if !listed.contains(&g) && before.insert(g) {
            real.insert(g);
        }
    }
    let mut counted: BTreeSet<u64> = BTreeSet::new();
    let false_joins = announced
        .iter()
        .filter(|g| !real.contains(g) || !counted.insert(**g))
        .count();
    JoinAudit {
        real: real.len(),
        announced: announced.len(),
        false_joins,
        missed: real.difference(&counted).count(),
        sessions_without_ready: without_ready.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use discord_sim::LedgerEntry;

    fn entry(session: &str, seq: u64, event: &str, guild: Option<u64>) -> LedgerEntry {
        LedgerEntry {
            session_id: session.into(),
            seq,
            event: event.into(),
            guild_id: guild,
            shard_total: 1,
            event_id: None,
        }
    }

    #[test]
    fn joins_are_guild_creates_outside_ready() {
        let mut ledger = Ledger::default();
        ledger.shards.insert(
            0,
            vec![
                entry("a", 1, "READY", None),
                entry("a", 2, "GUILD_CREATE", Some(10)),
                // 11 was in an outage at READY: its GUILD_CREATE is no join.
                entry("a", 3, "GUILD_CREATE", Some(11)),
                entry("a", 4, "GUILD_CREATE", Some(20)),
                entry("a", 5, "GUILD_DELETE", Some(20)),
                // The joined guild's outage ends: still one join.
                entry("a", 6, "GUILD_CREATE", Some(20)),
            ],
        );
        ledger.shards.insert(
            1,
            vec![
                entry("b", 1, "READY", None),
                entry("b", 2, "GUILD_CREATE", Some(30)),
                entry("c", 1, "GUILD_CREATE", Some(40)),
            ],
        );
        let ready: HashMap<String, HashSet<u64>> = [
            ("a".to_owned(), HashSet::from([10, 11])),
            ("b".to_owned(), HashSet::new()),
        ]
        .into();
        let ok = audit_joins(&ledger, &ready, &[20, 30]);
        assert_eq!(
            ok,
            JoinAudit {
                real: 2,
                announced: 2,
                false_joins: 0,
                missed: 0,
                sessions_without_ready: 1,
            }
        );
        let bad = audit_joins(&ledger, &ready, &[20, 20, 11]);
        assert_eq!((bad.false_joins, bad.missed), (2, 1));
        assert_eq!(ledger_guilds(&ledger), BTreeSet::from([10, 11, 20, 30, 40]));
    }
}
