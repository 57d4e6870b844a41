//! The collector as operators meet it: the real binary as processes, a real flock, the real
//! report-apis on loopback (scripted servers only for faults report-apis never shows).

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::util::*;
use nix::sys::signal::Signal;
use report_collector::lock::flock::LockFile;
use report_collector::metrics::parse_counts;
use report_collector::state::State;
use report_common::message_id;

#[test]
fn collects_prints_and_saves_the_report_keeping_the_newest() {
    let server = ApiServer::fast();
    let setup = Setup::new(&server.url, &[("keep-reports", "2")]);
    for _ in 0..3 {
        let run = setup.run(&[]);
        assert_code(&run, 0);
        assert!(run.stdout.starts_with("timestamp,data\n"), "{}", run.stdout);
        assert!(run.stderr.contains("collected"), "{}", run.stderr);
        // Distinct file names even within one second: each has its own ticket.
    }
    let files = setup.report_files();
    assert_eq!(files.len(), 2, "{files:?}");
    for name in &files {
        assert!(report_collector::store::is_report_name(name), "{name}");
        let text = std::fs::read_to_string(setup.reports.join(name)).unwrap();
        assert!(text.starts_with("timestamp,data\n"));
    }
    let last = State::load(&setup.state).unwrap().unwrap().last_run;
    assert_eq!(last.outcome, "collected");
    assert_eq!(last.exit_code, 0);
    assert!(last.ticket.is_some());
    assert!(setup.holder().is_none(), "the lock is free after the run");
}

#[test]
fn two_collectors_started_together_one_runs_the_other_skips_naming_the_holder() {
    let server = ApiServer::in_heavy_load();
    let setup = Setup::new(&server.url, &[]);
    let mut a = setup.spawn(&[]);
    let mut b = setup.spawn(&[]);
    // Exactly one exits (75) while the other keeps running against the loaded server.
    let (skipper, mut runner) = loop {
        match (running(&mut a), running(&mut b)) {
            (true, true) => std::thread::sleep(Duration::from_millis(10)),
            (false, true) => break (a, b),
            (true, false) => break (b, a),
            (false, false) => panic!("both collectors exited"),
        }
    };
    let skipped = finish(skipper);
    assert_code(&skipped, 75);
    assert!(running(&mut runner), "the holder keeps running");
    assert!(
        skipped.stderr.contains(&format!("pid {}", runner.id())),
        "the skip names the holder's pid {}: {}",
        runner.id(),
        skipped.stderr
    );
    for field in [
        "OUTCOME",
        "TICKET",
        "POLICY",
        "HOLDER_PID",
        "SLOT",
        "DURATION",
    ] {
        assert!(
            skipped.stderr.contains(field),
            "{field}: {}",
            skipped.stderr
        );
    }
    assert!(
        skipped.stderr.contains("OUTCOME=\"skipped\""),
        "{}",
        skipped.stderr
    );
    assert!(
        skipped
            .stderr
            .contains(&format!("HOLDER_PID={}", runner.id()))
    );

    signal(&runner, Signal::SIGTERM);
    assert_code(&finish(runner), 143);
}

/// The decision line as journald receives it, through a stand-in socket (see
/// `util::Journal`): the exact field names, no `F_` prefix, the syslog identifier; and the
/// stderr rule (readable lines only when not started by systemd).
#[test]
#[ignore = "needs root (a mount namespace): `make test` runs it (cargo test -- --include-ignored)"]
fn decision_lines_reach_journald_with_the_exact_fields() {
    let journal = prerequisite(
        "a mount namespace for a journald stand-in",
        Journal::start(),
    );
    let server = ApiServer::fast();
    let setup = Setup::new(&server.url, &[]);

    // A skip, started as systemd starts it (JOURNAL_STREAM set): journal only.
    let held = LockFile::open(&setup.lock)
        .unwrap()
        .try_lock()
        .unwrap()
        .unwrap();
    let skipped = finish(
        setup
            .command_logging_to(&journal, &[])
            .env("JOURNAL_STREAM", "8:4242")
            .spawn()
            .unwrap(),
    );
    assert_code(&skipped, 75);
    assert_eq!(skipped.stderr, "", "no stderr lines under systemd");
    let me = std::process::id().to_string();
    let entries = journal.entries();
    let skip = decision(&entries, "skipped");
    assert_eq!(skip["POLICY"], "forbid");
    assert_eq!(skip["HOLDER_PID"], me);
    assert_eq!(skip["TICKET"], "");
    assert_eq!(skip["PRIORITY"], "4");
    assert!(skip["MESSAGE"].contains(&format!("pid {me}")), "{skip:?}");
    drop(held);

    // A manual run (JOURNAL_STREAM unset): the journal, and readable lines on stderr too.
    let collected = finish(setup.command_logging_to(&journal, &[]).spawn().unwrap());
    assert_code(&collected, 0);
    assert!(
        collected.stderr.contains("collected"),
        "{}",
        collected.stderr
    );
    let entries = journal.entries();
    let done = decision(&entries, "collected");
    assert_eq!(done["HOLDER_PID"], "");
    let files = setup.report_files();
    assert_eq!(files.len(), 1);
    assert!(
        !done["TICKET"].is_empty() && files[0].ends_with(&format!("_{}.csv", done["TICKET"])),
        "{done:?} {files:?}"
    );

    for entry in [skip, done] {
        for field in [
            "OUTCOME",
            "TICKET",
            "POLICY",
            "HOLDER_PID",
            "SLOT",
            "DURATION",
        ] {
            assert!(entry.contains_key(field), "{field} missing: {entry:?}");
        }
        assert!(entry.keys().all(|k| !k.starts_with("F_")), "{entry:?}");
        assert_eq!(entry["SYSLOG_IDENTIFIER"], "report-collector");
        assert!(
            humantime::parse_rfc3339(&entry["SLOT"]).is_ok(),
            "{entry:?}"
        );
        assert!(entry["DURATION"].parse::<f64>().is_ok(), "{entry:?}");
    }
}

