//! No ticket thrown away, against the real report-apis: a run killed with `kill -9` at many
//! instants of its life (before its ticket, while polling, as the report arrives) is followed
//! by a run that resumes the ticket it left, so the server never holds two tickets of this
//! collector at once and every ticket it issued ends as one saved report.
//!
//! The one window where a kill loses a ticket (the server's answer is in, the lock's record
//! not yet written) holds no system call but the record's write (see `crash_points.rs`), a few
//! microseconds here against kills 60 ms apart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::util::*;
use nix::sys::signal::Signal;
use report_collector::store::is_report_name;

#[test]
fn kill_9_at_many_instants_then_the_next_run_resumes_and_nothing_piles_up() {
    let _timing = timing_guard();
    let mut config = report_apis::Config::default();
    config.heavy_load.period = Duration::ZERO;
    config.report.generation_time = Duration::from_millis(700);
    let server = ApiServer::start(config);
    let setup = Setup::new(&server.url, &[("poll-interval", "\"50ms\"")]);

    let mut kills = 0;
    let mut handed_on = 0;
    for step in 0..14u64 {
        let at = Duration::from_millis(step * 60);
        let mut child = setup.spawn(&[]);
        std::thread::sleep(at);
        if running(&mut child) {
            signal(&child, Signal::SIGKILL);
            kills += 1;
        }
        let _ = finish(child);
        let record: Option<serde_json::Value> = std::fs::read(&setup.lock)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let left = record.and_then(|r| r["ticket"].as_str().map(str::to_owned));

        let next = setup.run(&[]);
        assert_eq!(next.code, Some(0), "killed at {at:?}: {}", next.stderr);
        if let Some(left) = left {
            handed_on += 1;
            assert!(
                next.stderr.contains(&format!("resuming ticket {left}"))
                    || next.stderr.contains("already saved"),
                "killed at {at:?}, the next run takes {left} over: {}",
                next.stderr
            );
        }
    }

    let saved: Vec<String> = setup
        .report_files()
        .into_iter()
        .filter(|n| is_report_name(n))
        .collect();
    let mut tickets: Vec<&str> = saved.iter().map(|n| &n[17..n.len() - 4]).collect();
    tickets.sort_unstable();
    let distinct = {
        let mut d = tickets.clone();
        d.dedup();
        d.len()
    };
    assert_eq!(distinct, tickets.len(), "a ticket saved twice: {saved:?}");
    let issued = metric(&server.url, "report_apis_tickets_issued_total");
    let pending = metric(&server.url, "report_apis_tickets_pending");
    let peak = metric(&server.url, "report_apis_tickets_pending_peak");
    eprintln!(
        "{kills} kills, {handed_on} tickets handed on, {issued} issued, {} saved, peak pending {peak}",
        saved.len()
    );
    assert!(
        kills >= 8,
        "only {kills} runs were killed: is the server too fast?"
    );
    assert!(handed_on >= 5, "only {handed_on} tickets were handed on");
    assert_eq!(
        peak, 1.0,
        "never two tickets of this collector pending at once"
    );
    assert_eq!(pending, 0.0, "nothing left generating on the server");
    assert_eq!(
        issued,
        f64::from(u32::try_from(saved.len()).unwrap()),
        "every ticket issued ended as one saved report"
    );
}

// A left ticket is read back from the lock file's holder record, which any process that can
// write the lock file can write: each hostile one is declined with one VALUE_DECLINED line,
// never reaches a URL, a file name or a log line, is cleared from the record, and the run
// collects with a ticket of its own, inside `report-dir`.

/// What a run did after a hostile ticket was put in the lock's record.
struct Round {
    /// Which ticket, for the messages.
    what: String,
    run: Finished,
    /// The paths the run asked the server for.
    requested: Vec<String>,
    /// Every file in the setup's directory after the run, as paths relative to it.
    written: Vec<PathBuf>,
    /// The record after the run.
    record: serde_json::Value,
    /// `status` after the run.
    status: Finished,
}

/// What one setup saw: a round per hostile ticket, then what its report directory holds.
struct Rounds {
    rounds: Vec<Round>,
    saved: Vec<String>,
}

