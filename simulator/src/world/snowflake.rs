//! Snowflake ids and timestamps from a virtual clock.
//!
//! Guild routing depends on the id (`shard = (guild_id >> 22) % num_shards`),
//! so the world must mint guild ids whose timestamp part lands on a chosen
//! shard. Every id comes from one virtual millisecond clock that only moves
//! forward, so ids are unique, increase in creation order, and are the same
//! for the same seed whatever the wall clock says.
//!
//! # Algorithm
//! Each call advances the clock by at least one millisecond, so the 12-bit
//! increment can stay 0 and ids never collide. A guild id for shard `s` of
//! `n` advances the clock further to the next millisecond `t` with
//! `t % n == s`.

use super::json_text::push_padded;
#[cfg(test)]
use std::fmt::Write as _;

/// Discord's epoch (2015-01-01T00:00:00Z) in Unix milliseconds.
pub const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// The shard a guild routes to: `(guild_id >> 22) % num_shards`.
pub fn shard_of(guild_id: u64, num_shards: u32) -> u32 {
    ((guild_id >> 22) % u64::from(num_shards.max(1))) as u32
}

/// A monotonic virtual clock that mints snowflakes and ISO 8601 timestamps.
#[derive(Debug, Clone)]
pub(crate) struct SnowflakeClock {
    /// Milliseconds since the Discord epoch.
    ms: u64,
    /// The Unix second `iso_prefix` was written for.
    iso_secs: u64,
    /// `YYYY-MM-DDTHH:MM:SS.` of `iso_secs`: the clock moves a few
    /// milliseconds per event, so the date is rebuilt only every few
    /// hundred timestamps.
    iso_prefix: String,
}

impl SnowflakeClock {
    /// Starts the clock at 2024-01-01T00:00:00Z.
    pub(crate) fn new() -> Self {
        Self {
            ms: 1_704_067_200_000 - DISCORD_EPOCH_MS,
            iso_secs: u64::MAX,
            iso_prefix: String::with_capacity(20),
        }
    }

    /// A fresh id, newer than every id minted before.
    pub(crate) fn next_id(&mut self) -> u64 {
        self.ms += 1;
        self.encode()
    }

    /// A fresh id that routes to `shard` of `num_shards`.
    pub(crate) fn next_id_for_shard(&mut self, shard: u32, num_shards: u32) -> u64 {
        let n = u64::from(num_shards.max(1));
        self.ms += 1;
        let rem = self.ms % n;
        let want = u64::from(shard) % n;
        self.ms += (want + n - rem) % n;
        self.encode()
    }

    /// Advances the clock by `ms` without minting an id (time passing
    /// between events).
    pub(crate) fn advance(&mut self, ms: u64) {
        self.ms += ms;
    }

    /// The current time as Discord's ISO 8601 timestamp format.
    pub(crate) fn iso_now(&mut self) -> String {
        let mut s = String::with_capacity(32);
        self.push_iso_now(&mut s);
        s
    }

    /// Appends [`Self::iso_now`] to `out` (same text as [`iso8601`]).
    pub(crate) fn push_iso_now(&mut self, out: &mut String) {
        let unix_ms = self.ms + DISCORD_EPOCH_MS;
        let secs = unix_ms / 1000;
        if secs != self.iso_secs {
            self.iso_secs = secs;
            self.iso_prefix.clear();
            push_date_time(&mut self.iso_prefix, secs);
            self.iso_prefix.push('.');
        }
        out.push_str(&self.iso_prefix);
        push_padded(out, unix_ms % 1000, 3);
        out.push_str("000+00:00");
    }

    /// The current time in Unix seconds (TYPING_START's `timestamp`).
    pub(crate) fn unix_secs(&self) -> u64 {
        (self.ms + DISCORD_EPOCH_MS) / 1000
    }

    fn encode(&self) -> u64 {
        // worker 1, process 0, increment 0
        (self.ms << 22) | (1 << 17)
    }
}

/// Formats Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.ffffff+00:00` with
/// the formatter: the tests' oracle for [`SnowflakeClock::push_iso_now`].
#[cfg(test)]
pub(crate) fn iso8601(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let micros = (unix_ms % 1000) * 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let mut s = String::with_capacity(32);
    let _ = write!(
        s,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
    s
}

/// Appends `YYYY-MM-DDTHH:MM:SS` for Unix seconds `secs`.
fn push_date_time(out: &mut String, secs: u64) {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    push_padded(out, y.max(0) as u64, 4);
    out.push('-');
    push_padded(out, u64::from(m), 2);
    out.push('-');
    push_padded(out, u64::from(d), 2);
    out.push('T');
    push_padded(out, rem / 3600, 2);
    out.push(':');
    push_padded(out, (rem / 60) % 60, 2);
    out.push(':');
    push_padded(out, rem % 60, 2);
}

/// Howard Hinnant's days-to-civil-date conversion.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guild_ids_route_to_the_requested_shard_and_increase() {
        let mut c = SnowflakeClock::new();
        let mut last = 0;
        for shard in [0, 5, 5, 3, 0, 15] {
            let id = c.next_id_for_shard(shard, 16);
            assert_eq!(shard_of(id, 16), shard);
            assert!(id > last);
            last = id;
        }
        assert!(c.next_id() > last);
    }

    #[test]
    fn iso_dates_are_correct() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            iso8601(1_709_210_096_789),
            "2024-02-29T12:34:56.789000+00:00"
        );
        assert_eq!(
            SnowflakeClock::new().iso_now(),
            "2024-01-01T00:00:00.000000+00:00"
        );
    }

    #[test]
    fn the_cached_timestamp_follows_the_clock() {
        let mut c = SnowflakeClock::new();
        for step in [0, 1, 998, 1, 1, 3_600_000, 86_399_999, 7, 40_000_000_000] {
            c.advance(step);
            assert_eq!(c.iso_now(), iso8601(c.ms + DISCORD_EPOCH_MS));
        }
    }
}
