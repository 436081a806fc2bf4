//! The event mix: relative weights of the kinds of change the world makes.
//!
//! Kept separate from generation so the CLI, the HTTP API and tests can all
//! state a mix the same way (`MESSAGE_CREATE=40,TYPING_START=10,...`).

use crate::error::SimError;
use std::fmt;
use std::str::FromStr;

/// How many kinds of change there are.
const KINDS: usize = 17;

/// One kind of change the world can make. Most map to one dispatch event;
/// `GuildJoin`, `GuildOutage` and `GuildRemove` are the three meanings of
/// GUILD_CREATE / GUILD_DELETE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    MessageCreate,
    TypingStart,
    PresenceUpdate,
    MemberAdd,
    MemberUpdate,
    MemberRemove,
    ChannelCreate,
    ChannelUpdate,
    ChannelDelete,
    RoleCreate,
    RoleUpdate,
    RoleDelete,
    GuildUpdate,
    /// A guild's custom emojis change (GUILD_EMOJIS_UPDATE).
    EmojisUpdate,
    /// The bot joins a new guild (GUILD_CREATE of a guild it was not in).
    GuildJoin,
    /// A guild becomes unavailable (GUILD_DELETE `unavailable:true`) and
    /// comes back later with GUILD_CREATE.
    GuildOutage,
    /// The bot is removed from a guild (GUILD_DELETE without `unavailable`).
    GuildRemove,
}

impl EventKind {
    /// Every kind, in a fixed order.
    pub const ALL: [EventKind; KINDS] = [
        EventKind::MessageCreate,
        EventKind::TypingStart,
        EventKind::PresenceUpdate,
        EventKind::MemberAdd,
        EventKind::MemberUpdate,
        EventKind::MemberRemove,
        EventKind::ChannelCreate,
        EventKind::ChannelUpdate,
        EventKind::ChannelDelete,
        EventKind::RoleCreate,
        EventKind::RoleUpdate,
        EventKind::RoleDelete,
        EventKind::GuildUpdate,
        EventKind::EmojisUpdate,
        EventKind::GuildJoin,
        EventKind::GuildOutage,
        EventKind::GuildRemove,
    ];

    /// The name used in a mix specification. Equal to the dispatch event
    /// name except for the three guild lifecycle kinds.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::MessageCreate => "MESSAGE_CREATE",
            EventKind::TypingStart => "TYPING_START",
            EventKind::PresenceUpdate => "PRESENCE_UPDATE",
            EventKind::MemberAdd => "GUILD_MEMBER_ADD",
            EventKind::MemberUpdate => "GUILD_MEMBER_UPDATE",
            EventKind::MemberRemove => "GUILD_MEMBER_REMOVE",
            EventKind::ChannelCreate => "CHANNEL_CREATE",
            EventKind::ChannelUpdate => "CHANNEL_UPDATE",
            EventKind::ChannelDelete => "CHANNEL_DELETE",
            EventKind::RoleCreate => "GUILD_ROLE_CREATE",
            EventKind::RoleUpdate => "GUILD_ROLE_UPDATE",
            EventKind::RoleDelete => "GUILD_ROLE_DELETE",
            EventKind::GuildUpdate => "GUILD_UPDATE",
            EventKind::EmojisUpdate => "GUILD_EMOJIS_UPDATE",
            EventKind::GuildJoin => "GUILD_JOIN",
            EventKind::GuildOutage => "GUILD_OUTAGE",
            EventKind::GuildRemove => "GUILD_REMOVE",
        }
    }
}

/// Relative weights per [`EventKind`]; a kind with weight 0 never happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMix {
    weights: [u32; KINDS],
}

impl EventMix {
    /// A mix where only the given kinds happen, with the given weights.
    pub fn only(kinds: &[(EventKind, u32)]) -> Self {
        let mut weights = [0; KINDS];
        for &(k, w) in kinds {
            weights[k as usize] = w;
        }
        Self { weights }
    }

    /// The weight of `kind`.
    pub fn weight(&self, kind: EventKind) -> u32 {
        self.weights[kind as usize]
    }

    /// Sets the weight of `kind`.
    pub fn set(&mut self, kind: EventKind, weight: u32) {
        self.weights[kind as usize] = weight;
    }

    /// Sum of all weights.
    pub fn total(&self) -> u64 {
        self.weights.iter().map(|&w| u64::from(w)).sum()
    }

    /// The kind at cumulative position `x` (`x < total()`).
    pub(crate) fn pick(&self, mut x: u64) -> EventKind {
        for (i, &w) in self.weights.iter().enumerate() {
            if x < u64::from(w) {
                return EventKind::ALL[i];
            }
            x -= u64::from(w);
        }
        EventKind::MessageCreate
    }
}

impl Default for EventMix {
    /// Roughly the shape of a large bot's traffic: mostly messages, typing
    /// and presences, a steady trickle of member and structure changes, and
    /// rare joins, outages and removals.
    fn default() -> Self {
        use EventKind::*;
        Self::only(&[
            (MessageCreate, 400),
            (TypingStart, 150),
            (PresenceUpdate, 200),
            (MemberAdd, 40),
            (MemberUpdate, 60),
            (MemberRemove, 30),
            (ChannelCreate, 15),
            (ChannelUpdate, 20),
            (ChannelDelete, 10),
            (RoleCreate, 10),
            (RoleUpdate, 20),
            (RoleDelete, 8),
            (GuildUpdate, 10),
            (EmojisUpdate, 5),
            (GuildJoin, 3),
            (GuildOutage, 2),
            (GuildRemove, 2),
        ])
    }
}

impl fmt::Display for EventMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for k in EventKind::ALL {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{}={}", k.name(), self.weight(k))?;
        }
        Ok(())
    }
}

impl FromStr for EventMix {
    type Err = SimError;

    /// Parses `NAME=WEIGHT,...`. Kinds not named get weight 0; at least one
    /// weight must be positive.
    fn from_str(s: &str) -> Result<Self, SimError> {
        let bad = |message: String| SimError::Config {
            key: "event_mix".into(),
            message,
        };
        let mut mix = EventMix {
            weights: [0; KINDS],
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("`{part}` is not NAME=WEIGHT")))?;
            let kind = EventKind::ALL
                .into_iter()
                .find(|k| k.name().eq_ignore_ascii_case(name.trim()))
                .ok_or_else(|| {
                    bad(format!(
                        "unknown event kind `{name}`; known: {}",
                        EventKind::ALL.map(EventKind::name).join(", ")
                    ))
                })?;
            let w: u32 = weight
                .trim()
                .parse()
                .map_err(|_| bad(format!("weight `{weight}` of {name} is not a whole number")))?;
            mix.set(kind, w);
        }
        if mix.total() == 0 {
            return Err(bad("at least one weight must be positive".into()));
        }
        Ok(mix)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let m: EventMix = "MESSAGE_CREATE=3, guild_join=1".parse().unwrap();
        assert_eq!(m.weight(EventKind::MessageCreate), 3);
        assert_eq!(m.weight(EventKind::GuildJoin), 1);
        assert_eq!(m.total(), 4);
        assert_eq!(m.pick(2), EventKind::MessageCreate);
        assert_eq!(m.pick(3), EventKind::GuildJoin);
        let d = EventMix::default();
        assert_eq!(d.to_string().parse::<EventMix>().unwrap(), d);
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "",
            "MESSAGE_CREATE",
            "NOPE=1",
            "MESSAGE_CREATE=-1",
            "MESSAGE_CREATE=0",
        ] {
            assert!(bad.parse::<EventMix>().is_err(), "accepted {bad}");
        }
    }
}
