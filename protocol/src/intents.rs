//! Gateway intents: which dispatches a session receives, and which fields
//! of them.
//!
//! A server of the gateway (the simulator, the relay) sends a session only
//! the dispatches its IDENTIFY's `intents` cover, as Discord does; without
//! MESSAGE_CONTENT a guild message arrives with its content fields empty.
//! One table serves both, so they cannot disagree.

/// Intent bits (Discord's names).
pub mod intent {
    pub const GUILDS: u64 = 1 << 0;
    pub const GUILD_MEMBERS: u64 = 1 << 1;
    pub const GUILD_MODERATION: u64 = 1 << 2;
    pub const GUILD_EXPRESSIONS: u64 = 1 << 3;
    pub const GUILD_INTEGRATIONS: u64 = 1 << 4;
    pub const GUILD_WEBHOOKS: u64 = 1 << 5;
    pub const GUILD_INVITES: u64 = 1 << 6;
    pub const GUILD_VOICE_STATES: u64 = 1 << 7;
    pub const GUILD_PRESENCES: u64 = 1 << 8;
    pub const GUILD_MESSAGES: u64 = 1 << 9;
    pub const GUILD_MESSAGE_REACTIONS: u64 = 1 << 10;
    pub const GUILD_MESSAGE_TYPING: u64 = 1 << 11;
    pub const DIRECT_MESSAGES: u64 = 1 << 12;
    pub const DIRECT_MESSAGE_REACTIONS: u64 = 1 << 13;
    pub const DIRECT_MESSAGE_TYPING: u64 = 1 << 14;
    pub const MESSAGE_CONTENT: u64 = 1 << 15;
    pub const GUILD_SCHEDULED_EVENTS: u64 = 1 << 16;
    pub const AUTO_MODERATION_CONFIGURATION: u64 = 1 << 20;
    pub const AUTO_MODERATION_EXECUTION: u64 = 1 << 21;
    pub const GUILD_MESSAGE_POLLS: u64 = 1 << 24;
    pub const DIRECT_MESSAGE_POLLS: u64 = 1 << 25;
}

/// Every defined bit; IDENTIFY with another is closed with 4013.
pub const VALID_INTENTS: u64 = ((1 << 17) - 1)
    | intent::AUTO_MODERATION_CONFIGURATION
    | intent::AUTO_MODERATION_EXECUTION
    | intent::GUILD_MESSAGE_POLLS
    | intent::DIRECT_MESSAGE_POLLS;

/// The intents an application must be allowed in its settings (4014
/// otherwise).
pub const PRIVILEGED_INTENTS: u64 =
    intent::GUILD_MEMBERS | intent::GUILD_PRESENCES | intent::MESSAGE_CONTENT;

