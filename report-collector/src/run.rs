//! One run as a pipeline: acquire the lock, place the run in its slot, collect, save, record.
//! Each step hands the next what it needs or stops the run with a [`RunError`]; the one place
//! that turns the result into an outcome, and the outcome into a record, is [`run`].
//!
//! Cancellation comes from outside, as a future (`commands` makes one of SIGTERM and SIGINT),
//! so the tests can cancel a run in-process on tokio's paused clock. What a run learned and holds
//! along the way lives outside the steps' future, in [`Progress`]: a cancelled run can still
//! say which ticket it was collecting, and it keeps the lock until it is on record (dropping
//! the future must not free the lock early).

use std::cell::RefCell;
use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use report_common::fence::Fence;
use report_common::message_id;
use report_common::ticket::Ticket;
use tokio::time::Instant;

use crate::client::{self, Cancel, CollectError, Collected, FenceNote, ReportServer};
use crate::config::Config;
use crate::lock::{
    Collection, LeaseLost, LeftTicket, LockGuard, NotAcquired, Request, RunLock, SlotTaken,
};
use crate::metrics;
use crate::outcome::{CancelSignal, Failure, Outcome, RunReport, Skip, TicketNotes};
use crate::schedule::{Placement, Trigger};
use crate::state;
use crate::store::{self, StoreError};
use crate::time::{Timestamp, round_ms};

/// Why a run did not collect; the `Display` is the sentence the journal and `status` show.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The lock was busy (a skip) or could not be used (a failure).
    #[error(transparent)]
    Lock(Box<NotAcquired>),
    /// A timer start came later than `starting-deadline` after its slot.
    #[error(
        "missed slot {}: started {} after it, later than starting-deadline {}; the server rests until the next slot",
        .slot,
        humantime::format_duration(round_ms(*.late_by)),
        humantime::format_duration(*.starting_deadline)
    )]
    MissedSlot {
        slot: Timestamp,
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
    /// Another host sharing the lock claimed this slot first.
    #[error(
        "slot {} was already taken by host {} (pid {}); each slot is collected once across the hosts sharing the lock",
        .slot, .by.host, .by.pid
    )]
    SlotTaken { slot: Timestamp, by: SlotTaken },
    /// The shared lock's lease ran out while the run held it: it stopped, saving nothing.
    #[error("stopped without saving anything: {}", .0.why)]
    LeaseLost(LeaseLost),
    /// The report server refused the run's fencing token: a later holder has the lock.
    #[error("stopped without saving anything: {0}")]
    Fenced(String),
    /// The shared lock's database failed while claiming the slot.
    #[error("cannot claim the slot in the lock's database: {0}")]
    Claim(std::io::Error),
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
            RunError::SlotTaken { .. } => Some(Skip::SlotTaken),
            _ => None,
        };
        match skip {
            Some(skip) => Outcome::Skipped {
                skip,
                reason: self.to_string(),
            },
            None => Outcome::Failed {
                failure: self.failure(),
                error: self.to_string(),
            },
        }
    }

    /// The kind of a failure: the lock's database out of reach and a lost lease are kinds of
    /// their own, so systemd and scripts can tell them from a failed collection.
    fn failure(&self) -> Failure {
        match self {
            RunError::Lock(not) if not.unreachable() => Failure::DatabaseUnavailable,
            RunError::LeaseLost(_) => Failure::LeaseLost,
            RunError::Fenced(_) => Failure::Fenced,
            RunError::Claim(_) => Failure::DatabaseUnavailable,
            _ => Failure::Run,
        }
    }
}

/// What a run learned and holds along the way, kept outside the steps' future.
#[derive(Debug)]
struct Progress<G> {
    ticket: Option<Ticket>,
    tickets: TicketNotes,
    /// The other run that held the lock (skipped for it, waited for it, or replaced it).
    holder_pid: Option<u32>,
    /// Its host, when the lock is shared by several hosts.
    holder_host: Option<String>,
    /// Shared with the steps, which may be dropped at any await; the run releases it once
    /// they are gone.
    guard: Option<Rc<G>>,
    /// When the run saved its report, for a lock that keeps the fleet's last collection.
    collected_at: Option<Timestamp>,
    /// The report, once written: a lease lost after that does not undo the collection.
    saved: Option<PathBuf>,
    /// The report server refused the run's token while it cancelled a ticket.
    fenced: Option<String>,
    /// What the report server's answers said of the run's fence.
    fence: FenceNote,
}

impl<G> Progress<G> {
    fn guard(&self) -> Option<Rc<G>> {
        self.guard.clone()
    }
}

/// Takes `ticket` as the run's, requested at `requested` (by this run or another), and puts it
/// in the lock's record: from now on, if this run does not finish it, the next holder will
/// find it.
async fn set_ticket<G: LockGuard>(
    progress: &RefCell<Progress<G>>,
    ticket: &Ticket,
    requested: Option<Timestamp>,
) {
    let guard = {
        let mut progress = progress.borrow_mut();
        progress.ticket = Some(ticket.clone());
        progress.tickets.requested = requested;
        progress.guard()
    };
    if let Some(guard) = guard {
        let at = requested.unwrap_or_else(Timestamp::now);
        if let Err(e) = guard.set_ticket(ticket, at).await {
            tracing::warn!("cannot write the ticket into the lock's record: {e}");
        }
    }
}