/// The one entry with `OUTCOME` = `outcome`.
fn decision<'a>(entries: &'a [Entry], outcome: &str) -> Entry {
    let found: Vec<&'a Entry> = entries
        .iter()
        .filter(|e| e.get("OUTCOME").map(String::as_str) == Some(outcome))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {outcome} decision line in {entries:#?}"
    );
    found[0].clone()
}

#[test]
fn after_kill_9_of_the_holder_the_next_run_gets_the_lock_at_once() {
    let busy = ApiServer::in_heavy_load();
    let fast = ApiServer::fast();
    let setup = Setup::new(&busy.url, &[]);
    let holder = setup.spawn(&[]);
    setup.wait_for_holder(holder.id(), false);
    signal(&holder, Signal::SIGKILL);
    let killed = finish(holder);
    assert_eq!(killed.signal, Some(9));

    let next = setup.run(&["--server-url", &fast.url]);
    assert_code(&next, 0);
    assert!(setup.holder().is_none());
}

#[test]
fn replace_ends_the_holder_and_runs() {
    let busy = ApiServer::in_heavy_load();
    let fast = ApiServer::fast();
    let setup = Setup::new(&busy.url, &[("replace-grace", "\"5s\"")]);
    let old = setup.spawn(&[]);
    setup.wait_for_holder(old.id(), true);
    let new = setup.run(&["--policy", "replace", "--server-url", &fast.url]);
    assert_code(&new, 0);
    assert!(
        new.stderr
            .contains(&format!("after ending pid {}", old.id()))
            && new.stderr.contains("SIGTERM"),
        "{}",
        new.stderr
    );
    let replaced = lines_with_id(&new.stderr, message_id::HOLDER_REPLACED);
    assert!(
        replaced.len() == 1
            && replaced[0].contains(&format!("HOLDER_PID={}", old.id()))
            && replaced[0].contains("ENDED_BY=\"SIGTERM\""),
        "{}",
        new.stderr
    );
    let old = finish(old);
    assert_code(&old, 143);
    assert!(old.stderr.contains("cancelled"), "{}", old.stderr);
}

/// A holder that writes a proper record but ignores SIGTERM (perl is in every Debian).
fn stubborn_holder(lock: &std::path::Path, record_pid: Option<u32>) -> std::process::Child {
    let pid = record_pid.map_or("$$".to_owned(), |p| p.to_string());
    let script = format!(
        r#"use Fcntl qw(:flock); $SIG{{TERM}} = 'IGNORE';
open(my $fh, '+>>', $ARGV[0]) or die "open: $!";
flock($fh, LOCK_EX | LOCK_NB) or die "busy";
truncate($fh, 0); print $fh qq({{"pid":{pid},"since":"2024-01-01T00:00:00Z","ticket":null}}\n);
$fh->flush; print STDOUT "locked\n"; STDOUT->flush; sleep 60;"#
    );
    let mut child = Command::new("perl")
        .arg("-e")
        .arg(script)
        .arg(lock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "locked\n");
    child
}

