//! IDENTIFY and RESUME: validation, the identify rate limit and session
//! start budget, READY with its GUILD_CREATE snapshots, and re-attaching a
//! session for replay.
//!
//! Every refusal maps to what Discord does: a close code for a bad token,
//! shard or intents, op 9 for a rate-limit violation, a spent budget, or an
//! unknown or expired session.
//!
//! # Shard totals
//! `[shard, total]` is accepted for any `total` from the minimum the bot
//! needs (and `shard < total`, else 4010), so sessions of two totals can
//! serve at once during a reshard. The minimum: with
//! [`SimConfig::guild_cap`] set, a shard may own at most that many guilds
//! (4011 naming the count above it); without it, the starting
//! [`SimConfig::shards`] (4011 below it). The recommendation of
//! `/gateway/bot` changes nothing here.

use super::protocol::{CloseReason, Identify, Resume, close};
use super::sessions::{Control, Core, INTENT_GUILD_MEMBERS, Link, Session};
use crate::config::{MAX_SHARD_TOTAL, PRIVILEGED_INTENTS, SimConfig, VALID_INTENTS};
use crate::world::{BOT_USER_ID, BOT_USERNAME, MemberList};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// The application id in READY.
pub(crate) const APPLICATION_ID: u64 = 1_100_000_000_000_000_002;

/// Why IDENTIFY or RESUME was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Send op 9 `d:false` and keep the connection.
    InvalidSession,
    /// Close the connection.
    Close(CloseReason),
}

impl Core {
    /// Handles IDENTIFY: validates it, applies the rate limits, and creates
    /// the session with READY and the GUILD_CREATEs queued.
    pub(crate) fn identify(
        &mut self,
        id: &Identify,
        link: Link,
        resume_url: &str,
        cfg: &SimConfig,
        now: Instant,
    ) -> Result<Arc<str>, Refusal> {
        let closed = |code, msg: String| Err(Refusal::Close(CloseReason::new(code, msg)));
        if !token_matches(&id.token, &cfg.token) {
            return closed(close::AUTHENTICATION_FAILED, "invalid token".into());
        }
        let [shard, num] = match id.shard {
            Some(s) => s,
            None if cfg.guild_cap.is_none() && cfg.shards > 1 => {
                self.counters.sharding_required_closes += 1;
                return closed(
                    close::SHARDING_REQUIRED,
                    format!("sharding required: use {} shards", cfg.shards),
                );
            }
            None => [0, 1],
        };
        if num == 0 || shard >= num || num > MAX_SHARD_TOTAL {
            return closed(
                close::INVALID_SHARD,
                format!("invalid shard [{shard}, {num}]"),
            );
        }
        let guilds = self.world.guilds_of(shard, num);
        let owned = u32::try_from(guilds.len()).unwrap_or(u32::MAX);
        match cfg.guild_cap {
            None if num < cfg.shards => {
                self.counters.sharding_required_closes += 1;
                return closed(
                    close::SHARDING_REQUIRED,
                    format!("{num} shards are too few; use {}", cfg.shards),
                );
            }
            Some(cap) if owned > cap => {
                self.counters.sharding_required_closes += 1;
                return closed(
                    close::SHARDING_REQUIRED,
                    format!(
                        "sharding required: shard [{shard}, {num}] would hold {owned} guilds, \
                         over the cap of {cap}"
                    ),
                );
            }
            _ => {}
        }
        if id.intents & !VALID_INTENTS != 0 {
            return closed(
                close::INVALID_INTENTS,
                format!("invalid intent bits {:#x}", id.intents & !VALID_INTENTS),
            );
        }
        let disallowed = id.intents & PRIVILEGED_INTENTS & !cfg.allowed_privileged_intents;
        if disallowed != 0 {
            return closed(
                close::DISALLOWED_INTENTS,
                format!("privileged intents {disallowed:#x} are not enabled for this bot"),
            );
        }
        if let Some(t) = id.large_threshold
            && !(50..=250).contains(&t)
        {
            return closed(
                close::DECODE_ERROR,
                format!("large_threshold {t} is outside 50..=250"),
            );
        }
        if let Err(bucket) = self.identify.admit(shard, now) {
            self.counters.identify_violations += 1;
            tracing::warn!(shard, bucket, "identify rate limit exceeded: op 9");
            return Err(Refusal::InvalidSession);
        }
        if !self.budget.spend(now) {
            self.counters.budget_exhausted += 1;
            tracing::warn!(shard, "session start budget spent: op 9");
            return Err(Refusal::InvalidSession);
        }
        if self.hostility.refuse_identify {
            self.counters.hostile_refusals += 1;
            tracing::info!(shard, "hostile gateway: IDENTIFY answered with op 9");
            return Err(Refusal::InvalidSession);
        }
        self.counters.identifies += 1;
        self.next_session += 1;
        let sid: Arc<str> = format!(
            "{:016x}{:016x}",
            splitmix(self.seed ^ 0x5e55_1011),
            splitmix(self.next_session)
        )
        .into();
        let ledger_idx = self.ledger.intern(sid.clone());
        let stubs: Vec<_> = guilds
            .iter()
            .map(|(g, _)| json!({"id": g.to_string(), "unavailable": true}))
            .collect();
        let ready = json!({
            "v": 10,
            "user": {
                "id": BOT_USER_ID.to_string(), "username": BOT_USERNAME, "discriminator": "0",
                "global_name": null, "avatar": null, "bot": true, "flags": 0, "mfa_enabled": false,
                "verified": true, "email": null,
            },
            "guilds": stubs,
            "session_id": &*sid,
            "resume_gateway_url": resume_url,
            "shard": [shard, num],
            "application": {"id": APPLICATION_ID.to_string(), "flags": 0},
            "private_channels": [],
            "presences": [],
            "relationships": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["us-east"],
            "user_settings": {},
            "_trace": ["[\"discord-sim\"]"],
        });
        let slot = self.insert(
            Session {
                id: sid.clone(),
                shard,
                total: num,
                intents: id.intents,
                seq: 0,
                pulled: 0,
                frames: Default::default(),
                link: Some(link),
                detached_at: None,
                ledger_idx,
                member_requests: HashMap::new(),
                slow_resume: None,
            },
            owned,
        );
        self.push(slot, "READY", None, ready.to_string().into(), cfg);
        let list = if id.intents & INTENT_GUILD_MEMBERS != 0 {
            MemberList::All
        } else {
            MemberList::BotOnly(BOT_USER_ID)
        };
        for (gid, available) in guilds {
            if let Some(d) = available
                .then(|| self.world.guild_create_for(gid, list))
                .flatten()
            {
                self.push(slot, "GUILD_CREATE", Some(gid), d, cfg);
            }
        }
        Ok(sid)
    }

