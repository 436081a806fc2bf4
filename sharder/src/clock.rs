//! Wall-clock times in the form the cluster shares them: unix milliseconds
//! (envelopes' `received_at`, session epochs, reshard markers, the status
//! page's reports), so processes on different nodes can compare them.
//! Durations in milliseconds for JSON and Redis.

use std::time::Duration;

/// The envelope's clock (`received_at`'s unit), which the worker reads too.
pub(crate) use envelope::{unix_ms, unix_now_ms as now_ms};

/// `d` in whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn milliseconds_saturate_and_start_at_the_epoch() {
        assert_eq!(millis(Duration::from_micros(2_999)), 2);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1_234)), 1_234);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