#[test]
fn replace_kills_a_holder_that_ignores_sigterm_after_the_grace() {
    let fast = ApiServer::fast();
    let setup = Setup::new(&fast.url, &[("replace-grace", "\"300ms\"")]);
    std::fs::write(&setup.lock, "").unwrap();
    let holder = stubborn_holder(&setup.lock, None);
    let run = setup.run(&["--policy", "replace"]);
    assert_code(&run, 0);
    let ended_by: Vec<&str> = lines_with_id(&run.stderr, message_id::HOLDER_REPLACED)
        .into_iter()
        .filter_map(|l| l.split_once("ENDED_BY=")?.1.split(' ').next())
        .collect();
    assert_eq!(ended_by, ["\"SIGTERM\"", "\"SIGKILL\""], "{}", run.stderr);
    let holder = finish(holder);
    assert_eq!(holder.signal, Some(9));
}

#[test]
fn replace_never_signals_a_process_the_record_names_but_the_kernel_does_not() {
    let fast = ApiServer::fast();
    let setup = Setup::new(&fast.url, &[("replace-grace", "\"300ms\"")]);
    std::fs::write(&setup.lock, "").unwrap();
    // The record names an innocent process (as after pid reuse); the lock is the perl one's.
    let mut innocent = Command::new("sleep").arg("60").spawn().unwrap();
    let mut holder = stubborn_holder(&setup.lock, Some(innocent.id()));
    let run = setup.run(&["--policy", "replace"]);
    assert_code(&run, 75);
    assert!(run.stderr.contains("signalled nothing"), "{}", run.stderr);
    assert!(
        running(&mut innocent),
        "the innocent process was not signalled"
    );
    assert!(
        running(&mut holder),
        "the unconfirmed holder was not signalled"
    );
    innocent.kill().unwrap();
    holder.kill().unwrap();
    let _ = innocent.wait();
    let _ = holder.wait();
}

#[test]
fn wait_runs_once_the_holder_ends() {
    let busy = ApiServer::in_heavy_load();
    let fast = ApiServer::fast();
    let setup = Setup::new(&busy.url, &[("lock-wait", "\"30s\"")]);
    let holder = setup.spawn(&[]);
    let holder_pid = holder.id();
    setup.wait_for_holder(holder_pid, true);
    let mut waiter = setup.spawn(&["--policy", "wait", "--server-url", &fast.url]);
    let waiting = stderr_until(&mut waiter, "waiting up to");
    assert!(
        waiting.contains(&format!("pid {holder_pid}")),
        "the waiter names whom it waits for: {waiting}"
    );
    assert!(running(&mut waiter), "the waiter waits instead of skipping");
    assert_eq!(setup.holder().unwrap().pid, Some(holder.id()));

    signal(&holder, Signal::SIGTERM);
    assert_code(&finish(holder), 143);
    let waited = finish(waiter);
    assert_code(&waited, 0);
    assert!(
        waited
            .stderr
            .contains(&format!("after waiting for pid {holder_pid}")),
        "{}",
        waited.stderr
    );
}

#[test]
fn wait_skips_when_lock_wait_runs_out() {
    let busy = ApiServer::in_heavy_load();
    let setup = Setup::new(&busy.url, &[("lock-wait", "\"300ms\"")]);
    let holder = setup.spawn(&[]);
    setup.wait_for_holder(holder.id(), false);
    let waited = setup.run(&["--policy", "wait"]);
    assert_code(&waited, 75);
    assert!(
        waited.stderr.contains(&format!("pid {}", holder.id())),
        "{}",
        waited.stderr
    );
    signal(&holder, Signal::SIGTERM);
    assert_code(&finish(holder), 143);
}

#[test]
fn sigterm_while_waiting_for_the_lock_cancels_the_waiter_only() {
    let busy = ApiServer::in_heavy_load();
    let setup = Setup::new(&busy.url, &[("lock-wait", "\"30s\"")]);
    let mut holder = setup.spawn(&[]);
    setup.wait_for_holder(holder.id(), false);
    let mut waiter = setup.spawn(&["--policy", "wait"]);
    stderr_until(&mut waiter, "waiting up to");
    signal(&waiter, Signal::SIGTERM);
    let waited = finish(waiter);
    assert_code(&waited, 143);
    assert!(waited.stderr.contains("cancelled"), "{}", waited.stderr);
    assert!(running(&mut holder), "the holder is not affected");
    assert_eq!(setup.holder().unwrap().pid, Some(holder.id()));
    signal(&holder, Signal::SIGTERM);
    assert_code(&finish(holder), 143);
}

