//! Asking systemd, over D-Bus, whether the timer started *this* run and which of its elapses
//! the run belongs to.
//!
//! systemd's own hints in the environment cannot tell (measured on Debian 12, systemd 252, and
//! Debian 13, systemd 257): `TRIGGER_UNIT` stays set on every start while the timer is active,
//! a `systemctl start` by hand included, and `TRIGGER_TIMER_REALTIME_USEC` carries the timer's
//! *first* elapse on every later start. What does tell, the same on both releases:
//!
//! - the timer's `LastTriggerUSecMonotonic` and this unit's `InactiveExitTimestampMonotonic`
//!   (the start of this invocation, as systemd recorded it): 11 to 30 ms apart on every timer
//!   start (on time, and the catch-up re-fire right after a long run), 9.3 s apart on a start
//!   by hand 25 s into the minute (the figures of the crate README);
//! - while the run it started goes on, the timer's `TimersCalendar` entry keeps the elapse that
//!   fired it: `17:23:00` for a start at `17:23:00.75`, and `17:24:00` for the re-fire at
//!   `17:24:15` after a 75 s run swallowed that elapse. (`NextElapseUSecRealtime` is infinity
//!   then, on both releases.) So the slot, and how late the run is, come from the timer's own
//!   schedule: an operator who changes `OnCalendar=` changes nothing else.
//!
//! The bus is asked only when `TRIGGER_UNIT` names a timer, within [`BUS_TIMEOUT`]; a run
//! outside systemd never connects. Where the bus cannot be asked, the caller keeps the old
//! rule (a timer is involved, so the run is a timer start) and says so once per boot.

use std::path::Path;
use std::time::Duration;

use report_common::message_id;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use crate::schedule::{DeclaredTrigger, Trigger};
use crate::time::Timestamp;

const DESTINATION: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const TIMER: &str = "org.freedesktop.systemd1.Timer";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

/// How long the whole conversation with the bus may take before the run goes on without it.
pub const BUS_TIMEOUT: Duration = Duration::from_secs(2);

/// How far apart the timer's last trigger and this invocation's start may be for the timer to
/// have started it: measured at most 30 ms. A start by hand within this second of the
/// trigger is taken for a timer start: while the timer's run goes on, systemd merges it into
/// that run's start job; after a timer run shorter than that, it is a run of its own, held to
/// `starting-deadline` as a timer start (late only when that is under a second) and, with the
/// PostgreSQL lock, skipped when the timer's run has collected that slot.
pub const SAME_START: Duration = Duration::from_secs(1);

/// What systemd says about this run and the timer named in `TRIGGER_UNIT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// This process's unit, e.g. `report-collector.service`.
    pub own_unit: String,
    /// `InactiveExitTimestampMonotonic` of this process's unit, in µs.
    pub own_start_usec: u64,
    /// The unit the timer starts (`Timer.Unit`).
    pub timer_starts: String,
    /// `LastTriggerUSecMonotonic` of the timer, in µs (0: never triggered).
    pub last_trigger_usec: u64,
    /// The `next_elapse` of each `OnCalendar=` entry, in µs since the epoch.
    pub calendar_elapses: Vec<u64>,
}

/// systemd's answer, judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The timer started this invocation; `slot` is the elapse that fired it (None for a timer
    /// without `OnCalendar=`).
    TimerStart { slot: Option<Timestamp> },
    /// Something else started it (`systemctl start` by hand, while the timer is active).
    NotTheTimer { reason: String },
}

impl Observed {
    /// Judges whether the timer started this invocation; `now` bounds the slot (an elapse in
    /// the future is the next one, not this run's).
    pub fn judge(&self, now: Timestamp) -> Verdict {
        if self.timer_starts != self.own_unit {
            return Verdict::NotTheTimer {
                reason: format!(
                    "the timer starts {}, not this unit ({})",
                    self.timer_starts, self.own_unit
                ),
            };
        }
        if self.last_trigger_usec == 0 {
            return Verdict::NotTheTimer {
                reason: "the timer has not triggered since it was started".to_owned(),
            };
        }
        let apart = Duration::from_micros(self.last_trigger_usec.abs_diff(self.own_start_usec));
        if apart > SAME_START {
            return Verdict::NotTheTimer {
                reason: format!(
                    "the timer last triggered {} {} this run started",
                    humantime::format_duration(crate::time::round_ms(apart)),
                    if self.last_trigger_usec < self.own_start_usec {
                        "before"
                    } else {
                        "after"
                    }
                ),
            };
        }
        let slot = self
            .calendar_elapses
            .iter()
            .filter_map(|&usec| Timestamp::UNIX_EPOCH.checked_add(Duration::from_micros(usec)))
            .filter(|&elapse| elapse <= now)
            .max();
        Verdict::TimerStart { slot }
    }
}

