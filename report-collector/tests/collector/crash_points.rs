//! kill -9 of the real collector at every file operation of a run, one at a time: strace
//! injects SIGKILL at the Nth call of one system call (`-e inject=SYSCALL:signal=KILL:when=N`),
//! for every N until the run gets through, for each system call that creates, writes, locks,
//! renames or removes a file: one test for the calls that open or make, one for those that lock,
//! write or sync, one for those that rename or remove. After each kill, and after the run that follows it, what a user
//! relies on must hold: no partial file under a final name, the lock free with its stale
//! record recognised as stale, the state file readable, the temp files of the killed run
//! removed by the next one, every run counted once, and no ticket thrown away: every ticket
//! the server issued during a round (the killed run and the next) is saved exactly once by
//! the round's end, the killed run's either by itself or, resumed or found saved, by the next.
//! The one window where a kill loses a ticket is between the server's answer and the write
//! of the lock's record; it holds no file operation but that write itself.
//!
//! Then `replace` with its SIGTERM or SIGKILL landing in the old holder's save, before and
//! after the report's rename: the report is on disk once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::*;
use report_collector::metrics::parse_counts;
use report_collector::outcome::KINDS;
use report_collector::state::State;
use report_collector::store::{self, is_report_name};

const CSV: &str = "timestamp,data\n2026-01-01T00:00:00Z,42\n2026-01-01T00:01:00Z,43\n";

/// The system calls a run makes on its files, by what they do (names this architecture lacks
/// are skipped, `?`). Measured calls of one run (x86_64, debug build): openat 28 (133 under
/// `cargo test`, whose `LD_LIBRARY_PATH` the dynamic loader searches), mkdir 7; flock 9, write
/// 13, pwrite64 3, ftruncate 4, fchmod 5, fsync 2; renameat 5, unlink 1.
const OPENING: &[&str] = &["openat", "?open", "?mkdir", "mkdirat"];
const LOCKING_AND_WRITING: &[&str] =
    &["flock", "write", "pwrite64", "ftruncate", "fchmod", "fsync"];
const RENAMING_AND_REMOVING: &[&str] = &["?rename", "renameat", "renameat2", "?unlink", "unlinkat"];

/// Bounds the calls of one kind a run may make, so a change that loops fails here.
const MAX_CALLS: usize = 400;

fn counts(setup: &Setup) -> BTreeMap<String, u64> {
    std::fs::read_to_string(&setup.metrics)
        .map(|text| parse_counts(&text))
        .unwrap_or_default()
}

/// What must hold after a kill at any point, and after any run.
fn assert_whole(setup: &Setup, at: &str) {
    assert_eq!(
        setup.holder(),
        None,
        "{at}: the lock is free (a stale record is no holder)"
    );
    for name in setup.report_files() {
        if is_report_name(&name) {
            let text = std::fs::read_to_string(setup.reports.join(&name)).unwrap();
            assert_eq!(text, CSV, "{at}: {name} is whole");
        }
    }
    State::load(&setup.state).unwrap_or_else(|e| panic!("{at}: the state file: {e}"));
    if let Ok(text) = std::fs::read_to_string(&setup.metrics) {
        assert!(
            text.ends_with('\n'),
            "{at}: the metrics file is whole: {text}"
        );
        assert_eq!(parse_counts(&text).len(), KINDS.len(), "{at}: {text}");
    }
    if let Ok(text) = std::fs::read_to_string(store::order_path(&setup.state)) {
        assert!(
            text.lines().all(is_report_name),
            "{at}: the order file: {text}"
        );
    }
}