#[test]
fn allow_runs_while_another_run_holds_the_lock() {
    let busy = ApiServer::in_heavy_load();
    let fast = ApiServer::fast();
    let setup = Setup::new(&busy.url, &[]);
    let mut holder = setup.spawn(&[]);
    setup.wait_for_holder(holder.id(), false);
    let other = setup.run(&["--policy", "allow", "--server-url", &fast.url]);
    assert_code(&other, 0);
    assert!(running(&mut holder));
    assert_eq!(setup.holder().unwrap().pid, Some(holder.id()));
    signal(&holder, Signal::SIGTERM);
    assert_code(&finish(holder), 143);
}

/// A timer start outside systemd: declared with `--trigger timer`, the documented hook.
fn timer_start(setup: &Setup) -> Finished {
    finish(setup.command(&["--trigger", "timer"]).spawn().unwrap())
}

/// Where systemd cannot be asked (no system bus here), `TRIGGER_UNIT` alone keeps the old
/// rule, a timer start, and the note about it is written once per boot.
fn timer_start_without_a_bus(setup: &Setup) -> Finished {
    timer_start_with_bus(setup, "unix:path=/nonexistent/bus")
}

fn timer_start_with_bus(setup: &Setup, address: &str) -> Finished {
    finish(
        setup
            .command(&[])
            .env("TRIGGER_UNIT", "report-collector.timer")
            .env("DBUS_SYSTEM_BUS_ADDRESS", address)
            .spawn()
            .unwrap(),
    )
}

/// A "bus" on a Unix socket that accepts connections and then answers `reply` (nothing when
/// empty) and holds the connection open.
fn hostile_bus(dir: &std::path::Path, reply: &'static [u8]) -> String {
    use std::io::Write as _;
    let path = dir.join("bus");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(reply);
            held.push(stream);
        }
    });
    format!("unix:path={}", path.display())
}

#[test]
fn a_timer_start_later_than_the_starting_deadline_skips() {
    let server = ApiServer::fast();
    // Hourly slots and a 1 ms deadline: any start but one in the first millisecond of an hour
    // is late, whatever the wall clock says now.
    let setup = Setup::new(
        &server.url,
        &[
            ("starting-deadline", "\"1ms\""),
            ("schedule-period", "\"1h\""),
        ],
    );
    let late = timer_start(&setup);
    assert_code(&late, 75);
    assert!(late.stderr.contains("missed slot"), "{}", late.stderr);
    assert!(late.stderr.contains("starting-deadline"), "{}", late.stderr);
    assert!(setup.report_files().is_empty());

    // The same config by hand: never skipped for lateness.
    assert_code(&setup.run(&[]), 0);
}

#[test]
fn a_timer_start_within_the_starting_deadline_runs() {
    let server = ApiServer::fast();
    // One-second slots: every start is less than a second after its slot.
    let setup = Setup::new(
        &server.url,
        &[
            ("starting-deadline", "\"10s\""),
            ("schedule-period", "\"1s\""),
        ],
    );
    let on_time = timer_start(&setup);
    assert_code(&on_time, 0);
    assert!(
        on_time.stderr.contains("TRIGGER=\"timer\""),
        "{}",
        on_time.stderr
    );
}

#[test]
fn without_a_bus_a_timer_unit_means_a_timer_start_and_is_said_once_per_boot() {
    let server = ApiServer::fast();
    let setup = Setup::new(
        &server.url,
        &[
            ("starting-deadline", "\"1ms\""),
            ("schedule-period", "\"1h\""),
        ],
    );
    let first = timer_start_without_a_bus(&setup);
    assert_code(&first, 75);
    let no_bus = lines_with_id(&first.stderr, message_id::NO_BUS);
    assert!(
        no_bus.len() == 1 && no_bus[0].contains("cannot ask systemd over D-Bus"),
        "{}",
        first.stderr
    );
    assert!(first.stderr.contains("missed slot"), "{}", first.stderr);
    let second = timer_start_without_a_bus(&setup);
    assert_code(&second, 75);
    assert!(!second.stderr.contains("D-Bus"), "{}", second.stderr);
}

#[test]
fn a_bus_that_answers_nothing_or_garbage_costs_at_most_its_timeout() {
    let _timing = timing_guard();
    let server = ApiServer::fast();
    let setup = Setup::new(&server.url, &[]);
    let dir = tempfile::tempdir().unwrap();
    for (what, reply) in [
        ("silent", &b""[..]),
        ("garbage", &b"\x00\xffNOT D-BUS\r\nREJECTED\r\n\x01\x02"[..]),
    ] {
        let sub = dir.path().join(what);
        std::fs::create_dir(&sub).unwrap();
        let bus = hostile_bus(&sub, reply);
        let _ = std::fs::remove_file(setup.state.parent().unwrap().join("no-bus.boot-id"));
        let started = std::time::Instant::now();
        let run = timer_start_with_bus(&setup, &bus);
        let took = started.elapsed();
        // No starting deadline here: treated as a timer start, the run collects.
        assert_code(&run, 0);
        assert!(
            run.stderr.contains("cannot ask systemd over D-Bus"),
            "{what}: {}",
            run.stderr
        );
        // The bus is given 2 s (BUS_TIMEOUT), the rest of the run takes milliseconds; the
        // margin is for a loaded machine.
        assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
        if what == "silent" {
            assert!(
                took >= Duration::from_secs(2),
                "{what}: waited only {took:?}"
            );
        }
    }
}