/// What started this run: what `--trigger` declares, else what systemd says. `trigger_unit` is
/// `TRIGGER_UNIT`; `note_dir` is where the once-per-boot note about a missing bus is
/// remembered (the state directory).
pub async fn trigger(
    declared: DeclaredTrigger,
    trigger_unit: Option<String>,
    note_dir: &Path,
) -> Trigger {
    let timer = match (declared, trigger_unit) {
        (DeclaredTrigger::Manual, _) => return Trigger::Manual,
        (DeclaredTrigger::Timer, _) => {
            return Trigger::Timer {
                unit: String::new(),
                slot: None,
            };
        }
        (DeclaredTrigger::Auto, Some(unit)) if unit.ends_with(".timer") => unit,
        (DeclaredTrigger::Auto, _) => return Trigger::Manual,
    };
    match observe(&timer).await {
        Ok(observed) => match observed.judge(Timestamp::now()) {
            Verdict::TimerStart { slot } => Trigger::Timer { unit: timer, slot },
            Verdict::NotTheTimer { reason } => {
                tracing::debug!("not a start by {timer}: {reason}");
                Trigger::Manual
            }
        },
        Err(e) => {
            if first_time_this_boot(note_dir) {
                tracing::warn!(
                    MESSAGE_ID = message_id::NO_BUS,
                    TIMER = timer.as_str(),
                    "cannot ask systemd over D-Bus whether {timer} started this run ({e}); \
                     treating every start as a timer start, so a run started by hand late in \
                     its slot may skip itself under starting-deadline. Install and start dbus \
                     (apt install dbus) to tell them apart. Said once per boot."
                );
            }
            Trigger::Timer {
                unit: timer,
                slot: None,
            }
        }
    }
}

/// True once per boot for `dir`: remembers the boot in `dir/no-bus.boot-id`. When the boot
/// cannot be told or the note not kept, it says true (better said twice than never).
fn first_time_this_boot(dir: &Path) -> bool {
    let Ok(boot_id) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") else {
        return true;
    };
    let marker = dir.join("no-bus.boot-id");
    // Read as every file the collector keeps: a FIFO or link there is refused, never waited on.
    if crate::files::read_existing(&marker)
        .is_ok_and(|noted| noted.as_deref() == Some(boot_id.as_bytes()))
    {
        return false;
    }
    let _ = crate::files::write_atomically(
        &marker,
        boot_id.as_bytes(),
        crate::files::Durability::Renamed,
    );
    true
}

/// The timer the package ships, whose schedule `status` reads when nothing names another.
pub const PACKAGED_TIMER: &str = "report-collector.timer";

/// The timer's interval as systemd shows it between runs: from its last trigger to its next
/// elapse, rounded up to whole seconds (a minutely timer with `AccuracySec=1s` triggers up to a
/// second after :00, so 59.x s is its minute). None while a run goes on (the next elapse is
/// infinity then) or before the first trigger.
pub fn interval_between(last_trigger_usec: u64, next_elapse_usec: u64) -> Option<Duration> {
    if last_trigger_usec == 0
        || next_elapse_usec == u64::MAX
        || next_elapse_usec <= last_trigger_usec
    {
        return None;
    }
    let usec = next_elapse_usec - last_trigger_usec;
    Some(Duration::from_secs(usec.div_ceil(1_000_000)))
}

