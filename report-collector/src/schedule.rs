//! Schedule awareness: which slot a run belongs to and whether a timer started it too late.
//!
//! The slot is the `schedule-period` slot (aligned to the Unix epoch, hence to the wall clock)
//! that contains the moment the run starts; a run is late by the time since that slot.
//! `TRIGGER_UNIT` says whether a timer started the run. `TRIGGER_TIMER_REALTIME_USEC` is NOT
//! used for lateness: measured on Debian 12 (systemd 252) with a 10 s timer and a 25 s
//! oneshot, every start (the re-fires right after a run and the later on-time starts alike)
//! carried the same value, the time of the first elapse after the timer was started. A slot
//! computed from it would make every run after the first look late.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What started this run, as systemd tells it (systemd.exec(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Started by hand (or by anything that is not a timer): never skipped for lateness.
    Manual,
    /// Started by a timer unit; `fired_at` is what systemd passed, kept for the record only.
    Timer {
        unit: String,
        fired_at: Option<SystemTime>,
    },
}

impl Trigger {
    /// Reads `TRIGGER_UNIT` and `TRIGGER_TIMER_REALTIME_USEC` from the environment.
    pub fn from_env() -> Trigger {
        Trigger::from_vars(
            std::env::var("TRIGGER_UNIT").ok(),
            std::env::var("TRIGGER_TIMER_REALTIME_USEC").ok(),
        )
    }

    /// The pure part of [`Trigger::from_env`]: a `.path` or socket unit is not a timer.
    pub fn from_vars(unit: Option<String>, realtime_usec: Option<String>) -> Trigger {
        let fired_at = realtime_usec
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|usec| UNIX_EPOCH + Duration::from_micros(usec));
        match unit {
            Some(unit) if unit.ends_with(".timer") || fired_at.is_some() => {
                Trigger::Timer { unit, fired_at }
            }
            None if fired_at.is_some() => Trigger::Timer {
                unit: String::new(),
                fired_at,
            },
            _ => Trigger::Manual,
        }
    }

    /// How the journal names the trigger: the timer unit, or `manual`.
    pub fn describe(&self) -> String {
        match self {
            Trigger::Manual => "manual".to_owned(),
            Trigger::Timer { unit, .. } if unit.is_empty() => "timer".to_owned(),
            Trigger::Timer { unit, .. } => unit.clone(),
        }
    }
}

/// The start of the `period` slot containing `at`, aligned to the Unix epoch.
pub fn slot_of(at: SystemTime, period: Duration) -> SystemTime {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let period_ns = period.as_nanos().max(1);
    let slot_ns = since_epoch.as_nanos() / period_ns * period_ns;
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(slot_ns).unwrap_or(u64::MAX))
}

/// Where a run stands relative to its schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The slot this run belongs to (for a manual run: the slot it falls in).
    pub slot: SystemTime,
    /// How long after its slot the run started.
    pub late_by: Duration,
    /// Whether lateness may skip this run (only timer-started runs).
    pub timer_started: bool,
}

impl Placement {
    /// Places a run that starts `now` (see the module doc for why the trigger time is not used).
    pub fn of(trigger: &Trigger, now: SystemTime, period: Duration) -> Placement {
        let slot = slot_of(now, period);
        Placement {
            slot,
            late_by: now.duration_since(slot).unwrap_or_default(),
            timer_started: matches!(trigger, Trigger::Timer { .. }),
        }
    }

    /// `Some(late_by)` when `starting_deadline` says this run must skip itself.
    pub fn missed(&self, starting_deadline: Option<Duration>) -> Option<Duration> {
        let deadline = starting_deadline?;
        (self.timer_started && self.late_by > deadline).then_some(self.late_by)
    }
}

/// RFC 3339 in UTC, whole seconds: how slots and times appear in the journal and in `status`.
pub fn format_time(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn slots_align_to_the_wall_clock() {
        // 2024-01-01T12:00:00Z = 1704110400
        assert_eq!(slot_of(at(1_704_110_400 + 37), MINUTE), at(1_704_110_400));
        assert_eq!(slot_of(at(1_704_110_400), MINUTE), at(1_704_110_400));
        assert_eq!(
            slot_of(at(1_704_110_400 + 299), Duration::from_secs(300)),
            at(1_704_110_400)
        );
        assert_eq!(format_time(at(1_704_110_400)), "2024-01-01T12:00:00Z");
    }

    #[test]
    fn manual_runs_are_never_late() {
        let p = Placement::of(&Trigger::Manual, at(1_704_110_459), MINUTE);
        assert_eq!(p.slot, at(1_704_110_400));
        assert_eq!(p.missed(Some(Duration::from_secs(10))), None);
    }

    #[test]
    fn a_timer_refire_long_after_the_slot_is_late() {
        // systemd re-fires the instant a 37 s run ends, 37 s into the minute.
        let now = at(1_704_110_437);
        let p = Placement::of(&timer(Some(now)), now, MINUTE);
        assert_eq!(p.slot, at(1_704_110_400));
        assert_eq!(p.late_by, Duration::from_secs(37));
        assert_eq!(
            p.missed(Some(Duration::from_secs(10))),
            Some(Duration::from_secs(37))
        );
        assert_eq!(p.missed(None), None);
    }

    #[test]
    fn a_timer_start_on_time_runs_even_with_a_stale_trigger_time() {
        // systemd 252 passes the first elapse's time on every later start.
        let now = at(1_704_110_400) + Duration::from_millis(320);
        let stale = now - Duration::from_secs(3600);
        let p = Placement::of(&timer(Some(stale)), now, MINUTE);
        assert_eq!(p.slot, at(1_704_110_400));
        assert_eq!(p.missed(Some(Duration::from_secs(10))), None);
    }

    fn timer(fired_at: Option<SystemTime>) -> Trigger {
        Trigger::Timer {
            unit: "report-collector.timer".into(),
            fired_at,
        }
    }

    #[test]
    fn trigger_comes_from_systemd_variables() {
        assert_eq!(Trigger::from_vars(None, None), Trigger::Manual);
        assert_eq!(
            Trigger::from_vars(Some("foo.path".into()), None),
            Trigger::Manual
        );
        assert_eq!(
            Trigger::from_vars(
                Some("report-collector.timer".into()),
                Some("1704110400000000".into())
            ),
            Trigger::Timer {
                unit: "report-collector.timer".into(),
                fired_at: Some(at(1_704_110_400)),
            }
        );
        assert_eq!(
            Trigger::from_vars(Some("report-collector.timer".into()), None),
            Trigger::Timer {
                unit: "report-collector.timer".into(),
                fired_at: None,
            }
        );
    }
}
