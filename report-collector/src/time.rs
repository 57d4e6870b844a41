//! Time in one place: how the collector writes a time (RFC 3339, UTC) and reads it as a
//! number, and the arithmetic on instants and durations that must not panic. A leaf: it
//! imports nothing of the collector.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last second RFC 3339 (and humantime) can write: 9999-12-31T23:59:59Z, after 1970.
pub const LAST_TIME: Duration = Duration::from_secs(253_402_300_799);

/// RFC 3339 in UTC, whole seconds: how slots and times appear in the journal and in `status`.
/// A clock outside the years 1970 to 9999 (which RFC 3339 and humantime cannot write, and would
/// panic on) shows as the nearest end of that range.
pub fn format_time(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(clamped(at)).to_string()
}

/// [`format_time`] with milliseconds: for times read back to compute with (a ticket's age).
pub fn format_time_ms(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(clamped(at)).to_string()
}

/// `at` within what RFC 3339 can write (1970 to 9999).
fn clamped(at: SystemTime) -> SystemTime {
    at.clamp(UNIX_EPOCH, UNIX_EPOCH + LAST_TIME)
}

/// `start + wait` without the panic `Instant + Duration` has on overflow: a wait too long to
/// represent ends a century on, which no run outlives.
pub fn instant_after(start: tokio::time::Instant, wait: Duration) -> tokio::time::Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    start
        .checked_add(wait)
        .or_else(|| start.checked_add(CENTURY))
        .unwrap_or(start)
}

/// A duration cut to whole milliseconds, for messages.
pub fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Seconds since 1970 (0 for a time before), as the metrics and `status --json` give times.
pub fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The time `unix` seconds after 1970, saturating: a corrupt file may hold any number.
pub fn from_unix_seconds(unix: f64) -> SystemTime {
    Duration::try_from_secs_f64(unix.max(0.0))
        .ok()
        .and_then(|since| UNIX_EPOCH.checked_add(since))
        .unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn instants_saturate_instead_of_panicking() {
        let now = tokio::time::Instant::now();
        assert_eq!(instant_after(now, MINUTE), now + MINUTE);
        assert!(instant_after(now, Duration::MAX) > now + MINUTE);
    }

    #[test]
    fn times_outside_what_rfc3339_writes_are_clamped_not_a_panic() {
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(1_704_110_400)),
            "2024-01-01T12:00:00Z"
        );
        let before_1970 = UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(format_time(before_1970), "1970-01-01T00:00:00Z");
        let after_9999 = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(format_time(after_9999), "9999-12-31T23:59:59Z");
    }
}