/// Asks systemd for `timer`'s interval (see [`interval_between`]), within [`BUS_TIMEOUT`].
pub async fn timer_interval(timer: &str) -> Result<Option<Duration>, BusError> {
    tokio::time::timeout(BUS_TIMEOUT, async {
        let bus = zbus::Connection::system().await?;
        let path: OwnedObjectPath = call(&bus, "GetUnit", &(timer,)).await?;
        let last: u64 = get(&bus, &path, TIMER, "LastTriggerUSec").await?;
        let next: u64 = get(&bus, &path, TIMER, "NextElapseUSecRealtime").await?;
        Ok(interval_between(last, next))
    })
    .await
    .map_err(|_| BusError::Timeout)?
}

/// Why systemd could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "no answer from the system bus within {}",
        humantime::format_duration(BUS_TIMEOUT)
    )]
    Timeout,
    #[error("{0}")]
    Bus(#[from] zbus::Error),
    #[error("systemd answered {property} with a value of another type: {error}")]
    Type {
        property: &'static str,
        error: zbus::zvariant::Error,
    },
}

/// Asks systemd about this process's unit and `timer`, within [`BUS_TIMEOUT`].
pub async fn observe(timer: &str) -> Result<Observed, BusError> {
    tokio::time::timeout(BUS_TIMEOUT, observe_unbounded(timer))
        .await
        .map_err(|_| BusError::Timeout)?
}

async fn observe_unbounded(timer: &str) -> Result<Observed, BusError> {
    let bus = zbus::Connection::system().await?;
    let own_path: OwnedObjectPath = call(&bus, "GetUnitByPID", &(std::process::id(),)).await?;
    let own_unit: String = get(&bus, &own_path, UNIT, "Id").await?;
    let own_start_usec: u64 = get(&bus, &own_path, UNIT, "InactiveExitTimestampMonotonic").await?;

    let timer_path: OwnedObjectPath = call(&bus, "GetUnit", &(timer,)).await?;
    let timer_starts: String = get(&bus, &timer_path, TIMER, "Unit").await?;
    let last_trigger_usec: u64 = get(&bus, &timer_path, TIMER, "LastTriggerUSecMonotonic").await?;
    let calendar: Vec<(String, String, u64)> =
        get(&bus, &timer_path, TIMER, "TimersCalendar").await?;
    Ok(Observed {
        own_unit,
        own_start_usec,
        timer_starts,
        last_trigger_usec,
        calendar_elapses: calendar.into_iter().map(|(_, _, next)| next).collect(),
    })
}

async fn call<R>(
    bus: &zbus::Connection,
    method: &str,
    args: &(impl serde::Serialize + zbus::zvariant::DynamicType),
) -> Result<R, BusError>
where
    R: for<'d> serde::Deserialize<'d> + zbus::zvariant::Type,
{
    let reply = bus
        .call_method(Some(DESTINATION), MANAGER_PATH, Some(MANAGER), method, args)
        .await?;
    Ok(reply.body().deserialize()?)
}

