//! The closed set of gateway dispatch names, so a label keyed by `t` (a
//! metric, a queue) cannot grow with a new or garbled name: anything else
//! is `OTHER`.

use std::sync::{Arc, LazyLock};

/// Label for a dispatch name outside [`KNOWN_EVENTS`].
pub const OTHER_EVENT: &str = "OTHER";

/// Gateway dispatch names (Discord API v10) counted by name.
pub const KNOWN_EVENTS: &[&str] = &[
    "READY",
    "RESUMED",
    "APPLICATION_COMMAND_PERMISSIONS_UPDATE",
    "AUTO_MODERATION_RULE_CREATE",
    "AUTO_MODERATION_RULE_UPDATE",
    "AUTO_MODERATION_RULE_DELETE",
    "AUTO_MODERATION_ACTION_EXECUTION",
    "CHANNEL_CREATE",
    "CHANNEL_UPDATE",
    "CHANNEL_DELETE",
    "CHANNEL_PINS_UPDATE",
    "THREAD_CREATE",
    "THREAD_UPDATE",
    "THREAD_DELETE",
    "THREAD_LIST_SYNC",
    "THREAD_MEMBER_UPDATE",
    "THREAD_MEMBERS_UPDATE",
    "ENTITLEMENT_CREATE",
    "ENTITLEMENT_UPDATE",
    "ENTITLEMENT_DELETE",
    "GUILD_CREATE",
    "GUILD_UPDATE",
    "GUILD_DELETE",
    "GUILD_AUDIT_LOG_ENTRY_CREATE",
    "GUILD_BAN_ADD",
    "GUILD_BAN_REMOVE",
    "GUILD_EMOJIS_UPDATE",
    "GUILD_STICKERS_UPDATE",
    "GUILD_INTEGRATIONS_UPDATE",
    "GUILD_MEMBER_ADD",
    "GUILD_MEMBER_REMOVE",
    "GUILD_MEMBER_UPDATE",
    "GUILD_MEMBERS_CHUNK",
    "GUILD_ROLE_CREATE",
    "GUILD_ROLE_UPDATE",
    "GUILD_ROLE_DELETE",
    "GUILD_SCHEDULED_EVENT_CREATE",
    "GUILD_SCHEDULED_EVENT_UPDATE",
    "GUILD_SCHEDULED_EVENT_DELETE",
    "GUILD_SCHEDULED_EVENT_USER_ADD",
    "GUILD_SCHEDULED_EVENT_USER_REMOVE",
    "GUILD_SOUNDBOARD_SOUND_CREATE",
    "GUILD_SOUNDBOARD_SOUND_UPDATE",
    "GUILD_SOUNDBOARD_SOUND_DELETE",
    "GUILD_SOUNDBOARD_SOUNDS_UPDATE",
    "SOUNDBOARD_SOUNDS",
    "INTEGRATION_CREATE",
    "INTEGRATION_UPDATE",
    "INTEGRATION_DELETE",
    "INTERACTION_CREATE",
    "INVITE_CREATE",
    "INVITE_DELETE",
    "MESSAGE_CREATE",
    "MESSAGE_UPDATE",
    "MESSAGE_DELETE",
    "MESSAGE_DELETE_BULK",
    "MESSAGE_REACTION_ADD",
    "MESSAGE_REACTION_REMOVE",
    "MESSAGE_REACTION_REMOVE_ALL",
    "MESSAGE_REACTION_REMOVE_EMOJI",
    "MESSAGE_POLL_VOTE_ADD",
    "MESSAGE_POLL_VOTE_REMOVE",
    "PRESENCE_UPDATE",
    "STAGE_INSTANCE_CREATE",
    "STAGE_INSTANCE_UPDATE",
    "STAGE_INSTANCE_DELETE",
    "SUBSCRIPTION_CREATE",
    "SUBSCRIPTION_UPDATE",
    "SUBSCRIPTION_DELETE",
    "TYPING_START",
    "USER_UPDATE",
    "VOICE_CHANNEL_EFFECT_SEND",
    "VOICE_STATE_UPDATE",
    "VOICE_SERVER_UPDATE",
    "WEBHOOKS_UPDATE",
];

