//! One run as a pipeline: acquire the lock, place the run in its slot, collect, save, record.
//! Each step hands the next what it needs or stops the run with a [`RunError`]; the one place
//! that turns the result into an outcome, and the outcome into a record, is [`run`].
//!
//! Cancellation comes from outside, as a future (`main` makes one of SIGTERM and SIGINT), so
//! the tests can cancel a run in-process on tokio's paused clock. What a run learned and holds
//! along the way lives outside the steps' future, in [`Progress`]: a cancelled run can still
//! say which ticket it was collecting, and it keeps the lock until it is on record (dropping
//! the future must not free the lock early).

use std::cell::RefCell;
use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::client::{self, CollectError, Collected, ReportServer};
use crate::config::{Config, Policy};
use crate::lock::{LockGuard, NotAcquired, Request, RunLock, round_ms};
use crate::metrics;
use crate::outcome::{CancelSignal, Outcome, RunReport, Skip};
use crate::schedule::{Placement, Trigger, format_time};
use crate::state;
use crate::store::{self, StoreError};

/// Why a run did not collect; the `Display` is the sentence the journal and `status` show.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The lock was busy (a skip) or could not be used (a failure).
    #[error(transparent)]
    Lock(Box<NotAcquired>),
    /// A timer start came later than `starting-deadline` after its slot.
    #[error(
        "missed slot {}: started {} after it, later than starting-deadline {}; the server rests until the next slot",
        format_time(*.slot),
        humantime::format_duration(round_ms(*.late_by)),
        humantime::format_duration(*.starting_deadline)
    )]
    MissedSlot {
        slot: SystemTime,
        late_by: Duration,
        starting_deadline: Duration,
    },
    #[error("cannot set up the HTTP client: {0}")]
    Connect(String),
    /// The run deadline passed while requesting or polling.
    #[error("{source} (deadline {})", humantime::format_duration(*.deadline))]
    DeadlinePassed {
        source: CollectError,
        deadline: Duration,
    },
    #[error(transparent)]
    Collect(CollectError),
    #[error(transparent)]
    Save(#[from] StoreError),
}

impl From<NotAcquired> for RunError {
    fn from(not: NotAcquired) -> RunError {
        RunError::Lock(Box::new(not))
    }
}

impl RunError {
    /// Skips are what the lock and the starting deadline are for; anything else failed.
    pub fn outcome(&self) -> Outcome {
        let skip = match self {
            RunError::Lock(not) if not.is_skip() => Some(Skip::LockHeld),
            RunError::MissedSlot { .. } => Some(Skip::Late),
            _ => None,
        };
        match skip {
            Some(skip) => Outcome::Skipped {
                skip,
                reason: self.to_string(),
            },
            None => Outcome::Failed {
                error: self.to_string(),
            },
        }
    }
}

/// What a run learned and holds along the way, kept outside the steps' future.
#[derive(Debug)]
struct Progress<G> {
    ticket: Option<String>,
    /// The other run that held the lock (skipped for it, waited for it, or replaced it).
    holder_pid: Option<u32>,
    guard: Option<G>,
}

/// One run: the steps, cancelled when `cancel` completes first, then the decision line, the
/// state file and the metrics file; the lock is released last. `connect` is called only when
/// the run gets as far as collecting, so a skip costs no HTTP client.
pub async fn run<L: RunLock, S: ReportServer>(
    config: &Config,
    lock: &L,
    connect: impl FnOnce() -> Result<S, String>,
    trigger: Trigger,
    cancel: impl Future<Output = CancelSignal>,
) -> RunReport {
    let started = SystemTime::now();
    let t0 = Instant::now();
    let placement = Placement::of(&trigger, started, config.schedule_period);
    let progress = RefCell::new(Progress {
        ticket: None,
        holder_pid: None,
        guard: None,
    });

    let outcome = tokio::select! {
        biased;
        signal = cancel => Outcome::Cancelled(signal),
        result = steps(config, lock, connect, &placement, t0, &progress) => match result {
            Ok(report) => Outcome::Collected { report },
            Err(e) => e.outcome(),
        },
    };
    let progress = progress.into_inner();
    let report = RunReport {
        outcome,
        policy: config.policy,
        ticket: progress.ticket,
        holder_pid: progress.holder_pid,
        slot: placement.slot,
        trigger: trigger.describe(),
        started,
        duration: t0.elapsed(),
    };
    record(config, &report);
    // Held until the run is fully on record, so `status` never sees a free lock with an older
    // last run.
    if let Some(guard) = progress.guard {
        guard.release();
    }
    report
}

async fn steps<L: RunLock, S: ReportServer>(
    config: &Config,
    lock: &L,
    connect: impl FnOnce() -> Result<S, String>,
    placement: &Placement,
    t0: Instant,
    progress: &RefCell<Progress<L::Guard>>,
) -> Result<PathBuf, RunError> {
    let request = Request::of(config, t0);
    acquire(lock, request, progress).await?;
    // Lock first, then lateness: a skip for the lock always names the holder.
    check_slot(config, placement)?;
    let server = connect().map_err(RunError::Connect)?;
    let collected = collect(config, &server, request.deadline, progress).await?;
    save(config, &collected)
}

