//! Time in one place: the one wall-clock type the collector carries ([`Timestamp`]), how it
//! is written where it leaves the program (RFC 3339 UTC in whole seconds or milliseconds, Unix
//! seconds) and read where it enters, and the arithmetic on instants and durations that must
//! not panic. A leaf: it imports nothing of the collector.
//!
//! A time is turned into text or a number only at an edge: the journal (`Display`), files and
//! JSON (the serde forms in [`serde`]), the metrics file. A time read from what another process
//! wrote is parsed once, where it enters, into an `Option<Timestamp>`: one that does not read
//! is not on record, and is never shown as it was written.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last second RFC 3339 (and humantime) can write: 9999-12-31T23:59:59Z, after 1970.
pub const LAST_TIME: Duration = Duration::from_secs(253_402_300_799);

/// A wall-clock time (the realtime clock, not the monotonic one: a run's deadlines and waits
/// are `tokio::time::Instant`s). It holds any `SystemTime`; only its written forms are bound
/// to the years 1970 to 9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(SystemTime);

impl Timestamp {
    /// 1970-01-01T00:00:00Z.
    pub const UNIX_EPOCH: Timestamp = Timestamp(UNIX_EPOCH);

    /// The clock now.
    pub fn now() -> Timestamp {
        Timestamp(SystemTime::now())
    }

    /// The time `unix` seconds after 1970, saturating: a corrupt file may hold any number
    /// (one that is not a time from 1970 on reads as 1970).
    pub fn from_unix_seconds(unix: f64) -> Timestamp {
        Timestamp(
            Duration::try_from_secs_f64(unix.max(0.0))
                .ok()
                .and_then(|since| UNIX_EPOCH.checked_add(since))
                .unwrap_or(UNIX_EPOCH),
        )
    }

    /// Seconds since 1970 (0 for a time before), as the metrics, the state file and `status
    /// --json` give times.
    pub fn unix_seconds(self) -> f64 {
        self.0
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    }

    /// An RFC 3339 time as the collector writes it (UTC, `Z`, any fraction of a second);
    /// `None` for anything else.
    pub fn parse(text: &str) -> Option<Timestamp> {
        humantime::parse_rfc3339(text).ok().map(Timestamp)
    }

    /// The `SystemTime` it is, for what takes one (a database parameter, a file's time).
    pub fn system_time(self) -> SystemTime {
        self.0
    }

    /// RFC 3339 in UTC with milliseconds, for times read back to compute with (a ticket's
    /// age); the `Display` form has whole seconds. Clamped as [`Display`](fmt::Display) is.
    pub fn millis(self) -> impl fmt::Display {
        humantime::format_rfc3339_millis(self.clamped())
    }

    /// `self + by`, or `None` past what a `SystemTime` holds.
    pub fn checked_add(self, by: Duration) -> Option<Timestamp> {
        self.0.checked_add(by).map(Timestamp)
    }

    /// How long after `earlier` this is; zero when it is not after it (a clock set back).
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        self.0.duration_since(earlier.0).unwrap_or_default()
    }

    /// How long after `earlier` this is, or how long before it (`Err`).
    pub fn duration_since(self, earlier: Timestamp) -> Result<Duration, Duration> {
        self.0
            .duration_since(earlier.0)
            .map_err(|before| before.duration())
    }

    /// Within what RFC 3339 can write (1970 to 9999).
    fn clamped(self) -> SystemTime {
        self.0.clamp(UNIX_EPOCH, UNIX_EPOCH + LAST_TIME)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(at: SystemTime) -> Timestamp {
        Timestamp(at)
    }
}

/// RFC 3339 in UTC, whole seconds: how slots and times appear in the journal, in `status`
/// and in file names. A time outside the years 1970 to 9999 (which RFC 3339 and humantime
/// cannot write, and would panic on) shows as the nearest end of that range.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&humantime::format_rfc3339_seconds(self.clamped()), f)
    }
}

/// `SystemTime + Duration`, panicking as that does on overflow: for constants and tests.
impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, by: Duration) -> Timestamp {
        Timestamp(self.0 + by)
    }
}

/// `SystemTime - Duration`, panicking as that does on overflow: for constants and tests.
impl std::ops::Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, by: Duration) -> Timestamp {
        Timestamp(self.0 - by)
    }
}

