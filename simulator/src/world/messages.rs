//! The high-volume events that change no cached state: MESSAGE_CREATE,
//! TYPING_START and PRESENCE_UPDATE, written straight into text from the
//! members' pre-serialised JSON.
//!
//! MESSAGE_CREATE comes in two forms: the full one, and the one Discord
//! sends to sessions without the MESSAGE_CONTENT intent, whose `content`,
//! `embeds`, `attachments` and `components` are empty. A message that
//! mentions the bot keeps its content for everyone, as on Discord.

use super::{BOT_USER_ID, BOT_USERNAME, Dispatch, World, entities, names, pick};
use rand::Rng;
use std::fmt::Write as _;

/// One message in this many mentions the bot.
const MENTION_ONE_IN: u32 = 20;

impl World {
    pub(super) fn message_create(&mut self, gid: u64) -> Option<Dispatch> {
        let id = self.clock.next_id();
        let ts = self.clock.iso_now();
        let World { guilds, rng, .. } = self;
        let g = guilds.get(&gid)?;
        let channel = *pick(rng, &g.text_channels)?;
        let author = *pick(rng, &g.member_ids)?;
        if author == BOT_USER_ID {
            return None;
        }
        let m = g.members.get(&author)?;
        let mentions_bot = rng.random_range(0..MENTION_ONE_IN) == 0;
        let mut content = String::with_capacity(96);
        if mentions_bot {
            let _ = write!(content, "<@{BOT_USER_ID}> ");
        }
        names::push_sentence(&mut content, rng);
        let mut head = String::with_capacity(256 + m.user.len() + m.rest.len());
        let _ = write!(
            head,
            "{{\"type\":0,\"tts\":false,\"timestamp\":\"{ts}\",\"pinned\":false,\"mentions\":["
        );
        if mentions_bot {
            head.push_str(&entities::user_json(BOT_USER_ID, BOT_USERNAME, None, true));
        }
        let _ = write!(
            head,
            "],\"mention_roles\":[],\"mention_everyone\":false,\"member\":{{{rest},\
             \"id\":\"{id}\",\"flags\":0,\"edited_timestamp\":null,\"channel_id\":\"{channel}\",\
             \"author\":{user},\"guild_id\":\"{gid}\",\"embeds\":[],\"components\":[],\
             \"attachments\":[],\"content\":",
            rest = m.rest,
            user = m.user,
        );
        let mut full = String::with_capacity(head.len() + content.len() + 4);
        full.push_str(&head);
        super::json_text::push_str(&mut full, &content);
        full.push('}');
        let mut d = Dispatch::new(g.shard, "MESSAGE_CREATE", gid, full);
        if !mentions_bot {
            head.push_str("\"\"}");
            d.restricted = Some(head.into());
        }
        Some(d)
    }

    pub(super) fn typing_start(&mut self, gid: u64) -> Option<Dispatch> {
        let secs = self.clock.unix_secs();
        let World { guilds, rng, .. } = self;
        let g = guilds.get(&gid)?;
        let channel = *pick(rng, &g.text_channels)?;
        let uid = *pick(rng, &g.member_ids)?;
        let m = g.members.get(&uid)?;
        let mut s = String::with_capacity(160 + m.user.len() + m.rest.len());
        let _ = write!(
            s,
            "{{\"user_id\":\"{uid}\",\"timestamp\":{secs},\"member\":{{\"user\":{user},{rest},\
             \"channel_id\":\"{channel}\",\"guild_id\":\"{gid}\"}}",
            user = m.user,
            rest = m.rest,
        );
        Some(Dispatch::new(g.shard, "TYPING_START", gid, s))
    }

    pub(super) fn presence_update(&mut self, gid: u64) -> Option<Dispatch> {
        const STATUSES: [&str; 4] = ["online", "idle", "dnd", "offline"];
        let World { guilds, rng, .. } = self;
        let status = STATUSES[rng.random_range(0..STATUSES.len())];
        let g = guilds.get(&gid)?;
        let uid = *pick(rng, &g.member_ids)?;
        let mut s = String::with_capacity(160);
        let _ = write!(
            s,
            "{{\"user\":{{\"id\":\"{uid}\"}},\"status\":\"{status}\",\"guild_id\":\"{gid}\",\
             \"client_status\":"
        );
        if status == "offline" {
            s.push_str("{}");
        } else {
            let _ = write!(s, "{{\"desktop\":\"{status}\"}}");
        }
        s.push_str(",\"activities\":[]}");
        Some(Dispatch::new(g.shard, "PRESENCE_UPDATE", gid, s))
    }
}
