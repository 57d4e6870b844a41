//! The experiment's time line: seconds since the first slot, tied to the wall clock.
//!
//! Everything measured is placed on one monotonic axis so runs, samples and slots of all arms
//! can be compared; slot 0 is on the wall clock's grid of slots, as the collector's
//! `schedule-period` slots are.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Slot 0 on both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    t0: Instant,
    t0_epoch: Duration,
}

impl Clock {
    /// A clock whose slot 0 is the first multiple of `slot` since the epoch at least `lead_in`
    /// from now, so that a collector that counts slots from the wall clock agrees with ours.
    pub fn aligned(slot: Duration, lead_in: Duration) -> Clock {
        let now_instant = Instant::now();
        let now_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let earliest = (now_epoch + lead_in).as_nanos();
        let slot_ns = slot.as_nanos().max(1);
        let t0_ns = earliest.div_ceil(slot_ns) * slot_ns;
        let t0_epoch = nanos(t0_ns);
        let wait = t0_epoch.saturating_sub(now_epoch);
        Clock {
            t0: now_instant + wait,
            t0_epoch,
        }
    }

    /// The instant `secs` after slot 0 (negative: before it).
    pub fn instant(&self, secs: f64) -> Instant {
        if secs >= 0.0 {
            self.t0 + Duration::from_secs_f64(secs)
        } else {
            self.t0
                .checked_sub(Duration::from_secs_f64(-secs))
                .unwrap_or(self.t0)
        }
    }

    /// Seconds since slot 0 of an instant.
    pub fn secs(&self, at: Instant) -> f64 {
        if at >= self.t0 {
            at.duration_since(self.t0).as_secs_f64()
        } else {
            -self.t0.duration_since(at).as_secs_f64()
        }
    }

    /// Slot 0 on the wall clock.
    pub fn slot_zero(&self) -> SystemTime {
        UNIX_EPOCH + self.t0_epoch
    }

    /// Seconds since slot 0 of a wall-clock time (a collector's log line), on the assumption
    /// that the wall clock does not step during the experiment.
    pub fn secs_of_wall(&self, at: SystemTime) -> f64 {
        match at.duration_since(self.slot_zero()) {
            Ok(after) => after.as_secs_f64(),
            Err(before) => -before.duration().as_secs_f64(),
        }
    }

    /// Seconds since slot 0, now.
    pub fn now(&self) -> f64 {
        self.secs(Instant::now())
    }
}

fn nanos(ns: u128) -> Duration {
    let secs = u64::try_from(ns / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 1e9 and fits.
    Duration::new(secs, (ns % 1_000_000_000) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_zero_is_on_the_wall_clock_grid() {
        let clock = Clock::aligned(Duration::from_secs(3), Duration::from_millis(10));
        let since_epoch = clock.slot_zero().duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(since_epoch.as_micros() % 3_000_000, 0);
        assert!(clock.now() < 0.0);
        assert!(clock.now() > -3.1);
        let zero = clock.slot_zero();
        assert_eq!(clock.secs_of_wall(zero + Duration::from_millis(1500)), 1.5);
        assert_eq!(clock.secs_of_wall(zero - Duration::from_millis(250)), -0.25);
    }
}
