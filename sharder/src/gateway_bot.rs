//! `GET /gateway/bot`: where to connect and how much identify budget is left.
//!
//! The sharder asks once at start-up (and again when the identify budget
//! needs a fresh count): the gateway URL, the recommended shard count, and
//! the session start limit that feeds the [`crate::IdentifyScheduler`].
//!
//! # Algorithm
//! One HTTP GET through the process's caching resolver, with
//! `Authorization: Bot <token>` and a deadline. 401 means the token is bad,
//! which is fatal for the whole process, like close code 4004; 429 carries
//! `retry_after` (seconds, per Discord's REST rate limits) for the caller's
//! backoff. The body is checked: a `ws://`/`wss://` URL, at least one shard,
//! `remaining <= total`, and `max_concurrency >= 1`. The token never appears
//! in an error or a log line.

use crate::identify::SessionStartLimit;
use config::Secret;
use serde::Deserialize;
use std::time::Duration;

/// What `GET /gateway/bot` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayBot {
    /// Gateway URL (without query).
    pub url: String,
    /// Recommended shard count.
    pub shards: u32,
    pub session_start_limit: SessionStartLimit,
}

/// Why the answer is unusable.
#[derive(Debug, thiserror::Error)]
pub enum GatewayBotError {
    #[error("GET /gateway/bot: the bot token was refused (401); replace the token")]
    Unauthorized,
    #[error("GET /gateway/bot: rate limited (429); retry after {retry_after:?}")]
    RateLimited { retry_after: Duration },
    #[error("GET /gateway/bot answered HTTP {0}")]
    Status(u16),
    #[error("GET /gateway/bot failed: {0}")]
    Connect(String),
    #[error("GET /gateway/bot returned an invalid body: {0}")]
    Invalid(String),
}

impl GatewayBotError {
    /// True when retrying cannot help (stop the process).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Unauthorized)
    }
}

#[derive(Deserialize)]
struct Body {
    url: String,
    shards: u32,
    session_start_limit: Limit,
}

#[derive(Deserialize)]
struct Limit {
    total: u32,
    remaining: u32,
    reset_after: u64,
    max_concurrency: u16,
}

#[derive(Deserialize)]
struct RateLimitBody {
    retry_after: f64,
}

/// The most shards a bot may have (here and in `[sharder].total_shards`);
/// the largest bots run tens of thousands.
pub use config::MAX_TOTAL_SHARDS;

/// Parses and checks a `GET /gateway/bot` body.
pub fn parse_gateway_bot(body: &[u8]) -> Result<GatewayBot, GatewayBotError> {
    let b: Body =
        serde_json::from_slice(body).map_err(|e| GatewayBotError::Invalid(e.to_string()))?;
    let invalid = |m: String| Err(GatewayBotError::Invalid(m));
    if !(b.url.starts_with("wss://") || b.url.starts_with("ws://")) {
        return invalid(format!("url `{}` is not a websocket URL", b.url));
    }
    if b.shards == 0 || b.shards > MAX_TOTAL_SHARDS {
        // With `total_shards = "auto"` this count becomes the process's
        // shard list: a garbage answer must not allocate billions.
        return invalid(format!(
            "shards {} is outside 1..={MAX_TOTAL_SHARDS}",
            b.shards
        ));
    }
    let l = b.session_start_limit;
    if l.remaining > l.total {
        return invalid(format!(
            "remaining {} is above total {}",
            l.remaining, l.total
        ));
    }
    if l.max_concurrency == 0 {
        return invalid("max_concurrency is 0".into());
    }
    Ok(GatewayBot {
        url: b.url,
        shards: b.shards,
        session_start_limit: SessionStartLimit {
            total: l.total,
            remaining: l.remaining,
            reset_after: Duration::from_millis(l.reset_after),
            max_concurrency: l.max_concurrency,
        },
    })
}

/// Asks `{api_base}/gateway/bot` through `resolver`.
pub async fn fetch_gateway_bot(
    resolver: &dnscache::Resolver,
    api_base: &str,
    token: &Secret,
    timeout: Duration,
) -> Result<GatewayBot, GatewayBotError> {
    let url = format!("{}/gateway/bot", api_base.trim_end_matches('/'));
    let auth = format!("Bot {}", token.expose());
    let response = resolver
        .http_get(&url, &[("authorization", auth.as_str())], timeout)
        .await
        .map_err(|e| GatewayBotError::Connect(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response.into_body();
    match status {
        200 => parse_gateway_bot(&body),
        401 => Err(GatewayBotError::Unauthorized),
        429 => {
            let secs = serde_json::from_slice::<RateLimitBody>(&body)
                .map(|b| b.retry_after)
                .unwrap_or(5.0);
            let retry_after = Duration::try_from_secs_f64(secs.clamp(0.0, 3600.0))
                .unwrap_or(Duration::from_secs(5));
            Err(GatewayBotError::RateLimited { retry_after })
        }
        other => Err(GatewayBotError::Status(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked() {
        let ok = br#"{"url":"wss://gateway.discord.gg","shards":9,"session_start_limit":
            {"total":1000,"remaining":999,"reset_after":14400000,"max_concurrency":16}}"#;
        let g = parse_gateway_bot(ok).unwrap();
        assert_eq!((g.shards, g.session_start_limit.max_concurrency), (9, 16));
        assert_eq!(
            g.session_start_limit.reset_after,
            Duration::from_secs(14400)
        );
        let base = std::str::from_utf8(ok).unwrap();
        for bad in [
            base.replace("wss://", "https://"),
            base.replace("\"shards\":9", "\"shards\":0"),
            base.replace("\"shards\":9", "\"shards\":4294967295"),
            base.replace("\"remaining\":999", "\"remaining\":1001"),
            base.replace("\"max_concurrency\":16", "\"max_concurrency\":0"),
            base.replace("\"shards\":9", "\"shards\":\"9\""),
            base.replace("\"total\":1000,", ""),
            String::new(),
            "{".into(),
        ] {
            assert!(parse_gateway_bot(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
