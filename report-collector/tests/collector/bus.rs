//! Asking systemd over D-Bus, end to end: the real collector binary talks to a real
//! `dbus-daemon` on a private socket, where a stand-in plays systemd's side (systemd cannot run
//! here: it is not PID 1; see `util/systemd_standin.rs`). The run's slot comes from the
//! timer's calendar entry, a start by hand is told from a timer start, and a bus without
//! systemd or with answers of the wrong type leaves the older rule in force, said once.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::util::systemd_standin::{self, Answers};
use crate::util::*;

/// A `dbus-daemon` of the test's own on a socket in a temp directory, killed when dropped.
struct Bus {
    daemon: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    fn start() -> Bus {
        let dir = tempfile::tempdir().unwrap();
        let socket: PathBuf = dir.path().join("bus");
        let address = format!("unix:path={}", socket.display());
        let daemon = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address={address}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "dbus-daemon (Debian's dbus-daemon package; scripts/install-deps.sh installs it)",
            );
        let start = Instant::now();
        while !socket.exists() {
            assert!(start.elapsed() < PATIENCE, "dbus-daemon did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        Bus {
            daemon,
            address,
            _dir: dir,
        }
    }

    /// systemd's side, answering `answers`, served from a thread until the guard is dropped.
    fn systemd(&self, answers: Answers) -> ServedOnThread {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let address = self.address.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                match systemd_standin::serve(&address, answers).await {
                    Ok(_connection) => {
                        ready_tx.send(Ok(())).unwrap();
                        // Served for as long as the connection lives.
                        let _ = stop_rx.await;
                    }
                    Err(e) => ready_tx.send(Err(e.to_string())).unwrap(),
                }
            });
        });
        ready_rx
            .recv_timeout(PATIENCE)
            .unwrap()
            .expect("the stand-in serves on the private bus");
        ServedOnThread::new(stop_tx, thread)
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// A run as systemd starts it while the timer is active: `TRIGGER_UNIT` set, the bus at
/// `bus`.
fn run_with_timer_unit(setup: &Setup, bus: &Bus) -> Finished {
    finish(
        setup
            .command(&[])
            .env("TRIGGER_UNIT", "report-collector.timer")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .spawn()
            .unwrap(),
    )
}

/// Hourly `schedule-period` and a 10 s deadline: a run placed by `schedule-period` would be
/// late at nearly every moment of the hour, so a run that is not skipped took its slot from
/// the timer.
fn hourly_setup(server: &ApiServer) -> Setup {
    Setup::new(
        &server.url,
        &[
            ("starting-deadline", "\"10s\""),
            ("schedule-period", "\"1h\""),
        ],
    )
}

fn no_bus_note(setup: &Setup) -> PathBuf {
    setup.state.parent().unwrap().join("no-bus.boot-id")
}

/// The run's decision line names `elapse` as its slot (or the second after: the stand-in's
/// clock may have turned between the test's reading and the run's).
fn assert_slot(run: &Finished, elapse: SystemTime) {
    let field = |at| format!("SLOT={}", humantime::format_rfc3339_seconds(at));
    let (slot, slot_after) = (field(elapse), field(elapse + Duration::from_secs(1)));
    assert!(
        run.stderr.contains(&slot) || run.stderr.contains(&slot_after),
        "want {slot}: {}",
        run.stderr
    );
}

fn past_the_first_seconds_of_an_hour() -> bool {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    now.as_secs() % 3600 > 15
}

#[test]
fn a_timer_start_takes_its_slot_from_the_timers_calendar_and_collects() {
    let server = ApiServer::fast();
    let setup = hourly_setup(&server);
    let bus = Bus::start();
    let answers = Answers::TimerStart {
        elapse_ago: Duration::from_millis(100),
    };
    let _systemd = bus.systemd(answers);
    let elapse = systemd_standin::elapse_of(answers, SystemTime::now());
    let run = run_with_timer_unit(&setup, &bus);
    assert_code(&run, 0);
    assert!(
        run.stderr.contains("TRIGGER=\"report-collector.timer\""),
        "{}",
        run.stderr
    );
    // The elapse the stand-in reported, not an hourly slot.
    assert_slot(&run, elapse);
    assert_eq!(setup.report_files().len(), 1);
    assert!(!no_bus_note(&setup).exists(), "systemd answered: no note");
}

#[test]
fn a_timer_start_for_an_elapse_past_the_starting_deadline_skips_as_late() {
    let server = ApiServer::fast();
    let setup = hourly_setup(&server);
    let bus = Bus::start();
    let answers = Answers::TimerStart {
        elapse_ago: Duration::from_secs(45),
    };
    let _systemd = bus.systemd(answers);
    let elapse = systemd_standin::elapse_of(answers, SystemTime::now());
    let run = run_with_timer_unit(&setup, &bus);
    assert_code(&run, 75);
    assert!(run.stderr.contains("missed slot"), "{}", run.stderr);
    assert_slot(&run, elapse);
    assert!(setup.report_files().is_empty());
}

#[test]
fn a_start_by_hand_while_the_timer_is_active_collects_at_any_moment() {
    let server = ApiServer::fast();
    // A 1 ms deadline: a timer start would be late whatever the clock says.
    let setup = Setup::new(
        &server.url,
        &[
            ("starting-deadline", "\"1ms\""),
            ("schedule-period", "\"1h\""),
        ],
    );
    let bus = Bus::start();
    let _systemd = bus.systemd(Answers::HandStart {
        ago: Duration::from_millis(9300),
    });
    let run = run_with_timer_unit(&setup, &bus);
    assert_code(&run, 0);
    assert!(run.stderr.contains("started by hand"), "{}", run.stderr);
    assert!(run.stderr.contains("TRIGGER=\"manual\""), "{}", run.stderr);
    assert_eq!(setup.report_files().len(), 1);
}

#[test]
fn a_bus_without_systemd_or_with_answers_of_another_type_keeps_the_older_rule_said_once() {
    if !past_the_first_seconds_of_an_hour() {
        std::thread::sleep(Duration::from_secs(16));
    }
    let server = ApiServer::fast();
    let bus = Bus::start();
    for (what, answers) in [
        ("no systemd", None),
        ("wrong type", Some(Answers::WrongType)),
    ] {
        let setup = hourly_setup(&server);
        let _systemd = answers.map(|answers| bus.systemd(answers));
        let first = run_with_timer_unit(&setup, &bus);
        // The older rule: a timer start in its schedule-period slot, late in the hour.
        assert_code(&first, 75);
        assert!(
            first.stderr.contains("cannot ask systemd over D-Bus"),
            "{what}: {}",
            first.stderr
        );
        if answers.is_some() {
            assert!(
                first.stderr.contains("Id with a value of another type"),
                "{what}: {}",
                first.stderr
            );
        }
        assert!(
            first.stderr.contains("missed slot"),
            "{what}: {}",
            first.stderr
        );
        let second = run_with_timer_unit(&setup, &bus);
        assert_code(&second, 75);
        assert!(
            !second.stderr.contains("D-Bus"),
            "{what}: {}",
            second.stderr
        );
        assert!(no_bus_note(&setup).is_file(), "{what}");
    }
}