/// One property, asked for by name: systemd's whole property sets would cost the run memory
/// to decode and keep for the five values it needs.
async fn get<T>(
    bus: &zbus::Connection,
    path: &OwnedObjectPath,
    interface: &str,
    name: &'static str,
) -> Result<T, BusError>
where
    T: TryFrom<OwnedValue, Error = zbus::zvariant::Error>,
{
    let reply = bus
        .call_method(
            Some(DESTINATION),
            path.as_ref(),
            Some(PROPERTIES),
            "Get",
            &(interface, name),
        )
        .await?;
    let value: OwnedValue = reply.body().deserialize()?;
    T::try_from(value).map_err(|error| BusError::Type {
        property: name,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Figures from a booted Debian 12 (systemd 252): a minutely timer, a 75 s first run.
    fn observed(last_trigger_usec: u64, own_start_usec: u64, elapse: u64) -> Observed {
        Observed {
            own_unit: "report-collector.service".into(),
            own_start_usec,
            timer_starts: "report-collector.service".into(),
            last_trigger_usec,
            calendar_elapses: vec![elapse],
        }
    }

    fn at_usec(usec: u64) -> Timestamp {
        Timestamp::UNIX_EPOCH + Duration::from_micros(usec)
    }

    #[test]
    fn an_on_time_timer_start_belongs_to_the_elapse_that_fired_it() {
        let o = observed(12_011_852_321, 12_011_864_620, 1_795_800_180_000_000);
        assert_eq!(
            o.judge(at_usec(1_795_800_180_753_196)),
            Verdict::TimerStart {
                slot: Some(at_usec(1_795_800_180_000_000))
            }
        );
    }

    #[test]
    fn the_refire_after_a_long_run_belongs_to_the_swallowed_elapse() {
        // Started 17:24:15.8, the end of the 75 s run; the timer still shows 17:24:00.
        let o = observed(12_086_925_648, 12_086_936_534, 1_795_800_240_000_000);
        assert_eq!(
            o.judge(at_usec(1_795_800_255_831_527)),
            Verdict::TimerStart {
                slot: Some(at_usec(1_795_800_240_000_000))
            }
        );
    }

    #[test]
    fn a_start_by_hand_while_the_timer_waits_is_not_the_timer() {
        // `systemctl start` 9.3 s after the timer's last trigger; its next elapse is ahead.
        let o = observed(12_086_925_648, 12_096_236_644, 1_795_800_300_000_000);
        match o.judge(at_usec(1_795_800_265_126_471)) {
            Verdict::NotTheTimer { reason } => {
                assert!(reason.contains("9s 310ms before"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_timer_that_starts_another_unit_or_never_triggered_did_not_start_this_run() {
        let mut o = observed(5_000_000, 5_010_000, 0);
        o.timer_starts = "other.service".into();
        assert!(matches!(
            o.judge(Timestamp::now()),
            Verdict::NotTheTimer { .. }
        ));
        let o = observed(0, 20_000, 0);
        assert!(matches!(
            o.judge(Timestamp::now()),
            Verdict::NotTheTimer { .. }
        ));
    }

    #[test]
    fn the_interval_is_from_the_last_trigger_to_the_next_elapse() {
        // Measured on 252: triggered 17:24:15.8 (a re-fire), next elapse 17:25:00; and an
        // on-time trigger at 17:26:00.75 with the next elapse at 17:27:00.
        assert_eq!(
            interval_between(1_795_800_360_738_383, 1_795_800_420_000_000),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            interval_between(1_795_800_000_000_000, 1_795_803_600_000_000),
            Some(Duration::from_secs(3600))
        );
        // While a run goes on, and before the first trigger: not known.
        assert_eq!(interval_between(1_795_800_360_738_383, u64::MAX), None);
        assert_eq!(interval_between(0, 1_795_800_420_000_000), None);
    }

    #[test]
    fn the_missing_bus_is_noted_once_per_boot() {
        let dir = tempfile::tempdir().unwrap();
        assert!(first_time_this_boot(dir.path()));
        assert!(!first_time_this_boot(dir.path()));
        // Another boot (or a note cut short) notes it again.
        std::fs::write(dir.path().join("no-bus.boot-id"), "a-previous-boot\n").unwrap();
        assert!(first_time_this_boot(dir.path()));
        assert!(!first_time_this_boot(dir.path()));
    }

    #[tokio::test]
    async fn a_declared_trigger_never_asks_the_bus() {
        let dir = tempfile::tempdir().unwrap();
        let unit = Some("report-collector.timer".to_owned());
        assert_eq!(
            trigger(DeclaredTrigger::Manual, unit.clone(), dir.path()).await,
            Trigger::Manual
        );
        assert_eq!(
            trigger(DeclaredTrigger::Timer, None, dir.path()).await,
            Trigger::Timer {
                unit: String::new(),
                slot: None
            }
        );
        assert_eq!(
            trigger(DeclaredTrigger::Auto, None, dir.path()).await,
            Trigger::Manual
        );
        assert_eq!(
            trigger(DeclaredTrigger::Auto, Some("x.path".into()), dir.path()).await,
            Trigger::Manual
        );
        // Nothing was noted: the bus was never needed.
        assert!(!dir.path().join("no-bus.boot-id").exists());
    }

    #[test]
    fn a_timer_without_calendar_entries_gives_no_slot() {
        let mut o = observed(5_000_000, 5_010_000, 0);
        o.calendar_elapses.clear();
        assert_eq!(
            o.judge(Timestamp::now()),
            Verdict::TimerStart { slot: None }
        );
        // An elapse after now is the next one, not this run's.
        let o = observed(5_000_000, 5_010_000, u64::MAX);
        assert_eq!(
            o.judge(Timestamp::now()),
            Verdict::TimerStart { slot: None }
        );
    }
}