async fn acquire<L: RunLock>(
    lock: &L,
    request: Request,
    progress: &RefCell<Progress<L::Guard>>,
) -> Result<(), RunError> {
    match lock.acquire(request).await {
        Ok(acquired) => {
            let mut progress = progress.borrow_mut();
            progress.holder_pid = acquired.previous_holder;
            progress.guard = acquired.guard;
            Ok(())
        }
        Err(not) => {
            progress.borrow_mut().holder_pid = not.holder_pid();
            Err(not.into())
        }
    }
}

/// Under `forbid`, a timer start later than `starting-deadline` after its slot skips itself.
fn check_slot(config: &Config, placement: &Placement) -> Result<(), RunError> {
    if config.policy != Policy::Forbid {
        return Ok(());
    }
    match (
        placement.missed(config.starting_deadline),
        config.starting_deadline,
    ) {
        (Some(late_by), Some(starting_deadline)) => Err(RunError::MissedSlot {
            slot: placement.slot,
            late_by,
            starting_deadline,
        }),
        _ => Ok(()),
    }
}

async fn collect<S: ReportServer, G: LockGuard>(
    config: &Config,
    server: &S,
    deadline: Instant,
    progress: &RefCell<Progress<G>>,
) -> Result<Collected, RunError> {
    let on_ticket = |ticket: &str| {
        let mut progress = progress.borrow_mut();
        progress.ticket = Some(ticket.to_owned());
        if let Some(guard) = progress.guard.as_mut() {
            if let Err(e) = guard.set_ticket(ticket, SystemTime::now()) {
                tracing::warn!("cannot write the ticket into the lock file: {e}");
            }
        }
    };
    client::collect(
        server,
        config.poll_interval,
        deadline,
        config.max_ticket_renewals,
        on_ticket,
    )
    .await
    .map_err(|e| match e {
        CollectError::DeadlinePassed { .. } => RunError::DeadlinePassed {
            source: e,
            deadline: config.deadline,
        },
        _ => RunError::Collect(e),
    })
}