#[test]
fn a_hundred_collectors_at_once_under_forbid_one_collects_and_every_run_is_counted() {
    let _timing = timing_guard();
    let server = ApiServer::slow(Duration::from_secs(5));
    let setup = Setup::new(
        &server.url,
        &[("metrics-file", "\"{dir}/metrics/report-collector.prom\"")],
    );

    let children: Vec<_> = (0..100).map(|_| setup.spawn(&[])).collect();
    let results: Vec<Finished> = children.into_iter().map(finish).collect();
    let collected = results.iter().filter(|r| r.code == Some(0)).count();
    let skipped = results.iter().filter(|r| r.code == Some(75)).count();
    assert_eq!(collected, 1, "exactly one collects");
    assert_eq!(skipped, 99, "all others skip");
    assert_eq!(setup.report_files().len(), 1);

    let counts = parse_counts(&std::fs::read_to_string(&setup.metrics).unwrap());
    assert_eq!(counts["collected"], 1);
    assert_eq!(
        counts["skipped"], 99,
        "no count lost when runs end together"
    );
    assert_eq!(counts["failed"], 0);
}

#[test]
fn server_down_is_a_clear_error_inside_the_deadline() {
    let setup = Setup::new(&dead_url(), &[("deadline", "\"3s\"")]);
    let run = setup.run(&[]);
    assert_code(&run, 1);
    assert!(run.stderr.contains("cannot reach"), "{}", run.stderr);
    assert!(run.stderr.contains("retrying"), "{}", run.stderr);
    assert!(run.stderr.contains("deadline"), "{}", run.stderr);
    assert!(setup.report_files().is_empty());
    assert_eq!(
        State::load(&setup.state).unwrap().unwrap().last_run.outcome,
        "failed"
    );
}

#[test]
fn server_errors_are_retried_and_never_saved() {
    let server = FakeServer::start(|_| (500, "<html>internal error</html>".into()));
    let setup = Setup::new(&server.url, &[("deadline", "\"2s\"")]);
    let run = setup.run(&[]);
    assert_code(&run, 1);
    assert!(run.stderr.contains("500"), "{}", run.stderr);
    assert!(run.stdout.is_empty());
    assert!(setup.report_files().is_empty());
}

#[test]
fn garbage_or_an_error_page_is_never_taken_for_a_report() {
    for (status, body) in [
        (200, "<html><body>Welcome to nginx</body></html>"),
        (400, "invalid ticketId format"),
        (200, "timestamp,data\n1,2,3,4\n"),
    ] {
        let server = FakeServer::start(move |path| {
            if path.starts_with("/request_report") {
                (200, "abc_0".into())
            } else {
                (status, body.into())
            }
        });
        let setup = Setup::new(&server.url, &[]);
        let run = setup.run(&[]);
        assert_code(&run, 1);
        assert!(run.stdout.is_empty(), "{}", run.stdout);
        assert!(setup.report_files().is_empty());
    }
}

#[test]
fn a_ticket_the_server_forgot_is_replaced_by_a_new_one() {
    let server = FakeServer::start(|path| match path {
        "/request_report" => {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            (200, format!("t{}_0", N.fetch_add(1, Ordering::SeqCst)))
        }
        "/get_report/t0_0" => (404, "unknown ticket".into()),
        _ => (200, "timestamp,data\n0,data-0\n".into()),
    });
    let setup = Setup::new(&server.url, &[]);
    let run = setup.run(&[]);
    assert_code(&run, 0);
    assert!(
        run.stderr.contains("requesting a new one"),
        "{}",
        run.stderr
    );
    let files = setup.report_files();
    assert_eq!(files.len(), 1);
    assert!(files[0].ends_with("_t1_0.csv"), "{files:?}");
}