    /// Handles RESUME: re-attaches the session and queues RESUMED after the
    /// frames to replay. Returns the session and the seq to replay after.
    pub(crate) fn resume(
        &mut self,
        r: &Resume,
        link: Link,
        cfg: &SimConfig,
        now: Instant,
    ) -> Result<(Arc<str>, u64), Refusal> {
        if !token_matches(&r.token, &cfg.token) {
            return Err(Refusal::Close(CloseReason::new(
                close::AUTHENTICATION_FAILED,
                "invalid token",
            )));
        }
        self.expire(cfg, now);
        let Some((slot, s)) = self.session_mut(&r.session_id) else {
            self.counters.failed_resumes += 1;
            tracing::info!(session = %r.session_id, "resume of unknown or expired session: op 9");
            return Err(Refusal::InvalidSession);
        };
        if r.seq > s.seq {
            return Err(Refusal::Close(CloseReason::new(
                close::INVALID_SEQ,
                format!("seq {} is ahead of the session's {}", r.seq, s.seq),
            )));
        }
        let oldest = s.frames.front_seq().unwrap_or(s.seq + 1);
        if r.seq + 1 < oldest {
            self.counters.failed_resumes += 1;
            tracing::info!(session = %r.session_id, seq = r.seq, oldest, "resume too far back: op 9");
            return Err(Refusal::InvalidSession);
        }
        if let Some(old) = s.link.replace(link) {
            let _ = old.ctl.send(Control::Close(
                close::UNKNOWN_ERROR,
                "session resumed on another connection".into(),
            ));
        }
        s.detached_at = None;
        s.pulled = r.seq;
        let (sid, replayed) = (s.id.clone(), s.seq - r.seq);
        self.counters.resumes += 1;
        self.counters.replayed_events += replayed;
        let d = json!({"_trace": ["[\"discord-sim\"]"]}).to_string();
        self.push(slot, "RESUMED", None, d.into(), cfg);
        Ok((sid, r.seq))
    }
}

/// Whether a token sent in IDENTIFY or RESUME is the bot's token. Discord
/// accepts it bare or with the `Bot ` prefix of the HTTP `Authorization`
/// header (twilight-gateway always sends the prefixed form).
fn token_matches(sent: &str, token: &str) -> bool {
    sent == token || sent.strip_prefix("Bot ") == Some(token)
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
