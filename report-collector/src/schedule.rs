//! Schedule awareness: which slot a run belongs to and whether a timer started it too late.
//!
//! A run started by the timer belongs to the elapse that fired it, as systemd tells it (see
//! [`crate::systemd`]): a catch-up re-fire right after a long run belongs to the elapse the
//! run swallowed, and is late by the time since. Where systemd cannot say (no bus, a timer
//! without `OnCalendar=`, `--trigger timer` outside systemd), the slot is the
//! `schedule-period` slot (aligned to the Unix epoch, hence to the wall clock) that contains
//! the moment the run starts. `TRIGGER_TIMER_REALTIME_USEC` is never used: measured on
//! Debian 12 (systemd 252) and 13 (257), every start carries the time of the timer's first
//! elapse.

use std::time::Duration;

use crate::time::Timestamp;

/// What started this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Started by hand (or by anything that is not a timer): never skipped for lateness.
    Manual,
    /// Started by a timer; `slot` is the elapse that fired it, when systemd could tell.
    Timer {
        unit: String,
        slot: Option<Timestamp>,
    },
}

impl Trigger {
    /// How the journal names the trigger: the timer unit, `timer`, or `manual`.
    pub fn describe(&self) -> String {
        match self {
            Trigger::Manual => "manual".to_owned(),
            Trigger::Timer { unit, .. } if unit.is_empty() => "timer".to_owned(),
            Trigger::Timer { unit, .. } => unit.clone(),
        }
    }

    pub fn is_manual(&self) -> bool {
        matches!(self, Trigger::Manual)
    }
}

/// `--trigger`: how a run outside systemd declares what started it (tests, the experiment,
/// another scheduler); `auto` asks systemd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DeclaredTrigger {
    #[default]
    Auto,
    Timer,
    Manual,
}

/// The start of the `period` slot containing `at`, aligned to the Unix epoch.
pub fn slot_of(at: Timestamp, period: Duration) -> Timestamp {
    let since_epoch = at.saturating_duration_since(Timestamp::UNIX_EPOCH);
    let period_ns = period.as_nanos().max(1);
    let slot_ns = since_epoch.as_nanos() / period_ns * period_ns;
    Timestamp::UNIX_EPOCH + Duration::from_nanos(u64::try_from(slot_ns).unwrap_or(u64::MAX))
}

/// Where a run stands relative to its schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The slot this run belongs to (for a manual run: the slot it falls in).
    pub slot: Timestamp,
    /// How long after its slot the run started.
    pub late_by: Duration,
    /// Whether lateness may skip this run (only timer-started runs).
    pub timer_started: bool,
}

impl Placement {
    /// Places a run that starts `now`: in the elapse systemd named, else in its
    /// `schedule-period` slot.
    pub fn of(trigger: &Trigger, now: Timestamp, period: Duration) -> Placement {
        let slot = match trigger {
            Trigger::Timer {
                slot: Some(slot), ..
            } if *slot <= now => *slot,
            _ => slot_of(now, period),
        };
        Placement {
            slot,
            late_by: now.saturating_duration_since(slot),
            timer_started: matches!(trigger, Trigger::Timer { .. }),
        }
    }

    /// `Some(late_by)` when `starting_deadline` says this run must skip itself.
    pub fn missed(&self, starting_deadline: Option<Duration>) -> Option<Duration> {
        let deadline = starting_deadline?;
        (self.timer_started && self.late_by > deadline).then_some(self.late_by)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Timestamp {
        Timestamp::UNIX_EPOCH + Duration::from_secs(secs)
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
    }

    #[test]
    fn times_outside_what_rfc3339_writes_are_placed_not_a_panic() {
        let before_1970 = Timestamp::UNIX_EPOCH - Duration::from_secs(86_400);
        let after_9999 = Timestamp::UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        let p = Placement::of(&Trigger::Manual, before_1970, MINUTE);
        assert_eq!(p.slot, Timestamp::UNIX_EPOCH);
        let p = Placement::of(&Trigger::Manual, after_9999, Duration::from_nanos(1));
        assert!(p.slot <= after_9999);
    }

    #[test]
    fn manual_runs_are_never_late() {
        let p = Placement::of(&Trigger::Manual, at(1_704_110_459), MINUTE);
        assert_eq!(p.slot, at(1_704_110_400));
        assert_eq!(p.missed(Some(Duration::from_secs(10))), None);
    }

    #[test]
    fn a_timer_refire_belongs_to_the_elapse_systemd_names() {
        // systemd re-fires the instant a 75 s run ends, 15 s into the next minute, and names
        // the elapse the run swallowed.
        let swallowed = at(1_704_110_460);
        let now = swallowed + Duration::from_secs(15);
        let p = Placement::of(&timer(Some(swallowed)), now, MINUTE);
        assert_eq!(p.slot, swallowed);
        assert_eq!(p.late_by, Duration::from_secs(15));
        assert_eq!(
            p.missed(Some(Duration::from_secs(10))),
            Some(Duration::from_secs(15))
        );
        assert_eq!(p.missed(None), None);
    }

    #[test]
    fn the_timers_own_schedule_wins_over_schedule_period() {
        // OnCalendar=*:0/5 changed in a drop-in, schedule-period left at 1m: a start 30 s
        // after the 12:05 elapse is late by 30 s, not by the 30 s into "its minute" only by
        // chance.
        let elapse = at(1_704_110_700);
        let now = elapse + Duration::from_secs(90);
        let p = Placement::of(&timer(Some(elapse)), now, MINUTE);
        assert_eq!(p.slot, elapse);
        assert_eq!(p.late_by, Duration::from_secs(90));
    }

    #[test]
    fn without_a_slot_from_systemd_the_period_slot_is_used() {
        let now = at(1_704_110_437);
        let p = Placement::of(&timer(None), now, MINUTE);
        assert_eq!(p.slot, at(1_704_110_400));
        assert_eq!(p.late_by, Duration::from_secs(37));
        // A slot in the future (a clock step) is not trusted either.
        let p = Placement::of(&timer(Some(now + MINUTE)), now, MINUTE);
        assert_eq!(p.slot, at(1_704_110_400));
    }

    fn timer(slot: Option<Timestamp>) -> Trigger {
        Trigger::Timer {
            unit: "report-collector.timer".into(),
            slot,
        }
    }

    #[test]
    fn triggers_are_named_for_the_journal() {
        assert_eq!(Trigger::Manual.describe(), "manual");
        assert_eq!(timer(None).describe(), "report-collector.timer");
    }
}