#[test]
fn sigterm_while_polling_exits_143_frees_the_lock_saves_nothing_and_leaves_the_ticket() {
    let server = ApiServer::in_heavy_load();
    let setup = Setup::new(&server.url, &[]);
    let mut first_ticket: Option<String> = None;
    for (sig, code) in [(Signal::SIGTERM, 143), (Signal::SIGINT, 130)] {
        let child = setup.spawn(&[]);
        let holder = setup.wait_for_holder(child.id(), true);
        let ticket = holder.ticket.clone().unwrap().to_string();
        signal(&child, sig);
        let run = finish(child);
        assert_code(&run, code);
        assert!(run.stderr.contains("cancelled"), "{}", run.stderr);
        assert!(run.stderr.contains(&ticket), "{}", run.stderr);
        assert!(
            !run.stderr.contains("cancelled ticket"),
            "a signal never cancels the ticket on the server: {}",
            run.stderr
        );
        match &first_ticket {
            None => first_ticket = Some(ticket.clone()),
            Some(first) => {
                // The second run took over the ticket the first one left.
                assert_eq!(&ticket, first);
                assert!(run.stderr.contains("resuming ticket"), "{}", run.stderr);
            }
        }
        assert!(setup.holder().is_none());
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&setup.lock).unwrap()).unwrap();
        assert_eq!(
            record["ticket"], ticket,
            "the unfinished ticket stays in the record for the next run"
        );
        let lock = LockFile::open(&setup.lock).unwrap();
        assert!(lock.try_lock().unwrap().is_ok(), "the lock is free");
        assert!(
            setup.report_files().is_empty(),
            "{:?}",
            setup.report_files()
        );
        assert_eq!(
            State::load(&setup.state).unwrap().unwrap().last_run.outcome,
            "cancelled"
        );
    }
}

#[test]
fn an_unknown_config_key_exits_78_naming_file_line_and_key() {
    let setup = Setup::new("http://127.0.0.1:1", &[("poll-intervall", "\"5s\"")]);
    let run = setup.run(&[]);
    assert_code(&run, 78);
    let config = setup.config.display().to_string();
    let rejected = lines_with_id(&run.stderr, message_id::COLLECTOR_CONFIG_REJECTED);
    assert!(
        rejected.len() == 1 && rejected[0].contains(&config),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("poll-intervall"), "{}", run.stderr);
    // Keys are written sorted: lock-file, poll-interval, poll-intervall, ...
    let line = std::fs::read_to_string(&setup.config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("poll-intervall"))
        .unwrap()
        + 1;
    assert!(
        run.stderr.contains(&format!(
            "{config}:{line}:1: key `poll-intervall`: unknown key"
        )),
        "{}",
        run.stderr
    );

    let missing = Command::new(env!("CARGO_BIN_EXE_report-collector"))
        .args(["--config", "/nonexistent/report-collector.toml"])
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(78));
}