/// The intent dispatch `event` needs (`in_guild`: it carries a guild id),
/// or `None` when every session gets it (READY, RESUMED, chunks, ...).
pub fn required_intent(event: &str, in_guild: bool) -> Option<u64> {
    use intent::*;
    let bit = match event {
        "GUILD_CREATE"
        | "GUILD_UPDATE"
        | "GUILD_DELETE"
        | "GUILD_ROLE_CREATE"
        | "GUILD_ROLE_UPDATE"
        | "GUILD_ROLE_DELETE"
        | "CHANNEL_CREATE"
        | "CHANNEL_UPDATE"
        | "CHANNEL_DELETE"
        | "CHANNEL_PINS_UPDATE"
        | "THREAD_CREATE"
        | "THREAD_UPDATE"
        | "THREAD_DELETE"
        | "THREAD_LIST_SYNC"
        | "THREAD_MEMBER_UPDATE"
        | "STAGE_INSTANCE_CREATE"
        | "STAGE_INSTANCE_UPDATE"
        | "STAGE_INSTANCE_DELETE" => GUILDS,
        "GUILD_MEMBER_ADD"
        | "GUILD_MEMBER_UPDATE"
        | "GUILD_MEMBER_REMOVE"
        | "THREAD_MEMBERS_UPDATE" => GUILD_MEMBERS,
        "GUILD_AUDIT_LOG_ENTRY_CREATE" | "GUILD_BAN_ADD" | "GUILD_BAN_REMOVE" => GUILD_MODERATION,
        "GUILD_EMOJIS_UPDATE"
        | "GUILD_STICKERS_UPDATE"
        | "GUILD_SOUNDBOARD_SOUND_CREATE"
        | "GUILD_SOUNDBOARD_SOUND_UPDATE"
        | "GUILD_SOUNDBOARD_SOUND_DELETE"
        | "GUILD_SOUNDBOARD_SOUNDS_UPDATE" => GUILD_EXPRESSIONS,
        "GUILD_INTEGRATIONS_UPDATE"
        | "INTEGRATION_CREATE"
        | "INTEGRATION_UPDATE"
        | "INTEGRATION_DELETE" => GUILD_INTEGRATIONS,
        "WEBHOOKS_UPDATE" => GUILD_WEBHOOKS,
        "INVITE_CREATE" | "INVITE_DELETE" => GUILD_INVITES,
        "VOICE_CHANNEL_EFFECT_SEND" | "VOICE_STATE_UPDATE" => GUILD_VOICE_STATES,
        "PRESENCE_UPDATE" => GUILD_PRESENCES,
        "MESSAGE_CREATE" | "MESSAGE_UPDATE" | "MESSAGE_DELETE" if in_guild => GUILD_MESSAGES,
        "MESSAGE_DELETE_BULK" => GUILD_MESSAGES,
        "MESSAGE_CREATE" | "MESSAGE_UPDATE" | "MESSAGE_DELETE" => DIRECT_MESSAGES,
        "MESSAGE_REACTION_ADD"
        | "MESSAGE_REACTION_REMOVE"
        | "MESSAGE_REACTION_REMOVE_ALL"
        | "MESSAGE_REACTION_REMOVE_EMOJI" => {
            if in_guild {
                GUILD_MESSAGE_REACTIONS
            } else {
                DIRECT_MESSAGE_REACTIONS
            }
        }
        "TYPING_START" if in_guild => GUILD_MESSAGE_TYPING,
        "TYPING_START" => DIRECT_MESSAGE_TYPING,
        "GUILD_SCHEDULED_EVENT_CREATE"
        | "GUILD_SCHEDULED_EVENT_UPDATE"
        | "GUILD_SCHEDULED_EVENT_DELETE"
        | "GUILD_SCHEDULED_EVENT_USER_ADD"
        | "GUILD_SCHEDULED_EVENT_USER_REMOVE" => GUILD_SCHEDULED_EVENTS,
        "AUTO_MODERATION_RULE_CREATE"
        | "AUTO_MODERATION_RULE_UPDATE"
        | "AUTO_MODERATION_RULE_DELETE" => AUTO_MODERATION_CONFIGURATION,
        "AUTO_MODERATION_ACTION_EXECUTION" => AUTO_MODERATION_EXECUTION,
        "MESSAGE_POLL_VOTE_ADD" | "MESSAGE_POLL_VOTE_REMOVE" if in_guild => GUILD_MESSAGE_POLLS,
        "MESSAGE_POLL_VOTE_ADD" | "MESSAGE_POLL_VOTE_REMOVE" => DIRECT_MESSAGE_POLLS,
        _ => return None,
    };
    Some(bit)
}

/// True when a session with `intents` gets `event`.
pub fn receives(intents: u64, event: &str, in_guild: bool) -> bool {
    required_intent(event, in_guild).is_none_or(|bit| intents & bit != 0)
}

/// True when `event` reaches a session without MESSAGE_CONTENT with its
/// content fields (`content`, `embeds`, `attachments`, `components`,
/// `poll`) emptied: guild messages, as Discord does.
pub fn content_restricted(intents: u64, event: &str, in_guild: bool) -> bool {
    in_guild
        && intents & intent::MESSAGE_CONTENT == 0
        && matches!(event, "MESSAGE_CREATE" | "MESSAGE_UPDATE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_follows_discord() {
        assert!(receives(intent::GUILDS, "CHANNEL_UPDATE", true));
        assert!(!receives(intent::GUILDS, "GUILD_MEMBER_ADD", true));
        assert!(receives(intent::GUILD_MEMBERS, "GUILD_MEMBER_ADD", true));
        assert!(receives(intent::GUILD_MESSAGES, "MESSAGE_CREATE", true));
        assert!(!receives(intent::GUILD_MESSAGES, "MESSAGE_CREATE", false));
        assert!(receives(intent::DIRECT_MESSAGES, "MESSAGE_CREATE", false));
        assert!(!receives(intent::GUILD_MESSAGES, "TYPING_START", true));
        assert!(receives(0, "READY", false) && receives(0, "GUILD_MEMBERS_CHUNK", true));
        assert!(content_restricted(
            intent::GUILD_MESSAGES,
            "MESSAGE_CREATE",
            true
        ));
        assert!(!content_restricted(
            intent::GUILD_MESSAGES | intent::MESSAGE_CONTENT,
            "MESSAGE_CREATE",
            true
        ));
        assert!(!content_restricted(0, "MESSAGE_CREATE", false));
        assert_eq!(VALID_INTENTS & (1 << 17), 0);
        assert_ne!(VALID_INTENTS & intent::DIRECT_MESSAGE_POLLS, 0);
    }
}