fn temp_files(dir: &Path) -> Vec<std::path::PathBuf> {
    all_files_under(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect()
}

/// A report server that issues `t<N>_0` and answers every poll with the report at once (it
/// keeps every report, as report-apis keeps a ready one for `ticket-ttl`), and lists what it
/// issued.
fn ticket_server() -> (FakeServer, Arc<Mutex<Vec<String>>>) {
    let issued = Arc::new(Mutex::new(Vec::new()));
    let next = AtomicU32::new(0);
    let list = Arc::clone(&issued);
    let server = FakeServer::start(move |path| {
        if path.starts_with("/request_report") {
            let ticket = format!("t{}_0", next.fetch_add(1, Ordering::SeqCst));
            list.lock().unwrap().push(ticket.clone());
            (200, ticket)
        } else {
            (200, CSV.to_owned())
        }
    });
    (server, issued)
}

/// The saved reports of `ticket`.
fn reports_of(setup: &Setup, ticket: &str) -> usize {
    let suffix = format!("_{ticket}.csv");
    setup
        .report_files()
        .iter()
        .filter(|n| is_report_name(n) && n.ends_with(&suffix))
        .count()
}

fn record_ticket(setup: &Setup) -> Option<String> {
    let bytes = std::fs::read(&setup.lock).ok()?;
    let record: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    record["ticket"].as_str().map(str::to_owned)
}

/// A run under strace, killed at its `n`th call of `syscall` if it makes that many.
fn run_killed_at(setup: &Setup, syscall: &str, n: usize) -> Finished {
    let inject = format!("inject={syscall}:signal=KILL:when={n}");
    finish(
        setup
            .command_wrapped(
                &["strace", "-f", "-qq", "-o", "/dev/null", "-e", &inject],
                &[],
            )
            .spawn()
            .unwrap(),
    )
}

/// After the kill `at`: nothing partial, then a normal run that collects, removes the killed
/// run's temp files, is counted once and clears the record. The ticket the killed run left in
/// the record, and the normal run.
fn the_next_run_after_a_kill(setup: &Setup, at: &str) -> (Option<String>, Finished) {
    assert_whole(setup, at);
    let left = record_ticket(setup);

    let before = counts(setup).get("collected").copied().unwrap_or(0);
    let next = setup.run(&[]);
    assert_eq!(next.code, Some(0), "{at}: the next run: {}", next.stderr);
    assert_whole(setup, &format!("{at}, then a run"));
    assert_eq!(
        temp_files(setup.dir.path()),
        Vec::<std::path::PathBuf>::new(),
        "{at}: the next run removed the temp files"
    );
    assert_eq!(
        counts(setup).get("collected").copied().unwrap_or(0),
        before + 1,
        "{at}: the next run is counted once"
    );
    let state = State::load(&setup.state).unwrap().unwrap();
    let report = state.last_collection.unwrap().report;
    assert_eq!(std::fs::read_to_string(&report).unwrap(), CSV, "{at}");
    assert!(
        setup
            .report_files()
            .iter()
            .filter(|n| is_report_name(n))
            .count()
            <= 3
    );
    assert_eq!(
        std::fs::read(&setup.lock).unwrap(),
        b"",
        "{at}: record cleared"
    );
    (left, next)
}

/// What a sweep of kills came to.
#[derive(Debug, Default)]
struct Sweep {
    /// Kills, each at one call.
    points: usize,
    /// Kills after which the lock's record named a ticket for the next run.
    handed_on: usize,
    /// The tickets of a round (a kill and the run after it) that no run saved.
    lost: Vec<String>,
    /// How many calls of each kind one run makes.
    per_call: Vec<String>,
}

/// Kills the collector at every call of each of `syscalls` in turn (the Nth call, N = 1, 2, …
/// until a run gets through), each kill followed by a normal run; checks after both what a user
/// relies on, and tallies. The setup first sees `runs_before` normal runs, so a sweep that does
/// not come first in a setup's life finds the files a run leaves (reports up to
/// `keep-reports`, state, metrics) in place.
fn sweep(syscalls: &[&str], runs_before: usize) -> Sweep {
    // Not skipped: a crash-point test that quietly does nothing would pass for ever.
    if let Err(why) = strace_works() {
        panic!("strace cannot trace here ({why}); install it (scripts/install-deps.sh does)");
    }
    let (server, issued) = ticket_server();
    let mut sweep = Sweep::default();
    let setup = Setup::new(
        &server.url,
        &[
            ("keep-reports", "3"),
            ("metrics-file", "\"{dir}/metrics/report-collector.prom\""),
        ],
    );
    for _ in 0..runs_before {
        assert_code(&setup.run(&[]), 0);
    }
    for syscall in syscalls {
        let mut n = 1;
        loop {
            let issued_before = issued.lock().unwrap().len();
            assert!(
                n <= MAX_CALLS,
                "more than {MAX_CALLS} calls of {syscall} in one run"
            );
            let traced = run_killed_at(&setup, syscall, n);
            let at = format!("killed at {syscall} #{n}");
            let killed = traced.signal == Some(9) || traced.code == Some(128 + 9);
            let round_start = issued_before;
            if !killed {
                // Fewer than n such calls: the run went through.
                assert_eq!(traced.code, Some(0), "{at}: {}", traced.stderr);
                sweep.per_call.push(format!("{syscall}: {}", n - 1));
                break;
            }
            sweep.points += 1;
            let (left, next) = the_next_run_after_a_kill(&setup, &at);
            // No ticket of the round thrown away, none saved twice.
            if let Some(left) = &left {
                sweep.handed_on += 1;
                assert!(
                    next.stderr.contains("resuming ticket")
                        || next.stderr.contains("already saved"),
                    "{at}: the next run took over {left}: {}",
                    next.stderr
                );
            }
            let round: Vec<String> = issued.lock().unwrap()[round_start..].to_vec();
            for ticket in &round {
                match reports_of(&setup, ticket) {
                    1 => {}
                    0 => sweep.lost.push(format!("{at}: {ticket}")),
                    saved => panic!("{at}: ticket {ticket} saved {saved} times"),
                }
            }
            n += 1;
        }
    }
    eprintln!(
        "crash points: {} kills, {} tickets handed on to the next run, lost: {:?}; calls per run: {}",
        sweep.points,
        sweep.handed_on,
        sweep.lost,
        sweep.per_call.join(", ")
    );
    sweep
}

impl Sweep {
    /// Only a kill at the write of the record itself may lose the ticket the run just got;
    /// at least `handed_on` kills left a ticket for the next run, and strace killed at least
    /// `points` calls. The minimums of the three sweeps add up to 11 and 21, more than the 10
    /// and 20 one sweep over every call was held to; measured: 8, 13 and 2 tickets handed on,
    /// 35 (140 under `cargo test`), 36 and 6 kills.
    fn assert_tallies(&self, handed_on: usize, points: usize) {
        let Sweep {
            points: found_points,
            handed_on: found_handed_on,
            lost,
            ..
        } = self;
        assert!(
            lost.iter().all(|l| l.contains("at pwrite64 #")) && lost.len() <= 1,
            "tickets thrown away: {lost:?}"
        );
        assert!(
            *found_handed_on >= handed_on,
            "only {found_handed_on} tickets handed on"
        );
        assert!(
            *found_points >= points,
            "only {found_points} crash points: is strace injecting?"
        );
    }
}

#[test]
fn a_kill_at_any_open_or_mkdir_leaves_nothing_partial_and_the_next_run_works() {
    // First in the setup's life, as a first run is.
    sweep(OPENING, 0).assert_tallies(4, 10);
}

#[test]
fn a_kill_at_any_lock_write_or_sync_leaves_nothing_partial_and_the_next_run_works() {
    sweep(LOCKING_AND_WRITING, 3).assert_tallies(6, 9);
}

#[test]
fn a_kill_at_any_rename_or_unlink_leaves_nothing_partial_and_the_next_run_works() {
    sweep(RENAMING_AND_REMOVING, 3).assert_tallies(1, 2);
}

/// Waits until `ready` holds, polling; panics after `limit`.
fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_replace_landing_in_the_holders_save_leaves_its_report_on_disk_once() {
    let _timing = timing_guard();
    if let Err(why) = strace_works() {
        panic!("strace cannot trace here ({why}); install it (scripts/install-deps.sh does)");
    }
    // The holder's save is held for 3 s by strace at the report's rename: before it (only the
    // temp file exists) or after it (the report is under its final name, its ticket not yet
    // finished in the lock's record). A replacing run starts then; its SIGTERM lands in the
    // save and, with a short grace, its SIGKILL too.
    for (stop, in_place) in [
        ("delay_enter", "only the temp file"),
        ("delay_exit", "the report"),
    ] {
        for grace in ["200ms", "10s"] {
            let case = format!("{stop} at the rename, replace-grace {grace}");
            let (server, issued) = ticket_server();
            let setup = Setup::new(
                &server.url,
                &[
                    ("policy", "\"replace\""),
                    ("replace-grace", &format!("{grace:?}")),
                ],
            );
            // The report's rename is the run's first (the lock's token file is written in place).
            let inject = format!("inject=renameat:{stop}=3000000:when=1");
            let mut holder = setup
                .command_wrapped(
                    &["strace", "-f", "-qq", "-o", "/dev/null", "-e", &inject],
                    &[],
                )
                .spawn()
                .unwrap();
            wait_until(
                Duration::from_secs(10),
                &format!("{case}: {in_place}"),
                || {
                    let files = all_files_under(&setup.reports);
                    if stop == "delay_enter" {
                        files.iter().any(|f| f.to_string_lossy().ends_with(".tmp"))
                    } else {
                        files.iter().any(|f| is_report_name(&f.to_string_lossy()))
                    }
                },
            );
            let replacing = setup.run(&[]);
            let _ = holder.wait();
            assert_eq!(replacing.code, Some(0), "{case}: {}", replacing.stderr);
            assert!(
                replacing.stderr.contains("after ending pid"),
                "{case}: {}",
                replacing.stderr
            );

            let issued = issued.lock().unwrap().clone();
            for ticket in &issued {
                assert_eq!(
                    reports_of(&setup, ticket),
                    1,
                    "{case}: {ticket}, of {issued:?}"
                );
            }
            if grace == "10s" {
                // SIGTERM waits for the save: the holder collected and finished its ticket,
                // the replacing run collected a ticket of its own.
                assert_eq!(issued.len(), 2, "{case}: {}", replacing.stderr);
            } else {
                // SIGKILL in the save: the replacing run took the holder's ticket over.
                assert_eq!(issued.len(), 1, "{case}: {}", replacing.stderr);
                let expect = if stop == "delay_enter" {
                    "resuming ticket t0_0"
                } else {
                    "already saved"
                };
                assert!(
                    replacing.stderr.contains(expect),
                    "{case}: {}",
                    replacing.stderr
                );
            }
            assert_eq!(
                temp_files(setup.dir.path()),
                Vec::<std::path::PathBuf>::new(),
                "{case}"
            );
            assert_eq!(std::fs::read(&setup.lock).unwrap(), b"", "{case}");
        }
    }
}