#[test]
fn status_reports_the_holder_without_taking_the_lock() {
    let _timing = timing_guard();
    let busy = ApiServer::in_heavy_load();
    let fast = ApiServer::fast();
    let setup = Setup::new(&busy.url, &[]);
    let mut holder = setup.spawn(&[]);
    let seen = setup.wait_for_holder(holder.id(), true);

    let status = setup.command(&["status", "--json"]).output().unwrap();
    assert_eq!(status.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["lock"]["held"], true);
    assert_eq!(json["lock"]["pid"], holder.id());
    assert_eq!(json["lock"]["ticket"], seen.ticket.unwrap().as_str());
    let text = setup.command(&["status"]).output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains(&format!("held by pid {}", holder.id())),
        "{text}"
    );
    assert!(running(&mut holder));
    signal(&holder, Signal::SIGTERM);
    assert_code(&finish(holder), 143);

    // Status hammered while a run starts never makes that run skip.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        let mut cmd = setup.command(&["status"]);
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 500 {
                assert!(cmd.output().unwrap().status.success());
                n += 1;
            }
        })
    };
    for _ in 0..3 {
        assert_code(&setup.run(&["--server-url", &fast.url]), 0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hammer.join().unwrap();

    let json: serde_json::Value = serde_json::from_slice(
        &setup
            .command(&["status", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(json["lock"]["held"], false);
    assert_eq!(json["last_run"]["outcome"], "collected");
    assert_eq!(json["reports"]["kept"], 3);
}

/// What collectors up to 0.1.x left in the state file after a collection an hour ago.
fn old_state_file(collected_unix: u64) -> String {
    format!(
        r#"{{"outcome":"collected","exit_code":0,"started":"x","started_unix":{collected_unix}.0,"duration_seconds":2.0,"ticket":"old_0","holder_pid":null,"policy":"forbid","slot":"x","trigger":"manual","report":"/r/old.csv","message":"collected","pid":1}}"#
    )
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn status_exits_1_when_the_last_collection_is_stale_even_after_an_upgrade_and_a_skip() {
    let server = ApiServer::fast();
    let setup = Setup::new(
        &server.url,
        &[("metrics-file", "\"{dir}/metrics/report-collector.prom\"")],
    );
    // The previous version's file: a collection an hour ago.
    let an_hour_ago = now_unix() - 3600;
    std::fs::write(&setup.state, old_state_file(an_hour_ago)).unwrap();
    let stale = setup.command(&["status"]).output().unwrap();
    assert_eq!(stale.status.code(), Some(1), "{stale:?}");
    let text = String::from_utf8(stale.stdout).unwrap();
    assert!(
        text.starts_with("health:   stale (exit 1): no collection for 59m 5"),
        "{text}"
    );
    assert!(text.contains("ticket old_0"), "{text}");

    // A skip keeps that collection: still stale, and the metric still says when.
    let held = LockFile::open(&setup.lock)
        .unwrap()
        .try_lock()
        .unwrap()
        .unwrap();
    assert_code(&setup.run(&[]), 75);
    drop(held);
    let json = setup.command(&["status", "--json"]).output().unwrap();
    assert_eq!(json.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["verdict"]["health"], "stale");
    assert_eq!(json["verdict"]["exit_code"], 1);
    assert_eq!(json["last_run"]["outcome"], "skipped");
    assert_eq!(json["last_collection"]["ticket"], "old_0");
    let metrics = std::fs::read_to_string(&setup.metrics).unwrap();
    // Its end: started an hour ago, took 2 s.
    let last_success = format!(
        "report_collector_last_success_timestamp_seconds {}.000\n",
        an_hour_ago + 2
    );
    assert!(metrics.contains(&last_success), "{metrics}");

    // A collection makes it healthy.
    assert_code(&setup.run(&[]), 0);
    let healthy = setup.command(&["status", "--json"]).output().unwrap();
    assert_eq!(healthy.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&healthy.stdout).unwrap();
    assert_eq!(json["verdict"]["health"], "healthy");
}

#[test]
fn status_names_a_path_it_cannot_inspect_and_never_blocks_on_a_fifo() {
    let setup = Setup::new(&dead_url(), &[]);
    nix::unistd::mkfifo(&setup.state, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let out = finish_within(setup.spawn(&["status"]), Duration::from_secs(10));
    assert_code(&out, 74);
    assert!(out.stdout.contains("health:   unknown"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "the state file {} is not a regular file (a FIFO)",
            setup.state.display()
        )),
        "{}",
        out.stdout
    );
}

#[test]
fn an_unusable_report_dir_is_a_clear_error_with_nothing_left_behind() {
    let server = ApiServer::fast();
    // report-dir below a plain file: it can never be created (root ignores permissions).
    let setup = Setup::new(
        &server.url,
        &[("report-dir", "\"{dir}/not-a-dir/reports\"")],
    );
    let file = setup.dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let run = setup.run(&[]);
    assert_code(&run, 1);
    assert!(run.stderr.contains("report-dir"), "{}", run.stderr);
    assert_eq!(std::fs::read(&file).unwrap(), b"");
    // The lock and its token file stay (runs never delete them), beside what the test made.
    assert_eq!(
        files_in(setup.dir.path()),
        [
            "collector.lock",
            "collector.lock.token",
            "config.toml",
            "last-run.json",
            "not-a-dir",
        ]
    );
}

#[test]
#[ignore = "needs root (mounts a tmpfs): `make test` runs it (cargo test -- --include-ignored)"]
fn a_full_disk_is_a_clear_error_with_nothing_partial_left_behind() {
    let server = ApiServer::fast();
    let setup = Setup::new(&server.url, &[]);
    let disk = prerequisite(
        "a small tmpfs for the report directory",
        Tmpfs::mount(&setup.reports, "64k"),
    );
    disk.fill();
    let run = setup.run(&[]);
    assert_code(&run, 1);
    assert!(run.stderr.contains("nothing was saved"), "{}", run.stderr);
    assert!(run.stderr.contains("free space"), "{}", run.stderr);
    assert_eq!(
        setup.report_files(),
        ["filler"],
        "no temp file, no partial report"
    );
    assert_eq!(
        State::load(&setup.state).unwrap().unwrap().last_run.outcome,
        "failed"
    );
}

#[test]
fn help_lists_the_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_report-collector"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let run = report_collector::commands::Command::Run {
        trigger: report_collector::schedule::DeclaredTrigger::Auto,
    };
    for code in run.exit_codes() {
        assert!(text.contains(&format!("  {code} ")), "{code}: {text}");
    }
    for args in [
        &["--policy", "sometimes"][..],
        &["--bogus"],
        &["frobnicate"],
    ] {
        let bad = Command::new(env!("CARGO_BIN_EXE_report-collector"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(bad.status.code(), Some(64), "{args:?}");
    }
}

#[test]
fn check_config_prints_the_effective_configuration_or_the_error() {
    let setup = Setup::new("http://127.0.0.1:1", &[("keep-reports", "7")]);
    let out = setup
        .command(&["check-config", "--policy", "replace"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("# report-collector: the configuration is valid"));
    let effective: report_collector::config::Config = toml::from_str(&stdout).unwrap();
    assert_eq!(effective.keep_reports, 7);
    assert_eq!(effective.policy, report_collector::lock::Policy::Replace);
    assert_eq!(effective.server_url, "http://127.0.0.1:1");

    let bad = Setup::new("http://127.0.0.1:1", &[("keep-report", "7")]);
    let out = bad.command(&["check-config"]).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(out.stdout.is_empty());
    let wanted = format!("{}:", bad.config.display());
    assert!(stderr.contains(&wanted), "{stderr}");
    assert!(
        stderr.contains("key `keep-report`: unknown key"),
        "{stderr}"
    );
}

#[test]
fn check_config_reads_the_files_a_start_of_the_postgres_lock_reads() {
    use std::os::unix::fs::PermissionsExt as _;
    // Hosts that do not resolve: nothing may try to connect.
    let setup = Setup::new("http://127.0.0.1:1", &[("lock-backend", "\"postgres\"")]);
    let base = std::fs::read_to_string(&setup.config).unwrap();
    let write = |table: String| {
        std::fs::write(&setup.config, format!("{base}\n[postgres]\n{table}")).unwrap()
    };
    // The error check-config prints, and the same sentence from a run, both exit 78.
    let refused = |env: &[(&str, &std::path::Path)], key: &str| -> String {
        let mut check = setup.command(&["check-config"]);
        let mut run = setup.command(&["run", "--trigger", "manual"]);
        for (name, value) in env {
            check.env(name, value);
            run.env(name, value);
        }
        let check = check.output().unwrap();
        let stderr = String::from_utf8(check.stderr).unwrap();
        assert_eq!(check.status.code(), Some(78), "{stderr}");
        assert!(check.stdout.is_empty());
        assert!(stderr.contains(&format!("key `{key}`")), "{stderr}");
        // Named with the file it is in, as every other configuration error.
        let file = format!("{}: key `{key}`", setup.config.display());
        assert!(stderr.contains(&file), "{stderr}");
        let sentence = stderr
            .trim_end()
            .split_once("configuration error: ")
            .unwrap()
            .1
            .to_owned();
        let run = run.output().unwrap();
        let run_stderr = String::from_utf8(run.stderr).unwrap();
        assert_eq!(run.status.code(), Some(78), "{run_stderr}");
        assert!(run_stderr.contains(&sentence), "{sentence}\n{run_stderr}");
        sentence
    };

    let ca = setup.dir.path().join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    write(format!(
        "connect = \"host=db.invalid user=rc dbname=rc\"\ntls-ca-file = {:?}\n",
        ca.display().to_string()
    ));
    let said = refused(&[], "postgres.tls-ca-file");
    assert!(said.contains(&ca.display().to_string()), "{said}");

    // The systemd credential, readable by others: password-file is unset, so the credential
    // directory is where it is found, as in the unit.
    let credentials = setup.dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let password = credentials.join("postgres-password");
    std::fs::write(&password, "secret\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    write("connect = \"host=/run/nowhere user=rc dbname=rc\"\n".to_owned());
    let said = refused(
        &[("CREDENTIALS_DIRECTORY", &credentials)],
        "postgres.password-file",
    );
    assert!(said.contains("chmod 600"), "{said}");
    assert!(!said.contains("secret"), "{said}");

    // Outside the unit there is no credential to check, and check-config says so.
    let out = setup.command(&["check-config"]).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("# no password file checked"), "{stdout}");
    toml::from_str::<report_collector::config::Config>(&stdout).unwrap();
}

#[test]
fn check_config_notes_a_deprecated_schedule_period_and_still_takes_it() {
    let setup = Setup::new("http://127.0.0.1:1", &[("schedule-period", "\"2m\"")]);
    let out = setup.command(&["check-config"]).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let effective: report_collector::config::Config =
        toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(effective.schedule_period, Duration::from_secs(120));
    let wanted = format!(
        "schedule-period in {} is deprecated: the schedule is the timer's own",
        setup.config.display()
    );
    assert!(stderr.contains(&wanted), "{stderr}");

    let unset = Setup::new("http://127.0.0.1:1", &[]);
    let out = unset.command(&["check-config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
