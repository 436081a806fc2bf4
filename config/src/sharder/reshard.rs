//! `[sharder.reshard]`: when a live reshard starts by itself, and when one
//! is late.
//!
//! A live reshard grows the shard total while the bot stays online (a new
//! generation identifies beside the old one, then the old one closes). It
//! spends one session start per new shard and changes the layout every pod
//! shares, so starting one automatically is opt-in: `auto_factor = 0`, the
//! default, leaves it to an operator (the sharder still logs when Discord
//! recommends more shards than it runs). Discord recommends about one shard
//! per 1,000 guilds and closes a shard past 2,500 guilds (4011), so a
//! factor between 1.5 and 2 reshards with room to spare.

use crate::ConfigError;
use crate::error::check_duration;
use serde::Deserialize;
use std::time::Duration;

/// Shortest `poll_interval`: every poll is a `GET /gateway/bot`, which
/// shares the bot's REST rate limit, and the recommendation moves with the
/// guild count, over days.
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// Shortest `stall_after`: a healthy reshard readies a shard every identify
/// window (5 s), so anything shorter than a minute alerts on noise.
const MIN_STALL_AFTER: Duration = Duration::from_secs(60);

/// Settings of live resharding.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReshardConfig {
    /// 0: no automatic reshard. Otherwise a reshard starts when
    /// `GET /gateway/bot` recommends more than `auto_factor` times the
    /// running total; at least 1.0.
    pub auto_factor: f64,
    /// How often `GET /gateway/bot` is asked for the recommended total.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A reshard in which no new shard became ready for this long is
    /// reported stalled.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
}

impl Default for ReshardConfig {
    fn default() -> Self {
        Self {
            auto_factor: 0.0,
            poll_interval: Duration::from_secs(15 * 60),
            stall_after: Duration::from_secs(10 * 60),
        }
    }
}

impl ReshardConfig {
    /// Whether a reshard should start by itself: automatic resharding is on
    /// and Discord's `recommended` total is above `auto_factor` times the
    /// `running` one.
    pub fn auto_reshard_due(&self, running: u32, recommended: u32) -> bool {
        self.auto_factor > 0.0 && f64::from(recommended) > self.auto_factor * f64::from(running)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| {
            Err(ConfigError::invalid(format!("sharder.reshard.{key}"), msg))
        };
        check_duration("sharder.reshard.poll_interval", self.poll_interval)?;
        check_duration("sharder.reshard.stall_after", self.stall_after)?;
        let f = self.auto_factor;
        if !f.is_finite() || !(f == 0.0 || f >= 1.0) {
            return bad(
                "auto_factor",
                format!(
                    "{f} must be 0 (automatic resharding off) or at least 1.0 (reshard when \
                     GET /gateway/bot recommends more than auto_factor x the running total); \
                     1.5 to 2 reshards well before shards reach Discord's 2500-guild limit"
                ),
            );
        }
        if self.poll_interval < MIN_POLL_INTERVAL {
            return bad(
                "poll_interval",
                format!(
                    "{:?} is below 1m; every poll is a GET /gateway/bot on the bot's REST rate \
                     limit, and the recommended total changes over days",
                    self.poll_interval
                ),
            );
        }
        if self.stall_after < MIN_STALL_AFTER {
            return bad(
                "stall_after",
                format!(
                    "{:?} is below 1m; a reshard waits whole identify windows and breaker \
                     cooldowns, so a shorter limit reports healthy reshards as stalled",
                    self.stall_after
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;
    use std::time::Duration;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml_str(text, "t", env).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_leave_automatic_resharding_off() {
        let r = load("", &[]).unwrap().sharder.reshard;
        assert_eq!(r.auto_factor, 0.0);
        assert_eq!(r.poll_interval, Duration::from_secs(900));
        assert_eq!(r.stall_after, Duration::from_secs(600));
        assert!(!r.auto_reshard_due(64, 1000), "off whatever Discord says");
    }

    #[test]
    fn file_and_environment_set_the_keys() {
        let c = load(
            "[sharder.reshard]\nauto_factor = 1.5\npoll_interval = \"5m\"\nstall_after = \"20m\"\n",
            &[],
        )
        .unwrap();
        let r = &c.sharder.reshard;
        assert_eq!(r.auto_factor, 1.5);
        assert_eq!(r.poll_interval, Duration::from_secs(300));
        assert_eq!(r.stall_after, Duration::from_secs(1200));
        assert!(!r.auto_reshard_due(64, 96), "exactly 1.5 x 64 is not more");
        assert!(r.auto_reshard_due(64, 97));

        // An integer factor, from the file or the environment, is a factor.
        let c = load("[sharder.reshard]\nauto_factor = 2\n", &[]).unwrap();
        assert_eq!(c.sharder.reshard.auto_factor, 2.0);
        let c = load(
            "[sharder.reshard]\nauto_factor = 2.0\n",
            &[
                ("BULWARK_SHARDER__RESHARD__AUTO_FACTOR", "3"),
                ("BULWARK_SHARDER__RESHARD__POLL_INTERVAL", "2m"),
                ("BULWARK_SHARDER__RESHARD__STALL_AFTER", "1h"),
            ],
        )
        .unwrap();
        let r = &c.sharder.reshard;
        assert_eq!(r.auto_factor, 3.0, "the environment overrides the file");
        assert_eq!(r.poll_interval, Duration::from_secs(120));
        assert_eq!(r.stall_after, Duration::from_secs(3600));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("auto_factor = 0.5\n", "sharder.reshard.auto_factor"),
            ("auto_factor = -1.0\n", "sharder.reshard.auto_factor"),
            ("auto_factor = nan\n", "sharder.reshard.auto_factor"),
            ("auto_factor = inf\n", "sharder.reshard.auto_factor"),
            ("poll_interval = \"30s\"\n", "sharder.reshard.poll_interval"),
            (
                "poll_interval = \"400d\"\n",
                "sharder.reshard.poll_interval",
            ),
            ("stall_after = \"10s\"\n", "sharder.reshard.stall_after"),
            ("stall_after = \"0s\"\n", "sharder.reshard.stall_after"),
        ] {
            let e = load(&format!("[sharder.reshard]\n{text}"), &[]).unwrap_err();
            assert!(e.contains(key), "{text} -> {e}");
        }
        let e = load("[sharder.reshard]\nauto_factor = 0.5\n", &[]).unwrap_err();
        assert!(
            e.contains("at least 1.0") && e.contains("0 (automatic"),
            "{e}"
        );
        let e = load("[sharder.reshard]\npoll_interval = \"30s\"\n", &[]).unwrap_err();
        assert!(e.contains("below 1m"), "{e}");
        for bad in [
            "[sharder.reshard]\nauto_factr = 2.0\n",
            "[sharder.reshard]\nauto_factor = \"often\"\n",
            "[sharder.reshard]\npoll_interval = 60\n",
        ] {
            assert!(load(bad, &[]).is_err(), "accepted: {bad}");
        }
        let e = load("", &[("BULWARK_SHARDER__RESHARD__AUTO_FACTOR", "0.9")]).unwrap_err();
        assert!(e.contains("sharder.reshard.auto_factor"), "{e}");
    }
}