/// The run's ticket is done with (saved, or cancelled): nobody is to resume it.
async fn finish_ticket<G: LockGuard>(progress: &RefCell<Progress<G>>) {
    let guard = progress.borrow().guard();
    if let Some(guard) = guard
        && let Err(e) = guard.finish_ticket().await
    {
        tracing::warn!(
            "cannot clear the finished ticket from the lock's record: {e}; the next run will find it and see it done"
        );
    }
}

/// One run: the steps, cancelled when `cancel` completes first, then the decision line, the
/// state file and the metrics file; the lock is released last. `connect` is called only when
/// the run gets as far as collecting, so a skip costs no HTTP client.
pub async fn run<L: RunLock, S: ReportServer>(
    config: &Config,
    lock: &L,
    connect: impl FnOnce(Option<Fence>) -> Result<S, String>,
    trigger: Trigger,
    cancel: impl Future<Output = CancelSignal>,
) -> RunReport {
    let started = Timestamp::now();
    let t0 = Instant::now();
    let placement = Placement::of(&trigger, started, config.schedule_period);
    let progress = RefCell::new(Progress {
        ticket: None,
        tickets: TicketNotes::default(),
        holder_pid: None,
        holder_host: None,
        guard: None,
        collected_at: None,
        saved: None,
        fenced: None,
        fence: FenceNote::NotSent,
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
        holder_host: progress.holder_host,
        slot: placement.slot,
        trigger: trigger.describe(),
        started,
        duration: t0.elapsed(),
        tickets: progress.tickets,
        fence: progress.fence,
    };
    record(config, &report);
    // Held until the run is fully on record, so `status` never sees a free lock with an older
    // last run.
    if let Some(guard) = progress.guard.and_then(Rc::into_inner) {
        let collected = match (&report.outcome, progress.collected_at) {
            (Outcome::Collected { report }, Some(at)) => Some(Collection { at, report }),
            _ => None,
        };
        guard.release(collected).await;
    }
    report
}

async fn steps<L: RunLock, S: ReportServer>(
    config: &Config,
    lock: &L,
    connect: impl FnOnce(Option<Fence>) -> Result<S, String>,
    placement: &Placement,
    t0: Instant,
    progress: &RefCell<Progress<L::Guard>>,
) -> Result<PathBuf, RunError> {
    let request = Request {
        slot: Some(placement.slot),
        ..request_of(config, t0)
    };
    let left = acquire(lock, request, progress).await?;
    // Lock first, then lateness: a skip for the lock always names the holder. A ticket left
    // by the run before stays in the lock's record for the next run.
    check_slot(config, placement)?;
    let guard = progress.borrow().guard();
    let Some(guard) = guard else {
        return collect_and_save(config, connect, request, left, progress).await;
    };
    if placement.timer_started {
        match guard.claim_slot(placement.slot).await {
            Ok(Ok(())) => {}
            Ok(Err(by)) => {
                progress.borrow_mut().holder_host = Some(by.host.clone());
                return Err(RunError::SlotTaken {
                    slot: placement.slot,
                    by,
                });
            }
            Err(e) => return Err(RunError::Claim(e)),
        }
    }
    // The lease first: a run whose lease ran out sends the report server nothing more.
    let lost = tokio::select! {
        biased;
        lost = guard.lease_lost() => lost,
        result = collect_and_save(config, connect, request, left, progress) => return result,
    };
    let saved = progress.borrow().saved.clone();
    match saved {
        // The ticket was marked as being saved in the lock's row before the report was
        // written, so no other host fetches it again: the slot is collected, only its
        // bookkeeping in the row is missing.
        Some(report) => {
            let ticket = progress.borrow().ticket.clone();
            let ticket = ticket.as_ref().map_or("", Ticket::as_str);
            tracing::warn!(
                MESSAGE_ID = message_id::LEASE_LOST_AFTER_SAVE,
                TICKET = ticket,
                REPORT = %report.display(),
                REASON = %lost.why,
                "saved the report as {}, but then lost the lease before finishing its ticket in the lock's row ({}); the row marks the ticket as being saved by this host, so the next holder takes it as collected and fetches it not again",
                report.display(),
                lost.why
            );
            Ok(report)
        }
        None => Err(RunError::LeaseLost(lost)),
    }
}

async fn collect_and_save<G: LockGuard, S: ReportServer>(
    config: &Config,
    connect: impl FnOnce(Option<Fence>) -> Result<S, String>,
    request: Request,
    left: Option<LeftTicket>,
    progress: &RefCell<Progress<G>>,
) -> Result<PathBuf, RunError> {
    if let Some(left) = &left
        && let Some(report) = already_saved(config, left, progress).await
    {
        return Ok(report);
    }
    let left = match left {
        Some(LeftTicket {
            ticket,
            by_pid,
            saving: Some((generation, host)),
            ..
        }) => {
            // Its holder marked it right before writing the report, then stopped before it
            // could finish the ticket: across hosts a report is saved at most once, so it is
            // not fetched again.
            tracing::warn!(
                MESSAGE_ID = message_id::RESUME_DECLINED,
                TICKET = %ticket,
                LEFT_BY_PID = by_pid,
                HOLDER_HOST = host.as_str(),
                REASON = "saving",
                "ticket {ticket} was marked as being saved by host {host} (generation {generation}), which stopped before finishing it: taken as collected by host {host}, not fetched again"
            );
            finish_ticket(progress).await;
            None
        }
        left => left,
    };
    let fence = progress.borrow().guard().and_then(|guard| guard.fence());
    let server = connect(fence).map_err(RunError::Connect)?;
    let collected = async {
        let resume = match left {
            Some(left) => take_over(config, &server, left, request.deadline, progress).await,
            None => None,
        };
        if let Some(message) = progress.borrow_mut().fenced.take() {
            return Err(RunError::Fenced(message));
        }
        collect(config, &server, request.deadline, resume, progress).await
    }
    .await;
    progress.borrow_mut().fence = server.fence_note();
    save(config, collected?, progress).await
}

/// The request of a run that started at `started`, as `config` says.
fn request_of(config: &Config, started: Instant) -> Request {
    Request {
        policy: config.policy,
        lock_wait: config.lock_wait,
        replace_grace: config.replace_grace,
        deadline: crate::time::instant_after(started, config.deadline),
        deadline_setting: config.deadline,
        slot: None,
    }
}

async fn acquire<L: RunLock>(
    lock: &L,
    request: Request,
    progress: &RefCell<Progress<L::Guard>>,
) -> Result<Option<LeftTicket>, RunError> {
    match crate::lock::acquire(lock, request).await {
        Ok(acquired) => {
            let mut progress = progress.borrow_mut();
            progress.holder_pid = acquired.previous_holder;
            progress.holder_host = acquired.previous_host;
            progress.guard = acquired.guard.map(Rc::new);
            Ok(acquired.left)
        }
        Err(not) => {
            let mut progress = progress.borrow_mut();
            progress.holder_pid = not.holder_pid();
            progress.holder_host = not.holder_host();
            Err(not.into())
        }
    }
}

/// A timer start later than `starting-deadline` after its slot skips itself.
fn check_slot(config: &Config, placement: &Placement) -> Result<(), RunError> {
    if !config.policy.skips_late_starts() {
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

/// The report of a left ticket that is already on disk: the run that left it was ended between
/// saving it and putting it on record. It is this run's collection, not saved a second time.
async fn already_saved<G: LockGuard>(
    config: &Config,
    left: &LeftTicket,
    progress: &RefCell<Progress<G>>,
) -> Option<PathBuf> {
    let report = match store::find_ticket(&config.report_dir, &left.ticket) {
        Ok(found) => found?,
        Err(e) => {
            tracing::warn!(
                "cannot look in {} for the report of ticket {}: {e}",
                config.report_dir.display(),
                left.ticket
            );
            return None;
        }
    };
    tracing::info!(
        MESSAGE_ID = message_id::TICKET_RESUMED,
        TICKET = %left.ticket,
        RESUMED_FROM_PID = left.by_pid,
        "the report of ticket {}, which pid {} left unfinished, is already saved as {}: that run was ended after saving it",
        left.ticket,
        left.by_pid,
        report.display()
    );
    set_ticket(progress, &left.ticket, left.requested).await;
    progress.borrow_mut().tickets.resumed_from = Some(left.by_pid);
    finish_ticket(progress).await;
    // What the run that saved it did not get to.
    prune(config, &report);
    Some(report)
}

/// Decides what becomes of the ticket the previous holder left: resumed (returned) when
/// resuming is on and it is younger than `resume-within`, else cancelled on the server, since
/// no run will fetch it.
async fn take_over<S: ReportServer, G: LockGuard>(
    config: &Config,
    server: &S,
    left: LeftTicket,
    deadline: Instant,
    progress: &RefCell<Progress<G>>,
) -> Option<Ticket> {
    let within = humantime::format_duration(config.resume_within);
    // A request time ahead of the clock (the clock was set back) counts as just now.
    let age = left
        .requested
        .map(|at| Timestamp::now().saturating_duration_since(at));
    // The REASON field, then the sentence.
    let refusal = match age {
        _ if config.resume_within.is_zero() => {
            Some(("off", "resuming is off (resume-within = 0s)".to_owned()))
        }
        None => Some((
            "no-request-time",
            "its request time is not on record".to_owned(),
        )),
        Some(age) if age > config.resume_within => Some((
            "too-old",
            format!(
                "it was requested {} ago, longer than resume-within ({within})",
                humantime::format_duration(round_ms(age))
            ),
        )),
        Some(_) => None,
    };
    let ticket = left.ticket;
    if let Some((reason, why)) = refusal {
        tracing::info!(
            MESSAGE_ID = message_id::RESUME_DECLINED,
            TICKET = %ticket,
            LEFT_BY_PID = left.by_pid,
            HOLDER_HOST = left.host.as_deref().unwrap_or(""),
            REASON = reason,
            "not resuming ticket {ticket}, which pid {} left unfinished: {why}",
            left.by_pid
        );
        cancel(server, &ticket, &why, deadline, progress).await;
        return None;
    }
    tracing::info!(
        MESSAGE_ID = message_id::TICKET_RESUMED,
        TICKET = %ticket,
        RESUMED_FROM_PID = left.by_pid,
        "resuming ticket {ticket}, which pid {} left unfinished (requested {} ago, resume-within {within})",
        left.by_pid,
        humantime::format_duration(round_ms(age.unwrap_or_default()))
    );
    set_ticket(progress, &ticket, left.requested).await;
    progress.borrow_mut().tickets.resumed_from = Some(left.by_pid);
    Some(ticket)
}

/// How long a cancel may take at most (less if the run deadline is nearer): it is a courtesy to
/// the server, never worth holding a run.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the server to drop `ticket`, which no run will fetch (`why`), and clears it from the
/// lock's record whatever the answer. Best effort: nothing here fails the run.
async fn cancel<S: ReportServer, G: LockGuard>(
    server: &S,
    ticket: &Ticket,
    why: &str,
    deadline: Instant,
    progress: &RefCell<Progress<G>>,
) {
    let bound = CANCEL_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
    match tokio::time::timeout(bound, server.cancel_ticket(ticket)).await {
        Ok(Ok(Cancel::Done)) => {
            progress.borrow_mut().tickets.cancelled += 1;
            tracing::info!(
                MESSAGE_ID = message_id::TICKET_CANCEL,
                TICKET = %ticket,
                CANCEL = "done",
                "cancelled ticket {ticket} on the server: {why}"
            );
        }
        Ok(Ok(Cancel::Unsupported(status))) => tracing::info!(
            MESSAGE_ID = message_id::TICKET_CANCEL,
            TICKET = %ticket,
            CANCEL = "unsupported",
            "the server cannot cancel tickets (it answered {status}: the original server or an older report-apis); ticket {ticket} is left to expire there ({why})"
        ),
        Ok(Err(client::FetchError::Fenced(message))) => {
            // Not this run's to clear: the lock's later holder decides what becomes of it.
            progress.borrow_mut().fenced = Some(message);
            return;
        }
        Ok(Err(e)) => tracing::warn!(
            MESSAGE_ID = message_id::TICKET_CANCEL,
            TICKET = %ticket,
            CANCEL = "failed",
            "cannot cancel ticket {ticket} on the server ({why}): {}; it is left to expire there",
            e.message()
        ),
        Err(_) => tracing::warn!(
            MESSAGE_ID = message_id::TICKET_CANCEL,
            TICKET = %ticket,
            CANCEL = "no-answer",
            "the server did not answer the cancel of ticket {ticket} within {} ({why}); it is left to expire there",
            humantime::format_duration(bound)
        ),
    }
    finish_ticket(progress).await;
}

async fn collect<S: ReportServer, G: LockGuard>(
    config: &Config,
    server: &S,
    deadline: Instant,
    resume: Option<Ticket>,
    progress: &RefCell<Progress<G>>,
) -> Result<Collected, RunError> {
    let on_ticket = async |ticket: &Ticket| {
        // A new ticket: the one resumed (if any) is gone.
        progress.borrow_mut().tickets.resumed_from = None;
        set_ticket(progress, ticket, Some(Timestamp::now())).await;
    };
    let result = client::collect(
        server,
        config.poll_interval,
        deadline,
        config.max_ticket_renewals,
        resume,
        on_ticket,
    )
    .await;
    let error = match result {
        Ok(collected) => return Ok(collected),
        Err(e) => e,
    };
    // A ticket no later poll would get a report for: nobody will fetch it. A ticket that ran
    // out of the deadline is left for the next run.
    let hopeless = match &error {
        CollectError::Rejected {
            ticket: Some(ticket),
            ..
        } => Some((ticket.clone(), "the server refused it")),
        CollectError::RenewalsExhausted { .. } => progress
            .borrow()
            .ticket
            .clone()
            .map(|t| (t, "max-ticket-renewals is used up")),
        _ => None,
    };
    if let Some((ticket, why)) = hopeless {
        cancel(server, &ticket, why, deadline, progress).await;
    }
    Err(match error {
        CollectError::DeadlinePassed { .. } => RunError::DeadlinePassed {
            source: error,
            deadline: config.deadline,
        },
        CollectError::Fenced(message) => RunError::Fenced(message),
        _ => RunError::Collect(error),
    })
}

/// Echoes the report to stdout (into the journal, as the original did), saves it as the lock
/// commits it ([`LockGuard::commit`]), finishes its ticket in the lock's record, and prunes the
/// reports beyond `keep-reports`. Until the ticket
/// is finished, a run ended here leaves it to the next, which finds the report saved (or, if
/// the save did not complete, fetches it again: the server keeps a ready report `ticket-ttl`).
/// The report is already whole in its hidden temp file (see [`crate::store::Spool`]): saving it
/// is a rename, and nothing is under its final name before the mark below.
async fn save<G: LockGuard>(
    config: &Config,
    collected: Collected,
    progress: &RefCell<Progress<G>>,
) -> Result<PathBuf, RunError> {
    let Collected { ticket, mut report } = collected;
    let guard = progress.borrow().guard();
    {
        let mut stdout = std::io::stdout().lock();
        let _ = report.copy_to(&mut stdout).and_then(|_| stdout.flush());
    }
    let order = store::order_path(&config.state_file);
    // Named by when its ticket was requested: a ticket saved again (by a run that resumed it)
    // lands on the same name, never beside it.
    let requested = progress
        .borrow()
        .tickets
        .requested
        .unwrap_or_else(Timestamp::now);
    // The report waits in its hidden temp file until the lock commits it (a run that stops
    // before leaves the file to be removed): across hosts, nothing is under its final name
    // before the lock's row marks the ticket as being saved by this run.
    let write = || store::save(&config.report_dir, &order, requested, &ticket, report);
    let saved = match &guard {
        Some(guard) => guard
            .commit(&ticket, write)
            .await
            .map_err(RunError::LeaseLost)?,
        None => write(),
    };
    let report = match saved {
        Ok(report) => report,
        Err(e) => {
            // Not written after all: the ticket goes back on record unmarked, so the next
            // holder resumes it.
            set_ticket(progress, &ticket, Some(requested)).await;
            return Err(e.into());
        }
    };
    {
        let mut progress = progress.borrow_mut();
        progress.collected_at = Some(Timestamp::now());
        progress.saved = Some(report.clone());
    }
    finish_ticket(progress).await;
    prune(config, &report);
    Ok(report)
}

/// Deletes the reports beyond `keep-reports`, never `report` (the one just collected) nor the
/// state file's last collection, whatever retention's order says.
fn prune(config: &Config, report: &std::path::Path) {
    let order = store::order_path(&config.state_file);
    let last = state::State::load(&config.state_file)
        .ok()
        .flatten()
        .and_then(|s| s.last_collection)
        .map(|c| c.report);
    let protect: Vec<&std::path::Path> = std::iter::once(report).chain(last.as_deref()).collect();
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
}

/// The name of the user this process runs as, for a command that gives it access.
fn run_as_user() -> String {
    let uid = nix::unistd::Uid::effective();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |user| user.name)
}

/// Puts the run on record: the decision line, the state file, the metrics file.
fn record(config: &Config, report: &RunReport) {
    report.log();
    let state = state::record(&config.state_file, report);
    if let Some(path) = &config.metrics_file
        && let Err(e) = metrics::record(path, report, state.last_collection.as_ref())
    {
        let fix = metrics_fix(path, &e, &run_as_user())
            .map(|fix| format!("; {fix}"))
            .unwrap_or_default();
        tracing::warn!(
            MESSAGE_ID = message_id::METRICS_NOT_WRITTEN,
            METRICS_FILE = %path.display(),
            "cannot update the metrics file {}: {e}; this run is missing from its counts{fix}",
            path.display(),
        );
    }
}

/// What gives `user` the access to the metrics file at `path` that `err` says is missing: the
/// ACL entry the package sets on node_exporter's textfile directory, or a path the unit's
/// sandbox allows. `None` when access is not what failed.
fn metrics_fix(path: &std::path::Path, err: &std::io::Error, user: &str) -> Option<String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .display();
    match err.kind() {
        std::io::ErrorKind::PermissionDenied => Some(format!(
            "give {user} write access to {dir}, as the package does on node_exporter's textfile \
             directory: setfacl -m u:{user}:rwx {dir}"
        )),
        std::io::ErrorKind::ReadOnlyFilesystem => Some(format!(
            "{dir} is read-only to the run: allow it with `systemctl edit \
             report-collector.service`, [Service] ReadWritePaths={dir}"
        )),
        _ => None,
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

    /// A server on the paused clock: issues `abc_0`, then `abc_1`, ...; every ticket it knows
    /// is ready at the `ready_at`-th poll (never if `None`); it records every call.
    struct Scripted {
        ready_at: Option<u32>,
        polls: Cell<u32>,
        issued: Cell<u32>,
        /// Tickets it answers with 404.
        unknown: Vec<&'static str>,
        /// What a poll of a known ticket gets instead, if set.
        poll_error: Option<FetchError>,
        cancel: Result<Cancel, FetchError>,
        calls: RefCell<Vec<String>>,
    }

    impl Scripted {
        fn ready_at(polls: Option<u32>) -> Scripted {
            Scripted {
                ready_at: polls,
                polls: Cell::new(0),
                issued: Cell::new(0),
                unknown: Vec::new(),
                poll_error: None,
                cancel: Ok(Cancel::Done),
                calls: RefCell::new(Vec::new()),
            }
        }

        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    impl ReportServer for Scripted {
        async fn request_ticket(&self) -> Result<Ticket, FetchError> {
            let n = self.issued.get();
            self.issued.set(n + 1);
            self.calls.borrow_mut().push("request".to_owned());
            Ok(crate::t(&format!("abc_{n}")))
        }

        async fn get_report(&self, ticket: &Ticket) -> Result<Poll, FetchError> {
            self.calls.borrow_mut().push(format!("poll {ticket}"));
            if self.unknown.contains(&ticket.as_str()) {
                return Ok(Poll::UnknownTicket);
            }
            if let Some(e) = &self.poll_error {
                return Err(e.clone());
            }
            let n = self.polls.get() + 1;
            self.polls.set(n);
            Ok(match self.ready_at {
                Some(at) if n >= at => Poll::Ready(spooled(ticket)),
                _ => Poll::NotReady { retry_after: None },
            })
        }

        async fn cancel_ticket(&self, ticket: &Ticket) -> Result<Cancel, FetchError> {
            self.calls.borrow_mut().push(format!("cancel {ticket}"));
            self.cancel.clone()
        }
    }

    /// The report of `ticket` as the client leaves it, spooled in the system's temp directory:
    /// on the file system of the tests' report directories (`tempfile::tempdir` makes them
    /// there), so it is renamed into one as into its own.
    fn spooled(ticket: &str) -> store::Spool {
        store::Spool::holding(&std::env::temp_dir(), &crate::t(ticket), CSV.as_bytes()).unwrap()
    }

    /// Leaves `ticket`, requested `age` ago, in the lock's record, as a run killed while
    /// collecting it would.
    fn leave_ticket(config: &Config, ticket: &str, age: Duration) {
        let (held, _) = LockFile::open(&config.lock_file)
            .unwrap()
            .try_lock()
            .unwrap()
            .unwrap();
        held.set_ticket_now(&crate::t(ticket), Timestamp::now() - age)
            .unwrap();
        drop(held);
    }

    fn record_ticket(config: &Config) -> Option<String> {
        let text = std::fs::read_to_string(&config.lock_file).unwrap_or_default();
        serde_json::from_str::<crate::lock::HolderRecord>(&text)
            .ok()
            .and_then(|r| r.ticket)
    }

    async fn run_once(config: &Config, server: Scripted) -> (RunReport, Scripted) {
        let lock = FlockLock::new(&config.lock_file);
        let report = run(
            config,
            &lock,
            |_| Ok(&server),
            Trigger::Manual,
            std::future::pending(),
        )
        .await;
        (report, server)
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_metrics_file_without_access_names_the_fix() {
        let path = Path::new("/srv/metrics/report-collector.prom");
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(
            metrics_fix(path, &denied, "report-collector").as_deref(),
            Some(
                "give report-collector write access to /srv/metrics, as the package does on \
                 node_exporter's textfile directory: setfacl -m u:report-collector:rwx /srv/metrics"
            )
        );
        let read_only = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
        assert!(
            metrics_fix(path, &read_only, "report-collector")
                .unwrap()
                .ends_with("ReadWritePaths=/srv/metrics")
        );
        let other = std::io::Error::other("it is a symbolic link");
        assert_eq!(metrics_fix(path, &other, "report-collector"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ticket_left_by_a_killed_run_is_resumed_instead_of_requesting_another() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        leave_ticket(&config, "left_0", 2 * MINUTE);
        let (captured, guard) = report_common::logging::capture::start();
        let (report, server) = run_once(&config, Scripted::ready_at(Some(2))).await;
        drop(guard);

        assert!(
            matches!(report.outcome, Outcome::Collected { .. }),
            "{report:?}"
        );
        let resumed = crate::outcome::the_line(&captured, message_id::TICKET_RESUMED);
        assert_eq!(resumed["TICKET"], "left_0");
        assert_eq!(resumed["RESUMED_FROM_PID"], std::process::id().to_string());
        assert_eq!(server.calls(), ["poll left_0", "poll left_0"]);
        assert_eq!(report.ticket.as_deref(), Some("left_0"));
        assert_eq!(report.tickets.resumed_from, Some(std::process::id()));
        assert!(report.ticket_age().unwrap() >= 2 * MINUTE);
        assert!(
            report.message().contains("resuming the ticket pid"),
            "{}",
            report.message()
        );
        assert_eq!(
            record_ticket(&config),
            None,
            "finished: nothing is handed on"
        );
        let saved = reports(&config);
        assert_eq!(saved.len(), 1);
        assert!(saved[0].ends_with("_left_0.csv"), "{saved:?}");
        let state = State::load(&config.state_file).unwrap().unwrap();
        assert_eq!(state.last_run.resumed_from_pid, Some(std::process::id()));
        let collection = state.last_collection.unwrap();
        assert_eq!(collection.ticket.as_deref(), Some("left_0"));
        assert!(collection.ticket_requested.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_left_ticket_past_resume_within_or_with_resuming_off_is_cancelled() {
        for (resume_within, age, reason) in [
            (30 * MINUTE, 31 * MINUTE, "too-old"),
            (Duration::ZERO, MINUTE, "off"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let config = Config {
                resume_within,
                ..config(dir.path())
            };
            leave_ticket(&config, "left_0", age);
            let (captured, guard) = report_common::logging::capture::start();
            let (report, server) = run_once(&config, Scripted::ready_at(Some(1))).await;
            drop(guard);

            let declined = crate::outcome::the_line(&captured, message_id::RESUME_DECLINED);
            assert_eq!(declined["TICKET"], "left_0");
            assert_eq!(declined["LEFT_BY_PID"], std::process::id().to_string());
            assert_eq!(declined["REASON"], reason);
            let cancel = crate::outcome::the_line(&captured, message_id::TICKET_CANCEL);
            assert_eq!((&*cancel["TICKET"], &*cancel["CANCEL"]), ("left_0", "done"));

            assert!(
                matches!(report.outcome, Outcome::Collected { .. }),
                "{report:?}"
            );
            assert_eq!(
                server.calls(),
                ["cancel left_0", "request", "poll abc_0"],
                "{resume_within:?}"
            );
            assert_eq!(report.tickets.cancelled, 1);
            assert_eq!(report.tickets.resumed_from, None);
            assert_eq!(report.ticket.as_deref(), Some("abc_0"));
            assert_eq!(record_ticket(&config), None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_without_the_cancel_route_changes_nothing_but_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            resume_within: Duration::ZERO,
            ..config(dir.path())
        };
        leave_ticket(&config, "left_0", MINUTE);
        let server = Scripted {
            cancel: Ok(Cancel::Unsupported("405 Method Not Allowed".into())),
            ..Scripted::ready_at(Some(1))
        };
        let (captured, guard) = report_common::logging::capture::start();
        let (report, server) = run_once(&config, server).await;
        drop(guard);
        assert!(
            matches!(report.outcome, Outcome::Collected { .. }),
            "{report:?}"
        );
        let cancel = crate::outcome::the_line(&captured, message_id::TICKET_CANCEL);
        assert_eq!(cancel["CANCEL"], "unsupported");
        assert_eq!(server.calls(), ["cancel left_0", "request", "poll abc_0"]);
        assert_eq!(report.tickets.cancelled, 0);
        assert_eq!(record_ticket(&config), None, "nobody is to fetch it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_left_ticket_the_server_forgot_falls_back_to_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            max_ticket_renewals: 0,
            ..config(dir.path())
        };
        leave_ticket(&config, "left_0", MINUTE);
        let server = Scripted {
            unknown: vec!["left_0"],
            ..Scripted::ready_at(Some(1))
        };
        let (report, server) = run_once(&config, server).await;
        assert!(
            matches!(report.outcome, Outcome::Collected { .. }),
            "{report:?}"
        );
        assert_eq!(server.calls(), ["poll left_0", "request", "poll abc_0"]);
        assert_eq!(
            report.tickets.resumed_from, None,
            "what it collected is its own"
        );
        assert_eq!(report.ticket.as_deref(), Some("abc_0"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_left_ticket_whose_report_is_already_saved_is_not_fetched_nor_saved_again() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let order = store::order_path(&config.state_file);
        let report =
            store::Spool::holding(&config.report_dir, &crate::t("left_0"), CSV.as_bytes()).unwrap();
        let saved = store::save(
            &config.report_dir,
            &order,
            Timestamp::now(),
            &crate::t("left_0"),
            report,
        )
        .unwrap();
        leave_ticket(&config, "left_0", MINUTE);
        let lock = FlockLock::new(&config.lock_file);
        let report = run(
            &config,
            &lock,
            |_| -> Result<Scripted, String> { panic!("nothing to ask the server") },
            Trigger::Manual,
            std::future::pending(),
        )
        .await;
        assert_eq!(report.outcome, Outcome::Collected { report: saved });
        assert_eq!(report.tickets.resumed_from, Some(std::process::id()));
        assert_eq!(reports(&config).len(), 1, "on disk once");
        assert_eq!(record_ticket(&config), None);
        let state = State::load(&config.state_file).unwrap().unwrap();
        assert_eq!(
            state.last_collection.unwrap().ticket.as_deref(),
            Some("left_0")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_ended_by_its_deadline_or_a_signal_leaves_its_ticket_and_cancels_nothing() {
        // Out of deadline (never ready), then cancelled by SIGTERM, then collected: the same
        // ticket all along, requested once.
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            deadline: Duration::from_secs(5),
            ..config(dir.path())
        };
        let (report, server) = run_once(&config, Scripted::ready_at(None)).await;
        assert!(
            matches!(report.outcome, Outcome::Failed { .. }),
            "{report:?}"
        );
        assert_eq!(server.calls()[0], "request");
        assert!(!server.calls().iter().any(|c| c.starts_with("cancel")));
        assert_eq!(record_ticket(&config).as_deref(), Some("abc_0"));

        let lock = FlockLock::new(&config.lock_file);
        let server = Scripted::ready_at(None);
        let report = run(
            &config,
            &lock,
            |_| Ok(&server),
            Trigger::Manual,
            cancelled_after(Duration::from_secs(2)),
        )
        .await;
        assert_eq!(report.outcome, Outcome::Cancelled(CancelSignal::Term));
        assert_eq!(report.tickets.resumed_from, Some(std::process::id()));
        assert!(
            server.calls().iter().all(|c| c == "poll abc_0"),
            "{:?}",
            server.calls()
        );
        assert_eq!(record_ticket(&config).as_deref(), Some("abc_0"));

        let (report, server) = run_once(&config, Scripted::ready_at(Some(1))).await;
        assert!(
            matches!(report.outcome, Outcome::Collected { .. }),
            "{report:?}"
        );
        assert_eq!(server.calls(), ["poll abc_0"]);
        assert_eq!(reports(&config).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ticket_the_server_refuses_is_cancelled_and_not_handed_on() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let server = Scripted {
            poll_error: Some(FetchError::Permanent("400 Bad Request".into())),
            ..Scripted::ready_at(Some(1))
        };
        let (report, server) = run_once(&config, server).await;
        assert!(
            matches!(report.outcome, Outcome::Failed { .. }),
            "{report:?}"
        );
        assert_eq!(server.calls(), ["request", "poll abc_0", "cancel abc_0"]);
        assert_eq!(report.tickets.cancelled, 1);
        assert_eq!(record_ticket(&config), None);
    }

    fn config(dir: &Path) -> Config {
        // Made here, as the client makes it when it spools a report: the scripted server
        // spools elsewhere (see `spooled`).
        std::fs::create_dir_all(dir.join("reports")).unwrap();
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
            let holder = lock
                .holder()
                .await
                .unwrap()
                .expect("the run holds the lock");
            assert!(holder.confirmed);
            assert_eq!(holder.ticket.as_deref(), Some("abc_0"));
            CancelSignal::Term
        };
        let report = run(
            &config,
            &lock,
            |_| Ok(Scripted::ready_at(None)),
            Trigger::Manual,
            cancel,
        )
        .await;

        assert_eq!(report.outcome, Outcome::Cancelled(CancelSignal::Term));
        assert_eq!(report.exit_code(), 143);
        assert_eq!(report.ticket.as_deref(), Some("abc_0"));
        assert_eq!(report.duration, Duration::from_millis(3500));
        assert_eq!(lock.holder().await.unwrap(), None, "the lock is free again");
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
                |_| Ok(Scripted::ready_at(Some(3))),
                Trigger::Manual,
                cancelled_after(at),
            )
            .await;

            let last = State::load(&config.state_file).unwrap().unwrap().last_run;
            assert_eq!(last.outcome, report.outcome.kind(), "at {at:?}");
            assert_eq!(
                lock.holder().await.unwrap(),
                None,
                "at {at:?}: the lock is free"
            );
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
            |_| -> Result<Scripted, String> { panic!("a skipped run never connects") },
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
            |_| -> Result<Scripted, String> { Err("no TLS backend".to_owned()) },
            Trigger::Manual,
            std::future::pending(),
        )
        .await;

        assert_eq!(
            report.outcome,
            Outcome::Failed {
                error: "cannot set up the HTTP client: no TLS backend".to_owned(),
                failure: Failure::Run,
            }
        );
        assert_eq!(report.exit_code(), 1);
        assert_eq!(lock.holder().await.unwrap(), None);
    }

    /// A shared lock on the paused clock: its lease is lost `lost_after` the take, and its
    /// confirmation before the save fails when `confirm_fails`.
    struct Leased {
        lost_after: Duration,
        confirm_fails: bool,
    }

    struct LeasedGuard {
        lost_at: Instant,
        confirm_fails: bool,
    }

    impl LockGuard for LeasedGuard {
        async fn set_ticket(&self, _: &Ticket, _: Timestamp) -> std::io::Result<()> {
            Ok(())
        }
        async fn finish_ticket(&self) -> std::io::Result<()> {
            Ok(())
        }
        async fn lease_lost(&self) -> LeaseLost {
            tokio::time::sleep_until(self.lost_at).await;
            LeaseLost {
                why: "the lease ran out".to_owned(),
            }
        }
        async fn commit<T>(&self, _: &Ticket, save: impl FnOnce() -> T) -> Result<T, LeaseLost> {
            if self.confirm_fails {
                return Err(LeaseLost {
                    why: "another host took the lock".to_owned(),
                });
            }
            Ok(save())
        }
        async fn release(self, _: Option<Collection<'_>>) {}
    }

    /// Always free: taking it hands out the guard.
    struct LeasedContest(Option<LeasedGuard>);

    impl crate::lock::Contest for LeasedContest {
        type Guard = LeasedGuard;
        fn poll(&self) -> Duration {
            Duration::from_millis(200)
        }
        async fn try_take(
            &mut self,
            _: Instant,
            _: bool,
        ) -> Result<Option<crate::lock::Taken<LeasedGuard>>, crate::lock::Refusal> {
            Ok(self.0.take().map(|guard| crate::lock::Taken {
                guard,
                left: None,
                previous: None,
            }))
        }
        fn holder(&self) -> crate::lock::Holder {
            crate::lock::Holder::from_lock(None, None)
        }
        fn judge(
            &self,
            _: &crate::lock::Holder,
            _: Option<Timestamp>,
        ) -> crate::lock::contest::Judgement {
            crate::lock::contest::Judgement::Going
        }
        async fn end(
            &mut self,
            _: &crate::lock::Holder,
            _: i64,
            _: crate::lock::contest::Step,
        ) -> Result<(), crate::lock::Refusal> {
            Ok(())
        }
    }

    impl RunLock for Leased {
        type Guard = LeasedGuard;
        type Contest = LeasedContest;
        async fn open(&self, _: &Request) -> Result<LeasedContest, crate::lock::Refusal> {
            Ok(LeasedContest(Some(LeasedGuard {
                lost_at: Instant::now() + self.lost_after,
                confirm_fails: self.confirm_fails,
            })))
        }
        async fn holder(&self) -> std::io::Result<Option<crate::lock::Holder>> {
            Ok(None)
        }
        async fn left_ticket(&self) -> std::io::Result<Option<LeftTicket>> {
            Ok(None)
        }
        fn describe(&self) -> String {
            "leased".to_owned()
        }
        fn backend(&self) -> &'static str {
            "leased"
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_whose_lease_runs_out_stops_at_once_and_asks_the_server_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let server = Scripted::ready_at(None);
        let lock = Leased {
            lost_after: Duration::from_millis(3500),
            confirm_fails: false,
        };
        let report = run(
            &config,
            &lock,
            |_| Ok(&server),
            Trigger::Manual,
            std::future::pending(),
        )
        .await;
        assert_eq!(report.exit_code(), report_common::exit::LEASE_LOST);
        assert!(
            report
                .message()
                .contains("stopped without saving anything: the lease ran out"),
            "{}",
            report.message()
        );
        assert_eq!(report.duration, Duration::from_millis(3500));
        // Polls at 0, 1, 2 and 3 s; none at 4 s.
        assert_eq!(
            server.calls(),
            [
                "request",
                "poll abc_0",
                "poll abc_0",
                "poll abc_0",
                "poll abc_0"
            ]
        );
        assert!(reports(&config).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_fetched_after_the_lease_was_lost_is_not_saved() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let server = Scripted::ready_at(Some(1));
        let lock = Leased {
            lost_after: Duration::from_secs(600),
            confirm_fails: true,
        };
        let report = run(
            &config,
            &lock,
            |_| Ok(&server),
            Trigger::Manual,
            std::future::pending(),
        )
        .await;
        assert_eq!(report.exit_code(), 79);
        assert!(
            report.message().contains("another host took the lock"),
            "{}",
            report.message()
        );
        assert!(reports(&config).is_empty());
    }
}
