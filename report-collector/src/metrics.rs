//! The Prometheus textfile (`metrics-file`) for node_exporter's textfile collector, rewritten
//! after every run, skips included.
//!
//! `report_collector_last_success_timestamp_seconds` follows Prometheus' convention for batch
//! jobs: when the last collection ended. It comes from the state file's last collection, not
//! from this run, so skips and failures keep it; while the state file names none (it cannot be
//! read, or was just moved aside), the value this file last showed is kept. It is absent until
//! the first collection (alerting rules treat an absent metric as "never collected").
//!
//! The run counters live in the file itself, so each run reads, increments and rewrites it.
//! That read-modify-write is serialised with an flock on a sibling `<metrics-file>.lock` (never
//! the run lock: a skipped run must not wait for the run it skipped), so no count is lost when
//! many runs end at once; the file is replaced by rename, so the collector never reads half.
//! The flock is waited for at most `files::SHORT_LOCK_PATIENCE`: runs hold it for a few file
//! operations, and a stranger holding it must not hang a run past its deadline.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::files::{Durability, lock_briefly, open_lock_file, read_existing, write_atomically};
use crate::outcome::{KINDS, RunReport};
use crate::state::Collection;
use crate::time::Timestamp;

const LAST_SUCCESS: &str = "report_collector_last_success_timestamp_seconds";
const RUNS_TOTAL: &str = "report_collector_runs_total";
const RESUMED_TOTAL: &str = "report_collector_resumed_collections_total";
const CANCELLED_TOTAL: &str = "report_collector_tickets_cancelled_total";

/// The sibling file whose flock serialises updates.
pub fn lock_path(metrics_file: &Path) -> PathBuf {
    let mut name = metrics_file.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Adds `run` to the textfile at `path`; `last_collection` is the state file's (`None` keeps
/// the file's own last success).
pub fn record(
    path: &Path,
    run: &RunReport,
    last_collection: Option<&Collection>,
) -> io::Result<()> {
    let lock = lock_path(path);
    let guard = open_lock_file(&lock)?;
    // Held for a few file operations only; released when `guard` closes.
    lock_briefly(&guard, &lock)?;
    // Never through a symbolic link nor from a FIFO (see `store`): a textfile that is not a
    // regular file is refused with its path, not replaced.
    let previous = read_existing(path)?.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    let previous = previous.as_deref().unwrap_or("");
    let mut counts = parse_counts(previous);
    let count = counts.entry(run.outcome.kind().to_owned()).or_insert(0);
    *count = count.saturating_add(1);
    let tickets = TicketCounts {
        resumed: parse_counter(previous, RESUMED_TOTAL)
            .saturating_add(u64::from(run.resumed_collection())),
        cancelled: parse_counter(previous, CANCELLED_TOTAL)
            .saturating_add(u64::from(run.tickets.cancelled)),
    };
    // The state file's last collection; when it has none (it could not be read, or was moved
    // aside), the one this file last showed, so the gauge never goes absent over a state file.
    let last_success = last_collection
        .map(|collection| collection.finished)
        .or_else(|| parse_gauge(previous, LAST_SUCCESS).map(Timestamp::from_unix_seconds));
    let text = render(run, last_success, &counts, &tickets);
    write_atomically(path, text.as_bytes(), Durability::Renamed)?;
    drop(guard);
    Ok(())
}

/// Reads `report_collector_runs_total{outcome="..."} N` lines back: only the outcomes a run
/// has ([`KINDS`]), so a label another process wrote
/// into the file is never written out again.
pub fn parse_counts(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(RUNS_TOTAL) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix("{outcome=\"") else {
            continue;
        };
        let Some((kind, value)) = rest.split_once("\"}") else {
            continue;
        };
        if !KINDS.contains(&kind) {
            continue;
        }
        if let Ok(n) = value.trim().parse::<u64>() {
            counts.insert(kind.to_owned(), n);
        }
    }
    counts
}

/// Reads an unlabelled sample (`name V`) back: the first whose value parses as a `T`.
fn parse_sample<T: std::str::FromStr>(text: &str, name: &str) -> Option<T> {
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}

/// Reads an unlabelled gauge (`name V`) back: a finite value not below 0, or `None`.
pub fn parse_gauge(text: &str, name: &str) -> Option<f64> {
    parse_sample::<f64>(text, name).filter(|value| value.is_finite() && *value >= 0.0)
}

/// Reads an unlabelled counter (`name N`) back; 0 when it is not there.
pub fn parse_counter(text: &str, name: &str) -> u64 {
    parse_sample(text, name).unwrap_or(0)
}

/// The ticket counters, summed over every run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TicketCounts {
    pub resumed: u64,
    pub cancelled: u64,
}