/// [`Timestamp`]'s `Display` of a `SystemTime` read from outside the type (a database row's
/// column, kept as the database client gives it).
pub fn format_time(at: SystemTime) -> String {
    Timestamp(at).to_string()
}

/// The forms a [`Timestamp`] takes in files and JSON, for `#[serde(with = ...)]`. Each writes
/// exactly what the collector has always written; the `*_or_none` forms read a time another
/// process wrote: one that does not read is `None`, not an error that would refuse the whole
/// record.
pub mod serde {
    use ::serde::{Deserialize, Deserializer, Serializer};

    use super::Timestamp;

    /// RFC 3339 UTC, whole seconds (`2024-01-01T12:00:00Z`); read strictly.
    pub mod seconds {
        use super::*;

        pub fn serialize<S: Serializer>(at: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(at)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            Timestamp::parse(&text)
                .ok_or_else(|| ::serde::de::Error::custom("not an RFC 3339 time"))
        }
    }

    /// An optional time as [`seconds`] writes it (`null` for none); one that does not read is
    /// none.
    pub mod seconds_or_none {
        use super::*;

        pub fn serialize<S: Serializer>(at: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => s.collect_str(at),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            lenient(d)
        }
    }

    /// An optional time in RFC 3339 UTC with milliseconds (`2024-01-01T12:00:00.250Z`,
    /// `null` for none); one that does not read is none.
    pub mod millis_or_none {
        use super::*;

        pub fn serialize<S: Serializer>(at: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => s.collect_str(&at.millis()),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            lenient(d)
        }
    }

    /// Unix seconds as a JSON number (`1704110400.25`); any number reads, saturating
    /// ([`Timestamp::from_unix_seconds`]).
    pub mod unix {
        use super::*;

        pub fn serialize<S: Serializer>(at: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_f64(at.unix_seconds())
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
            f64::deserialize(d).map(Timestamp::from_unix_seconds)
        }
    }

    /// A string that may be a time (or `null`): one that does not read is none. A value that
    /// is not a string is refused, as it always was.
    fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        let text = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        Ok(text.and_then(|text| Timestamp::parse(&text)))
    }
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
        let at = Timestamp::UNIX_EPOCH + Duration::from_secs(1_704_110_400);
        assert_eq!(at.to_string(), "2024-01-01T12:00:00Z");
        let before_1970 = Timestamp::UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(before_1970.to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(before_1970.millis().to_string(), "1970-01-01T00:00:00.000Z");
        let after_9999 = Timestamp::UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(after_9999.to_string(), "9999-12-31T23:59:59Z");
        assert_eq!(after_9999.millis().to_string(), "9999-12-31T23:59:59.000Z");
    }

    #[test]
    fn what_is_written_reads_back_as_written() {
        let at = Timestamp::UNIX_EPOCH + Duration::from_millis(1_704_110_400_250);
        assert_eq!(Timestamp::parse(&at.millis().to_string()), Some(at));
        assert_eq!(at.millis().to_string(), "2024-01-01T12:00:00.250Z");
        for text in [
            "",
            "yesterday",
            "2024-01-01T12:00:00Z\nhealth: healthy",
            "\u{0}",
        ] {
            assert_eq!(Timestamp::parse(text), None, "{text:?}");
        }
    }

    /// The state file's Unix seconds, read back and written again, are the same number: the
    /// state file and `status --json` echo them. (Nanoseconds are finer than an `f64`'s step
    /// from 2^24 s, 1970-07-14, on; earlier times are whole or half seconds in practice.)
    #[test]
    fn unix_seconds_read_back_are_the_same_number() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let nanos = (1u64 << 54) | (x >> 1);
            let written = (Timestamp::UNIX_EPOCH + Duration::from_nanos(nanos)).unix_seconds();
            let read = Timestamp::from_unix_seconds(written);
            assert_eq!(read.unix_seconds().to_bits(), written.to_bits(), "{nanos}");
            let sum = written + (x % 100_000) as f64 / 1000.0;
            let again = Timestamp::from_unix_seconds(sum).unix_seconds();
            assert_eq!(again.to_bits(), sum.to_bits(), "{sum}");
        }
        for exact in [0.0, 1000.0, 1061.5, 1_704_110_405.25] {
            assert_eq!(Timestamp::from_unix_seconds(exact).unix_seconds(), exact);
        }
    }
}
