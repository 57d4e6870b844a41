//! kill -9 of the real collector at every file operation of a run, one at a time: strace
//! injects SIGKILL at the Nth call of one system call (`-e inject=SYSCALL:signal=KILL:when=N`),
//! for every N until the run gets through, for each system call that creates, writes, locks,
//! renames or removes a file. After each kill, and after the run that follows it, what a user
//! relies on must hold: no partial file under a final name, the lock free with its stale
//! record recognised as stale, the state file readable, the temp files of the killed run
//! removed by the next one, every run counted once.

mod util;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use report_collector::metrics::parse_counts;
use report_collector::outcome::KINDS;
use report_collector::state::State;
use report_collector::store::{self, is_report_name};
use util::*;

const CSV: &str = "timestamp,data\n2026-01-01T00:00:00Z,42\n2026-01-01T00:01:00Z,43\n";

/// The system calls a run makes on its files (names this architecture lacks are skipped,
/// `?`).
const SYSCALLS: &[&str] = &[
    "openat",
    "?open",
    "flock",
    "write",
    "pwrite64",
    "ftruncate",
    "fchmod",
    "fsync",
    "?rename",
    "renameat",
    "renameat2",
    "?unlink",
    "unlinkat",
    "?mkdir",
    "mkdirat",
];

/// Bounds the calls of one kind a run may make, so a change that loops fails here.
const MAX_CALLS: usize = 400;

fn strace_works() -> Result<(), String> {
    match Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "true"])
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        Err(e) => Err(format!("cannot run strace: {e}")),
    }
}

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

#[test]
fn a_kill_at_any_file_operation_leaves_nothing_partial_and_the_next_run_works() {
    // Not skipped: a crash-point test that quietly does nothing would pass for ever.
    if let Err(why) = strace_works() {
        panic!("strace cannot trace here ({why}); install it (scripts/install-deps.sh does)");
    }
    let server = fixed_report_server(CSV);
    let setup = Setup::new(
        &server.url,
        &[
            ("keep-reports", "3"),
            ("metrics-file", "\"{dir}/metrics/report-collector.prom\""),
        ],
    );
    let mut points = 0;
    let mut per_call = Vec::new();
    for syscall in SYSCALLS {
        let mut n = 1;
        loop {
            assert!(
                n <= MAX_CALLS,
                "more than {MAX_CALLS} calls of {syscall} in one run"
            );
            let inject = format!("inject={syscall}:signal=KILL:when={n}");
            let traced = finish(
                setup
                    .command_wrapped(
                        &["strace", "-f", "-qq", "-o", "/dev/null", "-e", &inject],
                        &[],
                    )
                    .spawn()
                    .unwrap(),
            );
            let at = format!("killed at {syscall} #{n}");
            let killed = traced.signal == Some(9) || traced.code == Some(128 + 9);
            if !killed {
                // Fewer than n such calls: the run went through.
                assert_eq!(traced.code, Some(0), "{at}: {}", traced.stderr);
                per_call.push(format!("{syscall}: {}", n - 1));
                break;
            }
            points += 1;
            assert_whole(&setup, &at);

            let before = counts(&setup).get("collected").copied().unwrap_or(0);
            let next = setup.run(&[]);
            assert_eq!(next.code, Some(0), "{at}: the next run: {}", next.stderr);
            assert_whole(&setup, &format!("{at}, then a run"));
            assert_eq!(
                temp_files(setup.dir.path()),
                Vec::<std::path::PathBuf>::new(),
                "{at}: the next run removed the temp files"
            );
            assert_eq!(
                counts(&setup).get("collected").copied().unwrap_or(0),
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
            n += 1;
        }
    }
    eprintln!(
        "crash points: {points} kills; calls per run: {}",
        per_call.join(", ")
    );
    assert!(
        points > 20,
        "only {points} crash points: is strace injecting?"
    );
}