/// The whole textfile; `last_success` is when the last collection ended (Unix time).
pub fn render(
    run: &RunReport,
    last_success: Option<Timestamp>,
    counts: &BTreeMap<String, u64>,
    tickets: &TicketCounts,
) -> String {
    let mut out = String::new();
    if let Some(last_success) = last_success {
        out.push_str(&format!(
            "# HELP {LAST_SUCCESS} When the last collection ended (Unix time); kept across skips and failures.\n\
             # TYPE {LAST_SUCCESS} gauge\n\
             {LAST_SUCCESS} {:.3}\n",
            last_success.unix_seconds()
        ));
    }
    out.push_str(
        "# HELP report_collector_last_run_start_timestamp_seconds When the last run started (Unix time).\n\
         # TYPE report_collector_last_run_start_timestamp_seconds gauge\n",
    );
    out.push_str(&format!(
        "report_collector_last_run_start_timestamp_seconds {:.3}\n",
        run.started.unix_seconds()
    ));
    out.push_str(
        "# HELP report_collector_last_run_duration_seconds How long the last run took.\n\
         # TYPE report_collector_last_run_duration_seconds gauge\n",
    );
    out.push_str(&format!(
        "report_collector_last_run_duration_seconds {:.3}\n",
        run.duration.as_secs_f64()
    ));
    out.push_str(
        "# HELP report_collector_last_run_outcome How the last run ended (1 for its outcome).\n\
         # TYPE report_collector_last_run_outcome gauge\n",
    );
    for kind in KINDS {
        let value = u8::from(kind == run.outcome.kind());
        out.push_str(&format!(
            "report_collector_last_run_outcome{{outcome=\"{kind}\"}} {value}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP {RUNS_TOTAL} Runs by outcome.\n# TYPE {RUNS_TOTAL} counter\n"
    ));
    for kind in KINDS {
        let n = counts.get(kind).copied().unwrap_or(0);
        out.push_str(&format!("{RUNS_TOTAL}{{outcome=\"{kind}\"}} {n}\n"));
    }
    out.push_str(&format!(
        "# HELP {RESUMED_TOTAL} Collections of a ticket an earlier run left unfinished (also counted in {RUNS_TOTAL}{{outcome=\"collected\"}}).\n# TYPE {RESUMED_TOTAL} counter\n{RESUMED_TOTAL} {}\n",
        tickets.resumed
    ));
    out.push_str(&format!(
        "# HELP {CANCELLED_TOTAL} Tickets the server cancelled at the collector's request because no run would fetch them.\n# TYPE {CANCELLED_TOTAL} counter\n{CANCELLED_TOTAL} {}\n",
        tickets.cancelled
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::Policy;
    use crate::outcome::{Failure, Outcome, Skip};
    use std::time::Duration;

    fn run(outcome: Outcome) -> RunReport {
        RunReport {
            outcome,
            policy: Policy::Forbid,
            ticket: None,
            holder_pid: None,
            holder_host: None,
            slot: Timestamp::UNIX_EPOCH,
            trigger: "manual".into(),
            started: Timestamp::UNIX_EPOCH + Duration::from_secs(1_704_110_400),
            duration: Duration::from_millis(2500),
            tickets: Default::default(),
            fence: Default::default(),
        }
    }

    #[test]
    fn counts_accumulate_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report-collector.prom");
        record(&path, &run(Outcome::Collected { report: "r".into() }), None).unwrap();
        record(&path, &run(skipped()), None).unwrap();
        record(&path, &run(skipped()), None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let counts = parse_counts(&text);
        assert_eq!(counts["collected"], 1);
        assert_eq!(counts["skipped"], 2);
        assert_eq!(counts["failed"], 0);
        assert!(text.contains("report_collector_last_run_outcome{outcome=\"skipped\"} 1\n"));
        assert!(text.contains("report_collector_last_run_outcome{outcome=\"collected\"} 0\n"));
        assert!(text.contains("report_collector_last_run_duration_seconds 2.500\n"));
        assert!(
            text.contains("report_collector_last_run_start_timestamp_seconds 1704110400.000\n")
        );
        assert!(
            !text.contains("last_success"),
            "no collection given: {text}"
        );
    }

    fn skipped() -> Outcome {
        Outcome::Skipped {
            skip: Skip::LockHeld,
            reason: "busy".into(),
        }
    }

    #[test]
    fn the_last_success_survives_skips_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        let state_file = dir.path().join("last-run.json");
        let mut collected = run(Outcome::Collected { report: "r".into() });
        collected.started = collected.started - Duration::from_secs(60);
        let later = [
            run(skipped()),
            run(Outcome::Failed {
                error: "x".into(),
                failure: Failure::Run,
            }),
            run(skipped()),
        ];
        for run in std::iter::once(&collected).chain(&later) {
            let state = crate::state::record(&state_file, run);
            record(&path, run, state.last_collection.as_ref()).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // 1704110400 - 60 s + 2.5 s
        assert!(
            text.contains("report_collector_last_success_timestamp_seconds 1704110342.500\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE report_collector_last_success_timestamp_seconds gauge\n"));
        assert!(text.contains("report_collector_last_run_outcome{outcome=\"skipped\"} 1\n"));
    }

    #[test]
    fn the_last_success_is_kept_while_the_state_file_names_no_collection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        let state_file = dir.path().join("last-run.json");
        let collected = run(Outcome::Collected { report: "r".into() });
        let state = crate::state::record(&state_file, &collected);
        record(&path, &collected, state.last_collection.as_ref()).unwrap();
        let last_success = "report_collector_last_success_timestamp_seconds 1704110402.500\n";
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains(last_success)
        );
        // The state file then tells nothing (unreadable, or moved aside): skips keep the value.
        for _ in 0..2 {
            record(&path, &run(skipped()), None).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains(last_success), "{text}");
            assert_eq!(
                text.matches("# TYPE report_collector_last_success_timestamp_seconds gauge\n")
                    .count(),
                1,
                "{text}"
            );
        }
        // A collection the state file knows of still wins.
        let mut later = run(Outcome::Collected {
            report: "r2".into(),
        });
        later.started = later.started + Duration::from_secs(60);
        let state = crate::state::record(&state_file, &later);
        record(&path, &later, state.last_collection.as_ref()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("report_collector_last_success_timestamp_seconds 1704110462.500\n"),
            "{text}"
        );
    }

    #[test]
    fn a_last_success_that_is_not_a_time_is_not_carried_over() {
        for bad in ["NaN", "+Inf", "-5", "soon", ""] {
            let text = format!("report_collector_last_success_timestamp_seconds {bad}\n");
            assert_eq!(parse_gauge(&text, LAST_SUCCESS), None, "{bad}");
        }
        assert_eq!(
            parse_gauge(
                "report_collector_last_success_timestamp_seconds_x 5\nreport_collector_last_success_timestamp_seconds 7.250\n",
                LAST_SUCCESS
            ),
            Some(7.25)
        );
    }

    #[test]
    fn counts_read_back_keep_only_real_outcomes_and_never_overflow() {
        let text = format!(
            "{RUNS_TOTAL}{{outcome=\"x\\\" y\"}} 5\n{RUNS_TOTAL}{{outcome=\"collected\"}} {}\n",
            u64::MAX
        );
        let counts = parse_counts(&text);
        assert_eq!(
            counts.keys().collect::<Vec<_>>(),
            ["collected"],
            "{counts:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        std::fs::write(&path, &text).unwrap();
        record(&path, &run(Outcome::Collected { report: "r".into() }), None).unwrap();
        let again = parse_counts(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(again["collected"], u64::MAX);
    }

    #[test]
    fn resumed_collections_and_cancelled_tickets_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        let mut resumed = run(Outcome::Collected { report: "r".into() });
        resumed.tickets.resumed_from = Some(7);
        resumed.tickets.cancelled = 1;
        let mut failed_resume = run(Outcome::Failed {
            error: "x".into(),
            failure: Failure::Run,
        });
        failed_resume.tickets.resumed_from = Some(8);
        failed_resume.tickets.cancelled = 2;
        for run in [&resumed, &failed_resume, &resumed] {
            record(&path, run, None).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(parse_counter(&text, RESUMED_TOTAL), 2, "{text}");
        assert_eq!(parse_counter(&text, CANCELLED_TOTAL), 4, "{text}");
        assert!(text.contains("# TYPE report_collector_tickets_cancelled_total counter\n"));
        assert_eq!(parse_counts(&text)["collected"], 2);
    }

    #[test]
    fn concurrent_updates_lose_no_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..10 {
                        let failed = run(Outcome::Failed {
                            error: "x".into(),
                            failure: Failure::Run,
                        });
                        record(&path, &failed, None).unwrap();
                    }
                });
            }
        });
        let counts = parse_counts(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(counts["failed"], 80);
    }

    #[test]
    fn a_lock_held_by_a_stranger_fails_the_update_instead_of_hanging_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        let stranger = open_lock_file(&lock_path(&path)).unwrap();
        stranger.lock().unwrap();
        let err = record(&path, &run(skipped()), None).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("m.prom.lock stayed locked"), "{message}");
        assert!(message.contains("fuser -v"), "{message}");
        assert!(!path.exists());
    }
}
