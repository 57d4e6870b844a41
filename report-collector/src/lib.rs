//! report-collector: the periodic job that collects one report from report-apis per run,
//! never overlapping a previous run (an flock held for the whole run, four policies for a busy
//! lock), skipping timer starts that come too late after their slot, and putting every
//! decision on record (journal fields, state file, Prometheus textfile, exit code).

pub mod client;
pub mod config;
pub mod lock;
pub mod metrics;
pub mod outcome;
pub mod schedule;
pub mod status;
pub mod store;

use std::cell::RefCell;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::SystemTime;

use tokio::time::Instant;

use crate::client::HttpServer;
use crate::config::{Config, Policy};
use crate::lock::{HeldLock, NotAcquired};
use crate::outcome::{CancelSignal, Outcome, RunReport};
use crate::schedule::{Placement, Trigger, format_time};

/// What a run learned and holds along the way, kept outside the run's future: a cancelled
/// run can still say which ticket it was collecting, and it keeps the lock until it is on
/// record (dropping the future must not free the lock early).
#[derive(Debug, Default)]
struct Progress {
    ticket: Option<String>,
    holder_pid: Option<u32>,
    lock: Option<HeldLock>,
}

/// Runs one collection on a current-thread runtime (a periodic job needs no more) and maps
/// its outcome to the process exit code.
pub fn run(config: &Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(outcome::exit_code::FAILURE);
        }
    };
    let report = runtime.block_on(run_once(config, Trigger::from_env()));
    ExitCode::from(report.exit_code())
}

/// One run: lock per policy, starting-deadline check, request + poll, save; then the decision
/// line, the state file and the metrics file. SIGTERM/SIGINT at any point cancel it.
pub async fn run_once(config: &Config, trigger: Trigger) -> RunReport {
    let started = SystemTime::now();
    let t0 = Instant::now();
    let deadline = t0 + config.deadline;
    let placement = Placement::of(&trigger, started, config.schedule_period);
    let progress = RefCell::new(Progress::default());

    let outcome = match cancel_signals() {
        Ok((mut term, mut int)) => {
            tokio::select! {
                biased;
                _ = term.recv() => Outcome::Cancelled(CancelSignal::Term),
                _ = int.recv() => Outcome::Cancelled(CancelSignal::Int),
                outcome = attempt(config, &placement, deadline, &progress) => outcome,
            }
        }
        Err(e) => Outcome::Failed {
            error: format!("cannot install the SIGTERM/SIGINT handlers: {e}"),
        },
    };
    let progress = progress.into_inner();
    let report = RunReport {
        outcome,
        policy: config.policy,
        ticket: progress.ticket.clone(),
        holder_pid: progress.holder_pid,
        slot: placement.slot,
        trigger: trigger.describe(),
        started,
        duration: t0.elapsed(),
    };
    report.log();
    if let Err(e) = report.to_last_run().save(&config.state_file) {
        tracing::warn!(
            "cannot write the state file {}: {e}; `status` will not show this run",
            config.state_file.display()
        );
    }
    if let Some(path) = &config.metrics_file {
        if let Err(e) = metrics::record(path, &report) {
            tracing::warn!(
                "cannot update the metrics file {}: {e}; this run is missing from its counts",
                path.display()
            );
        }
    }
    // Held until the run is fully on record, so `status` never sees a free lock with an older
    // last run.
    if let Some(held) = progress.lock {
        held.release();
    }
    report
}

type Signals = (tokio::signal::unix::Signal, tokio::signal::unix::Signal);

fn cancel_signals() -> std::io::Result<Signals> {
    use tokio::signal::unix::{SignalKind, signal};
    Ok((
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    ))
}

