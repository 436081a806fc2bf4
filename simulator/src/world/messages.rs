//! The high-volume events that change no cached state: MESSAGE_CREATE,
//! TYPING_START and PRESENCE_UPDATE, written straight into text from the
//! members' pre-serialised JSON.
//!
//! MESSAGE_CREATE comes in two forms: the full one, and the one Discord
//! sends to sessions without the MESSAGE_CONTENT intent, whose `content`,
//! `embeds`, `attachments` and `components` are empty. A message that
//! mentions the bot keeps its content for everyone, as on Discord.
//!
//! These are most of the stream, so each is written into the world's one
//! reused text buffer with plain appends (no formatting machinery, no
//! intermediate strings) and copied once into its shared payload.

use super::json_text::{push_id, push_u64};
use super::{BOT_USER_ID, BOT_USERNAME, Dispatch, World, entities, names, pick, pick_index};
use rand::Rng;

/// One message in this many mentions the bot.
const MENTION_ONE_IN: u32 = 20;

impl World {
    pub(super) fn message_create(&mut self, slot: usize) -> Option<Dispatch> {
        let id = self.clock.next_id();
        let World {
            guilds,
            rng,
            clock,
            buf,
            ..
        } = self;
        let g = guilds.at(slot)?;
        let gid = g.fields.id;
        let channel = *pick(rng, &g.text_channels)?;
        let author = pick_index(rng, g.member_ids.len())?;
        if g.member_ids[author] == BOT_USER_ID {
            return None;
        }
        let m = g.members.get(author)?;
        let mentions_bot = rng.random_range(0..MENTION_ONE_IN) == 0;
        buf.clear();
        buf.push_str("{\"type\":0,\"tts\":false,\"timestamp\":\"");
        clock.push_iso_now(buf);
        buf.push_str("\",\"pinned\":false,\"mentions\":[");
        if mentions_bot {
            buf.push_str(&entities::user_json(BOT_USER_ID, BOT_USERNAME, None, true));
        }
        buf.push_str("],\"mention_roles\":[],\"mention_everyone\":false,\"member\":{");
        buf.push_str(m.rest());
        buf.push_str(",\"id\":");
        push_id(buf, id);
        buf.push_str(",\"flags\":0,\"edited_timestamp\":null,\"channel_id\":");
        push_id(buf, channel);
        buf.push_str(",\"author\":");
        buf.push_str(m.user());
        buf.push_str(",\"guild_id\":");
        push_id(buf, gid);
        buf.push_str(",\"embeds\":[],\"components\":[],\"attachments\":[],\"content\":");
        let head = buf.len();
        // The content is plain words (and a mention), which need no JSON
        // escaping (checked in the tests), so it is written in place.
        buf.push('"');
        if mentions_bot {
            buf.push_str("<@");
            push_u64(buf, BOT_USER_ID);
            buf.push_str("> ");
        }
        names::push_sentence(buf, rng);
        buf.push_str("\"}");
        let mut d = Dispatch::from_text(g.shard, "MESSAGE_CREATE", gid, buf);
        if !mentions_bot {
            buf.truncate(head);
            buf.push_str("\"\"}");
            d.restricted = Some(buf.as_str().into());
        }
        Some(d)
    }

    pub(super) fn typing_start(&mut self, slot: usize) -> Option<Dispatch> {
        let secs = self.clock.unix_secs();
        let World {
            guilds,
            rng,
            buf,
            typing,
            ..
        } = self;
        let g = guilds.at(slot)?;
        let gid = g.fields.id;
        let channel = *pick(rng, &g.text_channels)?;
        let idx = pick_index(rng, g.member_ids.len())?;
        let (uid, m) = (g.member_ids[idx], g.members.get(idx)?);
        // Still typing there (the indicator has not run out): Discord
        // sends nothing; the caller picks another event.
        if typing
            .get(&(uid, channel))
            .is_some_and(|&at| secs < at + super::TYPING_INDICATOR_SECS)
        {
            return None;
        }
        if typing.len() >= 4096 {
            typing.retain(|_, at| secs < *at + super::TYPING_INDICATOR_SECS);
        }
        typing.insert((uid, channel), secs);
        buf.clear();
        buf.push_str("{\"user_id\":");
        push_id(buf, uid);
        buf.push_str(",\"timestamp\":");
        push_u64(buf, secs);
        buf.push_str(",\"member\":");
        m.write_json(buf);
        buf.push_str(",\"channel_id\":");
        push_id(buf, channel);
        buf.push_str(",\"guild_id\":");
        push_id(buf, gid);
        buf.push('}');
        Some(Dispatch::from_text(g.shard, "TYPING_START", gid, buf))
    }

    pub(super) fn presence_update(&mut self, slot: usize) -> Option<Dispatch> {
        const STATUSES: [&str; 4] = ["online", "idle", "dnd", "offline"];
        let World {
            guilds, rng, buf, ..
        } = self;
        let status = STATUSES[rng.random_range(0..STATUSES.len())];
        let g = guilds.at(slot)?;
        let gid = g.fields.id;
        let uid = *pick(rng, &g.member_ids)?;
        buf.clear();
        buf.push_str("{\"user\":{\"id\":");
        push_id(buf, uid);
        buf.push_str("},\"status\":\"");
        buf.push_str(status);
        buf.push_str("\",\"guild_id\":");
        push_id(buf, gid);
        buf.push_str(",\"client_status\":");
        if status == "offline" {
            buf.push_str("{}");
        } else {
            buf.push_str("{\"desktop\":\"");
            buf.push_str(status);
            buf.push_str("\"}");
        }
        buf.push_str(",\"activities\":[]}");
        Some(Dispatch::from_text(g.shard, "PRESENCE_UPDATE", gid, buf))
    }
}