/// Echoes the report to stdout (into the journal, as the original did), saves it, and prunes
/// the reports beyond `keep-reports`.
fn save(config: &Config, collected: &Collected) -> Result<PathBuf, RunError> {
    {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(collected.csv.as_bytes())
            .and_then(|()| stdout.flush());
    }
    let order = store::order_path(&config.state_file);
    let report = store::save(
        &config.report_dir,
        &order,
        SystemTime::now(),
        &collected.ticket,
        collected.csv.as_bytes(),
    )?;
    // Never pruned, whatever retention's order says: this report and the state file's last
    // collection (what `status` shows).
    let last = state::State::load(&config.state_file)
        .ok()
        .flatten()
        .and_then(|s| s.last_collection)
        .map(|c| c.report);
    let protect: Vec<&std::path::Path> = std::iter::once(report.as_path())
        .chain(last.as_deref())
        .collect();
    match store::prune(&config.report_dir, &order, config.keep_reports, &protect) {
        Ok(removed) if !removed.is_empty() => tracing::info!(
            "removed {} old report(s) beyond keep-reports = {}",
            removed.len(),
            config.keep_reports
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(
            "cannot remove old reports from {}: {e}",
            config.report_dir.display()
        ),
    }
    Ok(report)
}

/// Puts the run on record: the decision line, the state file, the metrics file.
fn record(config: &Config, report: &RunReport) {
    report.log();
    let state = state::record(&config.state_file, report);
    if let Some(path) = &config.metrics_file {
        if let Err(e) = metrics::record(path, report, state.last_collection.as_ref()) {
            tracing::warn!(
                "cannot update the metrics file {}: {e}; this run is missing from its counts",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::path::Path;

    use super::*;
    use crate::client::{FetchError, Poll};
    use crate::lock::flock::{FlockLock, LockFile};
    use crate::state::State;

    const CSV: &str = "timestamp,data\n2026-01-01T00:00:00Z,42\n";

    /// A server on the paused clock: one ticket, ready at the `ready_at`-th poll (never if
    /// `None`).
    struct Scripted {
        ready_at: Option<u32>,
        polls: Cell<u32>,
    }

    impl Scripted {
        fn ready_at(polls: Option<u32>) -> Scripted {
            Scripted {
                ready_at: polls,
                polls: Cell::new(0),
            }
        }
    }

    impl ReportServer for Scripted {
        async fn request_ticket(&self) -> Result<String, FetchError> {
            Ok("abc_0".to_owned())
        }

        async fn get_report(&self, _ticket: &str) -> Result<Poll, FetchError> {
            let n = self.polls.get() + 1;
            self.polls.set(n);
            Ok(match self.ready_at {
                Some(at) if n >= at => Poll::Ready(CSV.to_owned()),
                _ => Poll::NotReady { retry_after: None },
            })
        }
    }

    fn config(dir: &Path) -> Config {
        Config {
            lock_file: dir.join("collector.lock"),
            report_dir: dir.join("reports"),
            state_file: dir.join("last-run.json"),
            poll_interval: Duration::from_secs(1),
            deadline: Duration::from_secs(60),
            ..Config::default()
        }
    }

    fn reports(config: &Config) -> Vec<String> {
        store::list(&config.report_dir, &store::order_path(&config.state_file)).unwrap()
    }

    async fn cancelled_after(after: Duration) -> CancelSignal {
        tokio::time::sleep(after).await;
        CancelSignal::Term
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_cancelled_from_outside_keeps_its_ticket_on_record_and_frees_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let lock = FlockLock::new(&config.lock_file);
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(3500)).await;
            // Mid-run: the lock is held by this run, and its record names the ticket.
            let holder = lock.holder().unwrap().expect("the run holds the lock");
            assert!(holder.confirmed);
            assert_eq!(holder.ticket.as_deref(), Some("abc_0"));
            CancelSignal::Term
        };
        let report = run(
            &config,
            &lock,
            || Ok(Scripted::ready_at(None)),
            Trigger::Manual,
            cancel,
        )
        .await;

        assert_eq!(report.outcome, Outcome::Cancelled(CancelSignal::Term));
        assert_eq!(report.exit_code(), 143);
        assert_eq!(report.ticket.as_deref(), Some("abc_0"));
        assert_eq!(report.duration, Duration::from_millis(3500));
        assert_eq!(lock.holder().unwrap(), None, "the lock is free again");
        let last = State::load(&config.state_file).unwrap().unwrap().last_run;
        assert_eq!(last.outcome, "cancelled");
        assert_eq!(last.ticket.as_deref(), Some("abc_0"));
        assert!(reports(&config).is_empty(), "nothing partial was saved");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_at_any_moment_ends_in_one_whole_outcome() {
        // Ready at the third poll: polls at 0 s, 1 s and 2 s, so the report is saved at 2 s.
        let ready = Duration::from_secs(2);
        let mut moments: Vec<Duration> = (0..=30).map(|i| Duration::from_millis(i * 100)).collect();
        moments.extend([
            ready - Duration::from_millis(1),
            ready + Duration::from_millis(1),
        ]);
        for at in moments {
            let dir = tempfile::tempdir().unwrap();
            let config = config(dir.path());
            let lock = FlockLock::new(&config.lock_file);
            let report = run(
                &config,
                &lock,
                || Ok(Scripted::ready_at(Some(3))),
                Trigger::Manual,
                cancelled_after(at),
            )
            .await;

            let last = State::load(&config.state_file).unwrap().unwrap().last_run;
            assert_eq!(last.outcome, report.outcome.kind(), "at {at:?}");
            assert_eq!(lock.holder().unwrap(), None, "at {at:?}: the lock is free");
            // The cancel wins a tie: it is polled first.
            if at >= ready + Duration::from_millis(1) {
                assert!(
                    matches!(report.outcome, Outcome::Collected { .. }),
                    "at {at:?}: {:?}",
                    report.outcome
                );
                let saved = reports(&config);
                assert_eq!(saved.len(), 1, "at {at:?}");
                let text = std::fs::read_to_string(config.report_dir.join(&saved[0])).unwrap();
                assert_eq!(text, CSV);
            } else {
                assert_eq!(
                    report.outcome,
                    Outcome::Cancelled(CancelSignal::Term),
                    "at {at:?}"
                );
                assert!(reports(&config).is_empty(), "at {at:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_lock_skips_naming_its_holder_without_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let lock = FlockLock::new(&config.lock_file);
        let _held = LockFile::open(&config.lock_file)
            .unwrap()
            .try_lock()
            .unwrap()
            .unwrap();
        let report = run(
            &config,
            &lock,
            || -> Result<Scripted, String> { panic!("a skipped run never connects") },
            Trigger::Manual,
            std::future::pending(),
        )
        .await;

        let Outcome::Skipped {
            skip: Skip::LockHeld,
            reason,
        } = &report.outcome
        else {
            panic!("{:?}", report.outcome);
        };
        assert!(reason.contains("policy forbid"), "{reason}");
        assert!(
            reason.contains(&format!("pid {}", std::process::id())),
            "{reason}"
        );
        assert_eq!(report.holder_pid, Some(std::process::id()));
        assert_eq!(report.exit_code(), 75);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_cannot_be_set_up_fails_the_run_and_frees_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let lock = FlockLock::new(&config.lock_file);
        let report = run(
            &config,
            &lock,
            || -> Result<Scripted, String> { Err("no TLS backend".to_owned()) },
            Trigger::Manual,
            std::future::pending(),
        )
        .await;

        assert_eq!(
            report.outcome,
            Outcome::Failed {
                error: "cannot set up the HTTP client: no TLS backend".to_owned()
            }
        );
        assert_eq!(report.exit_code(), 1);
        assert_eq!(lock.holder().unwrap(), None);
    }
}