async fn attempt(
    config: &Config,
    placement: &Placement,
    deadline: Instant,
    progress: &RefCell<Progress>,
) -> Outcome {
    let acquired = match lock::acquire(
        &config.lock_file,
        config.policy,
        config.lock_wait,
        config.replace_grace,
        deadline,
    )
    .await
    {
        Ok(acquired) => acquired,
        Err(not) => return not_acquired(config, not, progress),
    };
    {
        let mut progress = progress.borrow_mut();
        progress.holder_pid = acquired.previous_holder;
        progress.lock = acquired.lock;
    }

    // Lock first, then lateness: a skip for the lock always names the holder.
    if config.policy == Policy::Forbid {
        if let Some(late_by) = placement.missed(config.starting_deadline) {
            let reason = format!(
                "missed slot {}: started {} after it, later than starting-deadline {}; the server rests until the next slot",
                format_time(placement.slot),
                humantime::format_duration(round_ms(late_by)),
                humantime::format_duration(config.starting_deadline.unwrap_or_default()),
            );
            return Outcome::Skipped { reason };
        }
    }

    let server = match HttpServer::new(&config.server_url, config.request_timeout) {
        Ok(server) => server,
        Err(e) => {
            let error = format!("cannot set up the HTTP client: {e}");
            return Outcome::Failed { error };
        }
    };
    let result = client::collect(
        &server,
        config.poll_interval,
        deadline,
        config.max_ticket_renewals,
        |ticket| {
            let mut progress = progress.borrow_mut();
            progress.ticket = Some(ticket.to_owned());
            if let Some(held) = progress.lock.as_mut() {
                if let Err(e) = held.set_ticket(ticket) {
                    tracing::warn!("cannot write the ticket into the lock file: {e}");
                }
            }
        },
    )
    .await;
    let collected = match result {
        Ok(collected) => collected,
        Err(e) => {
            let error = match e {
                client::CollectError::DeadlinePassed { .. } => format!(
                    "{e} (deadline {})",
                    humantime::format_duration(config.deadline)
                ),
                _ => e.to_string(),
            };
            return Outcome::Failed { error };
        }
    };

    // As the original did: the report lands in the journal through stdout.
    {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(collected.csv.as_bytes())
            .and_then(|()| stdout.flush());
    }
    match store::save(
        &config.report_dir,
        SystemTime::now(),
        &collected.ticket,
        collected.csv.as_bytes(),
    ) {
        Ok(report) => {
            match store::prune(&config.report_dir, config.keep_reports) {
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
            Outcome::Collected { report }
        }
        Err(e) => Outcome::Failed {
            error: e.to_string(),
        },
    }
}

fn not_acquired(config: &Config, not: NotAcquired, progress: &RefCell<Progress>) -> Outcome {
    let path = config.lock_file.display();
    match not {
        NotAcquired::Busy(holder) => {
            progress.borrow_mut().holder_pid = holder.pid;
            Outcome::Skipped {
                reason: format!(
                    "the previous run still holds the lock {path}: {holder} (policy forbid)"
                ),
            }
        }
        NotAcquired::WaitTimedOut { holder, waited } => {
            progress.borrow_mut().holder_pid = holder.pid;
            Outcome::Skipped {
                reason: format!(
                    "waited {} for the lock {path}, still held by {holder} (policy wait, lock-wait {}, deadline {})",
                    humantime::format_duration(round_ms(waited)),
                    humantime::format_duration(config.lock_wait),
                    humantime::format_duration(config.deadline),
                ),
            }
        }
        NotAcquired::HolderUnconfirmed(holder) => {
            progress.borrow_mut().holder_pid = holder.pid;
            Outcome::Skipped {
                reason: format!(
                    "the lock {path} is held by {holder}, but the lock file's record does not name that process, so policy replace signalled nothing"
                ),
            }
        }
        NotAcquired::DeadlinePassed(holder) => {
            progress.borrow_mut().holder_pid = holder.pid;
            Outcome::Failed {
                error: format!(
                    "the run deadline ({}) passed while ending the holder of {path}, {holder}",
                    humantime::format_duration(config.deadline)
                ),
            }
        }
        NotAcquired::Io(e) => Outcome::Failed {
            error: format!(
                "cannot use the lock file {path}: {e}; check that its directory exists and this user may write it"
            ),
        },
        NotAcquired::Signal { pid, error } => {
            progress.borrow_mut().holder_pid = Some(pid);
            Outcome::Failed {
                error: format!(
                    "cannot signal pid {pid}, the holder of {path}: {error}; run every collector as the same user"
                ),
            }
        }
    }
}

fn round_ms(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(d.as_millis() as u64)
}

/// `report-collector status [--json]`.
pub fn status(config: &Config, json: bool) -> ExitCode {
    let status = status::gather(config);
    let text = if json {
        match serde_json::to_string_pretty(&status) {
            Ok(mut text) => {
                text.push('\n');
                text
            }
            Err(e) => {
                tracing::error!("cannot render the status as JSON: {e}");
                return ExitCode::from(outcome::exit_code::FAILURE);
            }
        }
    } else {
        status.render()
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::SUCCESS
}
