//! The heavy-load clock: when the server is in a heavy-load phase.
//!
//! The phase is a pure function of time (since start, or since the reload that changed the
//! period), so the ticket store can tell exactly when generation was frozen between two
//! requests without any task flipping a flag; a single background task only logs the toggles
//! as they happen.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::HeavyLoad;

/// Alternating heavy-load phases of equal length: `initially_on` until `first_toggle`, then
/// toggling every `period`.
#[derive(Debug, Clone, Copy)]
pub struct LoadClock {
    first_toggle: Instant,
    period: Duration,
    initially_on: bool,
}

impl LoadClock {
    pub fn new(config: &HeavyLoad, start: Instant) -> Self {
        Self {
            first_toggle: later(start, config.period),
            period: config.period,
            initially_on: config.initially_on,
        }
    }

    /// The clock after a reload at `now` to `config`: the phase under way keeps its state and
    /// ends when it would have (or, when no toggle was due, one new period from now); the
    /// phases after it last the new period. `initially-on` only matters at start.
    pub fn reloaded(&self, config: &HeavyLoad, now: Instant) -> Self {
        let first_toggle = self
            .next_toggle(now)
            .unwrap_or_else(|| later(now, config.period));
        Self {
            first_toggle,
            period: config.period,
            initially_on: self.is_heavy(now),
        }
    }

    /// Toggles done by `at`.
    fn phase(&self, at: Instant) -> u128 {
        if at < self.first_toggle || self.period.is_zero() {
            return 0;
        }
        1 + (at - self.first_toggle).as_nanos() / self.period.as_nanos()
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
        // A toggle past the ends of `Instant` never comes.
        let nanos = self.phase(at).checked_mul(self.period.as_nanos())?;
        self.first_toggle
            .checked_add(Duration::from_nanos(u64::try_from(nanos).ok()?))
    }
}

/// `at + by`, saturating a century ahead (or at `at`) instead of overflowing: a time that far
/// off never comes in a server's life, and `Instant + Duration` would panic past its range.
pub fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(at)
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

    #[test]
    fn extreme_periods_neither_panic_nor_wrap() {
        let start = Instant::now();
        for period in [
            Duration::MAX,
            Duration::from_secs(u64::MAX / 2),
            Duration::from_nanos(1),
        ] {
            for initially_on in [false, true] {
                let config = HeavyLoad {
                    period,
                    initially_on,
                };
                let clock = LoadClock::new(&config, start);
                let far = later(start, Duration::MAX);
                for at in [start, start + Duration::from_secs(86_400), far] {
                    let heavy = clock.is_heavy(at);
                    if let Some(next) = clock.next_toggle(at) {
                        assert!(next > at, "{period:?} at {at:?}");
                    }
                    let reloaded = clock.reloaded(&config, at);
                    assert_eq!(reloaded.is_heavy(at), heavy, "a reload keeps the phase");
                }
            }
        }
        let clock = LoadClock::new(
            &HeavyLoad {
                period: Duration::MAX,
                initially_on: false,
            },
            start,
        );
        assert!(!clock.is_heavy(start + Duration::from_secs(10 * 365 * 86_400)));
    }

    #[test]
    fn a_reload_keeps_the_phase_under_way_and_then_uses_the_new_period() {
        let (clock, start) = clock(100, false);
        let ms = |n| start + Duration::from_millis(n);
        // At 150 ms a heavy phase is under way until 200 ms; the new period is 1 s.
        let longer = HeavyLoad {
            period: Duration::from_secs(1),
            initially_on: false,
        };
        let reloaded = clock.reloaded(&longer, ms(150));
        assert!(reloaded.is_heavy(ms(150)) && reloaded.is_heavy(ms(199)));
        assert_eq!(reloaded.next_toggle(ms(150)), Some(ms(200)));
        assert!(!reloaded.is_heavy(ms(200)) && !reloaded.is_heavy(ms(1199)));
        assert!(reloaded.is_heavy(ms(1200)));
        assert_eq!(reloaded.next_toggle(ms(1200)), Some(ms(2200)));

        // Turning the toggling off keeps the state there is; turning it on starts from now.
        let never = HeavyLoad {
            period: Duration::ZERO,
            initially_on: false,
        };
        let frozen = reloaded.reloaded(&never, ms(1500));
        assert!(frozen.is_heavy(ms(1500)) && frozen.is_heavy(ms(99_000)));
        assert_eq!(frozen.next_toggle(ms(1500)), None);
        let again = frozen.reloaded(&longer, ms(2000));
        assert!(again.is_heavy(ms(2999)) && !again.is_heavy(ms(3000)));
    }
}