/// `event` as a bounded metric label: itself when known, else `OTHER`.
#[cfg(test)]
fn metric_label(event: &str) -> &'static str {
    known_index(event).map_or(OTHER_EVENT, |i| KNOWN_EVENTS[i])
}

/// The position of `event` in [`KNOWN_EVENTS`]. Names are bucketed by
/// length, so a lookup compares against the two or three names of that
/// length (a linear scan of 75 names, then a binary search, both showed in
/// profiles).
pub fn known_index(event: &str) -> Option<usize> {
    const LONGEST: usize = 48;
    static BY_LEN: LazyLock<Vec<Vec<(&'static str, usize)>>> = LazyLock::new(|| {
        let mut by_len = vec![Vec::new(); LONGEST + 1];
        for (i, k) in KNOWN_EVENTS.iter().enumerate() {
            if let Some(bucket) = by_len.get_mut(k.len()) {
                bucket.push((*k, i));
            }
        }
        by_len
    });
    BY_LEN
        .get(event.len())?
        .iter()
        .find(|(k, _)| *k == event)
        .map(|(_, i)| *i)
}

/// A dispatch name (`t`). A known name is a `&'static str`, so the
/// sharder allocates nothing for it per event; any other is kept as sent.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventName(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    /// Position in [`KNOWN_EVENTS`].
    Known(usize),
    Other(Arc<str>),
}

impl EventName {
    /// The name `t`.
    pub fn new(t: &str) -> Self {
        match known_index(t) {
            Some(i) => Self(Repr::Known(i)),
            None => Self(Repr::Other(Arc::from(t))),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Known(i) => KNOWN_EVENTS.get(*i).copied().unwrap_or(OTHER_EVENT),
            Repr::Other(s) => s,
        }
    }

    /// Its position in [`KNOWN_EVENTS`], or `None` for any other name.
    pub fn known(&self) -> Option<usize> {
        match self.0 {
            Repr::Known(i) => Some(i),
            Repr::Other(_) => None,
        }
    }
}

impl std::ops::Deref for EventName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for EventName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for EventName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for EventName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for EventName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for EventName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<&str> for EventName {
    fn from(t: &str) -> Self {
        Self::new(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_are_kept_and_anything_else_is_other() {
        assert_eq!(metric_label("MESSAGE_CREATE"), "MESSAGE_CREATE");
        assert_eq!(metric_label("GUILD_CREATE"), "GUILD_CREATE");
        assert_eq!(metric_label("MADE_UP_EVENT"), OTHER_EVENT);
        assert_eq!(metric_label("message_create"), OTHER_EVENT);
        assert_eq!(metric_label(""), OTHER_EVENT);
        let mut sorted = KNOWN_EVENTS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), KNOWN_EVENTS.len(), "no duplicates");
        for (i, k) in KNOWN_EVENTS.iter().enumerate() {
            assert_eq!(known_index(k), Some(i), "{k}");
        }
        assert_eq!(known_index(&"A".repeat(200)), None);
    }

    #[test]
    fn event_names_compare_as_text_and_allocate_only_when_unknown() {
        let known = EventName::new("GUILD_CREATE");
        assert!(matches!(known.0, Repr::Known(_)));
        assert_eq!(known, "GUILD_CREATE");
        assert_eq!(known.as_str(), "GUILD_CREATE");
        let other = EventName::new("SOMETHING_NEW");
        assert!(matches!(other.0, Repr::Other(_)));
        assert_eq!(other, "SOMETHING_NEW");
        assert_eq!(
            format!("{other} {other:?}"),
            "SOMETHING_NEW \"SOMETHING_NEW\""
        );
        assert_ne!(EventName::new("guild_create"), known);
    }
}