/// Puts each hostile ticket in turn in the lock's record of one setup (its holder gone, its
/// host name forging a line of `status`) and runs the collector (which must collect) and then
/// `status`. Done once, by the first test that asks; each test checks one thing of it.
fn hostile_ticket_rounds() -> &'static Rounds {
    static ROUNDS: OnceLock<Rounds> = OnceLock::new();
    ROUNDS.get_or_init(|| {
        let requested = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = requested.clone();
        let tickets = std::sync::atomic::AtomicU32::new(0);
        let server = FakeServer::start(move |path| {
            seen.lock().unwrap().push(path.to_owned());
            if path.starts_with("/request_report") {
                let n = tickets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (200, format!("own{n}_0"))
            } else {
                (200, "timestamp,data\n0,a\n".to_owned())
            }
        });
        let setup = Setup::new(&server.url, &[("resume-within", "\"10m\"")]);
        let id = "123e4567-e89b-42d3-a456-426614174000_0";
        let huge = "x".repeat(10 << 20);
        let hostile = [
            format!("q/../../get_report/{id}"),
            format!("q\\..\\..\\evil\\{id}"),
            "t?x=1#frag".to_owned(),
            "t\nINFO collected the report FAKE".to_owned(),
            "t\0nul".to_owned(),
            "%2e%2e%2fescape".to_owned(),
            huge,
        ];
        let mut rounds = Vec::new();
        for (i, ticket) in hostile.iter().enumerate() {
            let record = serde_json::json!({
                "pid": 999_999_999u32,
                "since": "2026-01-01T00:00:00Z",
                "host": "h\nhealth: healthy (exit 0)",
                "ticket": ticket,
                "ticket_requested": "2099-01-01T00:00:00.000Z",
            });
            std::fs::write(&setup.lock, serde_json::to_vec(&record).unwrap()).unwrap();
            requested.lock().unwrap().clear();

            let run = setup.run(&[]);
            let what = format!("hostile ticket #{i} ({} bytes)", ticket.len());
            assert_eq!(run.code, Some(0), "{what}: {}", run.stderr);
            let requested = requested.lock().unwrap().clone();
            let written = all_files_under(setup.dir.path());
            let record: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&setup.lock).unwrap()).unwrap_or_default();
            let status = setup.run(&["status"]);
            rounds.push(Round {
                what,
                run,
                requested,
                written,
                record,
                status,
            });
        }
        Rounds {
            rounds,
            saved: setup.report_files(),
        }
    })
}

#[test]
fn a_hostile_ticket_in_the_lock_record_is_declined_in_one_bounded_line() {
    for Round { what, run, .. } in &hostile_ticket_rounds().rounds {
        let declined = lines_with_id(&run.stderr, report_common::message_id::VALUE_DECLINED);
        assert_eq!(
            declined.len(),
            1,
            "{what}: one line says so: {}",
            run.stderr
        );
        assert!(
            run.stderr.len() < 64 * 1024,
            "{what}: {} bytes of log",
            run.stderr.len()
        );
        assert!(
            !run.stderr.contains("FAKE\n") && !run.stderr.contains("\0"),
            "{what}: {}",
            run.stderr
        );
    }
}

#[test]
fn a_hostile_ticket_in_the_lock_record_never_reaches_a_url() {
    for Round {
        what, requested, ..
    } in &hostile_ticket_rounds().rounds
    {
        for path in requested {
            assert!(
                path == "/request_report" || path.starts_with("/get_report/own"),
                "{what}: the server was asked for {path}"
            );
        }
    }
}

#[test]
fn a_hostile_ticket_in_the_lock_record_never_names_a_file_the_run_writes() {
    let Rounds { rounds, saved } = hostile_ticket_rounds();
    for Round { what, written, .. } in rounds {
        // Nothing outside report-dir: only the config, the lock and its token file, the state
        // and its order file.
        for file in written {
            let top = file.components().next().unwrap().as_os_str().to_owned();
            assert!(
                [
                    "config.toml",
                    "collector.lock",
                    "collector.lock.token",
                    "last-run.json",
                    "last-run.json.order",
                    "reports",
                    "metrics"
                ]
                .iter()
                .any(|n| top == *n),
                "{what}: {} was written",
                file.display()
            );
        }
    }
    // Each run collected with a ticket of its own.
    assert_eq!(saved.len(), rounds.len(), "{saved:?}");
    assert!(saved.iter().all(|n| is_report_name(n)), "{saved:?}");
}

#[test]
fn a_hostile_ticket_in_the_lock_record_is_cleared_from_it() {
    for Round { what, record, .. } in &hostile_ticket_rounds().rounds {
        assert!(
            record["ticket"].is_null(),
            "{what}: cleared from the record: {record}"
        );
    }
}

#[test]
fn status_says_health_once_whatever_the_lock_record_held() {
    for Round { what, status, .. } in &hostile_ticket_rounds().rounds {
        assert_eq!(
            status
                .stdout
                .lines()
                .filter(|l| l.starts_with("health:"))
                .count(),
            1,
            "{what}: {}",
            status.stdout
        );
    }
}
