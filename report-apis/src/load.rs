//! The heavy-load clock: when the server is in a heavy-load phase.
//!
//! The phase is a pure function of time since start, so the ticket store can tell exactly when
//! generation was frozen between two requests without any task flipping a flag; a single
//! background task only logs the toggles as they happen.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::HeavyLoad;

/// Alternating heavy-load phases of equal length, starting at `start`.
#[derive(Debug, Clone, Copy)]
pub struct LoadClock {
    start: Instant,
    period: Duration,
    initially_on: bool,
}

impl LoadClock {
    pub fn new(config: &HeavyLoad, start: Instant) -> Self {
        Self {
            start,
            period: config.period,
            initially_on: config.initially_on,
        }
    }

    fn phase(&self, at: Instant) -> u128 {
        at.saturating_duration_since(self.start).as_nanos() / self.period.as_nanos()
    }

    /// Whether the server is under heavy load at `at`.
    pub fn is_heavy(&self, at: Instant) -> bool {
        if self.period.is_zero() {
            return self.initially_on;
        }
        self.initially_on ^ (self.phase(at) % 2 == 1)
    }

    /// The first toggle strictly after `at`; `None` when the state never changes.
    pub fn next_toggle(&self, at: Instant) -> Option<Instant> {
        if self.period.is_zero() {
            return None;
        }
        let nanos = (self.phase(at) + 1).checked_mul(self.period.as_nanos())?;
        Some(self.start + Duration::from_nanos(u64::try_from(nanos).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(period_ms: u64, initially_on: bool) -> (LoadClock, Instant) {
        let start = Instant::now();
        let config = HeavyLoad {
            period: Duration::from_millis(period_ms),
            initially_on,
        };
        (LoadClock::new(&config, start), start)
    }

    #[test]
    fn toggles_every_period_starting_off() {
        let (clock, start) = clock(100, false);
        let ms = |n| start + Duration::from_millis(n);
        assert!(!clock.is_heavy(ms(0)));
        assert!(!clock.is_heavy(ms(99)));
        assert!(clock.is_heavy(ms(100)));
        assert!(clock.is_heavy(ms(199)));
        assert!(!clock.is_heavy(ms(200)));
        assert_eq!(clock.next_toggle(ms(0)), Some(ms(100)));
        assert_eq!(clock.next_toggle(ms(100)), Some(ms(200)));
        assert_eq!(clock.next_toggle(ms(150)), Some(ms(200)));
    }

    #[test]
    fn initially_on_inverts_the_phases() {
        let (clock, start) = clock(100, true);
        assert!(clock.is_heavy(start));
        assert!(!clock.is_heavy(start + Duration::from_millis(150)));
    }

    #[test]
    fn zero_period_never_toggles() {
        let (off, start) = clock(0, false);
        let later = start + Duration::from_secs(86_400);
        assert!(!off.is_heavy(later));
        assert_eq!(off.next_toggle(later), None);
        let (on, start) = clock(0, true);
        assert!(on.is_heavy(start + Duration::from_secs(86_400)));
    }
}
