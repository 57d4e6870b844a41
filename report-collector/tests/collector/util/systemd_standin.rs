//! A stand-in for systemd's side of the D-Bus conversation a timer's run has, served on a
//! private bus (a real `dbus-daemon`): systemd cannot run in these tests or on the bench
//! machine (it is not PID 1 there). It owns `org.freedesktop.systemd1` and answers the calls
//! the collector makes (`Manager.GetUnitByPID`, `Manager.GetUnit`, `Properties.Get` on the
//! Unit and Timer interfaces) with values of the types systemd 252 and 257 give, shaped by
//! [`Answers`]. Used by the tests of `bus.rs` and, through `examples/systemd_standin.rs`, by
//! `bench/report-collector/run.sh`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zbus::interface;
use zbus::zvariant::OwnedObjectPath;

pub const SERVICE_PATH: &str = "/org/freedesktop/systemd1/unit/report_2dcollector_2eservice";
pub const TIMER_PATH: &str = "/org/freedesktop/systemd1/unit/report_2dcollector_2etimer";

/// What systemd is made to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// The timer started this run: it triggered the instant the run started, for the calendar
    /// elapse `elapse_ago` before now.
    TimerStart { elapse_ago: Duration },
    /// The timer last triggered `ago` before this run started: a start by hand.
    HandStart { ago: Duration },
    /// The unit's `Id` comes as a number instead of a string.
    WrongType,
}

/// CLOCK_MONOTONIC in µs, systemd's `...Monotonic` timestamps' clock.
fn monotonic_usec() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    let usec = Duration::from(now).as_micros();
    u64::try_from(usec).unwrap()
}

fn realtime_usec(at: SystemTime) -> u64 {
    u64::try_from(at.duration_since(UNIX_EPOCH).unwrap().as_micros()).unwrap()
}

/// The calendar elapse a timer start of `answers` belongs to, rounded down to whole seconds
/// as an `OnCalendar=` elapse is.
pub fn elapse_of(answers: Answers, now: SystemTime) -> SystemTime {
    let ago = match answers {
        Answers::TimerStart { elapse_ago } => elapse_ago,
        _ => Duration::from_secs(30),
    };
    let at = now - ago;
    UNIX_EPOCH + Duration::from_secs(at.duration_since(UNIX_EPOCH).unwrap().as_secs())
}

struct Manager;

#[interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    #[zbus(name = "GetUnitByPID")]
    fn get_unit_by_pid(&self, _pid: u32) -> OwnedObjectPath {
        OwnedObjectPath::try_from(SERVICE_PATH).unwrap()
    }

    #[zbus(name = "GetUnit")]
    fn get_unit(&self, name: &str) -> zbus::fdo::Result<OwnedObjectPath> {
        if name == "report-collector.timer" {
            Ok(OwnedObjectPath::try_from(TIMER_PATH).unwrap())
        } else {
            Err(zbus::fdo::Error::Failed(format!("Unit {name} not loaded.")))
        }
    }
}

struct Unit;

#[interface(name = "org.freedesktop.systemd1.Unit")]
impl Unit {
    #[zbus(property, name = "Id")]
    fn id(&self) -> String {
        "report-collector.service".to_owned()
    }

    #[zbus(property, name = "InactiveExitTimestampMonotonic")]
    fn inactive_exit_timestamp_monotonic(&self) -> u64 {
        monotonic_usec()
    }
}

/// The unit as a [`Answers::WrongType`] systemd shows it.
struct UnitOfWrongType;

#[interface(name = "org.freedesktop.systemd1.Unit")]
impl UnitOfWrongType {
    #[zbus(property, name = "Id")]
    fn id(&self) -> u32 {
        7
    }

    #[zbus(property, name = "InactiveExitTimestampMonotonic")]
    fn inactive_exit_timestamp_monotonic(&self) -> u64 {
        monotonic_usec()
    }
}

struct Timer {
    answers: Answers,
}

#[interface(name = "org.freedesktop.systemd1.Timer")]
impl Timer {
    #[zbus(property, name = "Unit")]
    fn unit(&self) -> String {
        "report-collector.service".to_owned()
    }

    #[zbus(property, name = "LastTriggerUSecMonotonic")]
    fn last_trigger_usec_monotonic(&self) -> u64 {
        match self.answers {
            Answers::HandStart { ago } => {
                monotonic_usec() - u64::try_from(ago.as_micros()).unwrap()
            }
            _ => monotonic_usec(),
        }
    }

    #[zbus(property, name = "LastTriggerUSec")]
    fn last_trigger_usec(&self) -> u64 {
        realtime_usec(elapse_of(self.answers, SystemTime::now()))
    }

    /// Infinity while the run it started goes on, as on 252 and 257.
    #[zbus(property, name = "NextElapseUSecRealtime")]
    fn next_elapse_usec_realtime(&self) -> u64 {
        u64::MAX
    }

    #[zbus(property, name = "TimersCalendar")]
    fn timers_calendar(&self) -> Vec<(String, String, u64)> {
        vec![(
            "OnCalendar".to_owned(),
            "*-*-* *:*:00".to_owned(),
            realtime_usec(elapse_of(self.answers, SystemTime::now())),
        )]
    }
}

/// Serves systemd's side on the bus at `address` until the connection is dropped.
pub async fn serve(address: &str, answers: Answers) -> zbus::Result<zbus::Connection> {
    let builder = zbus::connection::Builder::address(address)?
        .name("org.freedesktop.systemd1")?
        .serve_at("/org/freedesktop/systemd1", Manager)?
        .serve_at(TIMER_PATH, Timer { answers })?;
    let builder = if answers == Answers::WrongType {
        builder.serve_at(SERVICE_PATH, UnitOfWrongType)?
    } else {
        builder.serve_at(SERVICE_PATH, Unit)?
    };
    builder.build().await
}
