//! The run lock behind one small interface: acquire it with a policy, read who holds it (and
//! the record the holder wrote), release it. The run sees only [`RunLock`] and [`LockGuard`];
//! each backend implements them in a module of its own.
//!
//! - [`policy`]: the four policies by name (a leaf the configuration imports too).
//! - [`flock`]: the local backend, an `flock` on `lock-file` (the default); it takes the lock
//!   through [`by_policy`] and the loops of [`replace`].
//! - [`postgres`]: the shared backend, a lease in a PostgreSQL row behind a session advisory
//!   lock, for collectors on several hosts. It has its own acquire loop (the lease, the slot
//!   and the generation decide there), and shares the types here with the flock.
//! - [`holder`]: the holder record every backend carries (pid, since, host, ticket and when it
//!   was requested).
//! - [`proc_locks`]: who holds an flock, read from `/proc/locks`.
//! - [`replace`]: the waiting and replacing loops over [`Contest`], used by the flock and
//!   tested on tokio's paused clock; they never signal an unconfirmed holder.

pub mod flock;
pub mod holder;
pub mod policy;
pub mod postgres;
pub mod proc_locks;
pub mod replace;

use std::fmt;
use std::future::Future;
use std::io;
use std::time::{Duration, SystemTime};

use report_common::ticket::Ticket;
use tokio::time::Instant;

use crate::config::Config;
use crate::outcome::Failure;
use crate::time::round_ms;
pub use holder::{Holder, HolderRecord};
pub use policy::Policy;
pub use replace::{Contest, Refusal};

/// What a run asks of the lock.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub policy: Policy,
    /// Under `wait`: how long to wait at most.
    pub lock_wait: Duration,
    /// Under `replace`: how long the holder has between SIGTERM and SIGKILL.
    pub replace_grace: Duration,
    /// The run's deadline: nothing about the lock goes on past it.
    pub deadline: Instant,
    /// The `deadline` setting that deadline came from, for messages.
    pub deadline_setting: Duration,
    /// The slot the run belongs to: under `replace`, a shared lock is taken from a holder of
    /// an earlier slot only.
    pub slot: Option<SystemTime>,
}

impl Request {
    /// The request of a run that started at `started`, as `config` says.
    pub fn of(config: &Config, started: Instant) -> Request {
        Request {
            policy: config.policy,
            lock_wait: config.lock_wait,
            replace_grace: config.replace_grace,
            deadline: crate::time::instant_after(started, config.deadline),
            deadline_setting: config.deadline,
            slot: None,
        }
    }
}

/// A ticket a run requested and did not see through (it was killed, cancelled, replaced, ran
/// out of its deadline, or the host went down), found in the lock's record by the next run
/// that takes the lock, so that run can resume it instead of requesting another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftTicket {
    pub ticket: Ticket,
    /// When it was requested; `None` if the record does not say (or says something unreadable).
    pub requested: Option<SystemTime>,
    /// The run that left it.
    pub by_pid: u32,
    pub host: Option<String>,
    /// The generation and host that marked it as being saved (the shared lock only): that
    /// holder was about to write its report, so the ticket counts as collected by it and is
    /// not fetched again.
    pub saving: Option<(i64, String)>,
}

impl LeftTicket {
    /// What the record of a holder that is gone says about its unfinished ticket. A ticket that
    /// fails the check is declined: said once in the journal, and counted as none, so the next
    /// record written does not carry it on.
    pub fn from_record(record: HolderRecord) -> Option<LeftTicket> {
        let ticket = crate::declined::ticket(record.ticket.as_deref()?, RECORD)
            .inspect_err(crate::declined::Declined::say)
            .ok()?;
        Some(LeftTicket {
            ticket,
            requested: record
                .ticket_requested
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339(t).ok()),
            by_pid: record.pid,
            host: record.host.filter(|host| {
                crate::declined::name(host, "host", RECORD, "it is not used")
                    .inspect_err(crate::declined::Declined::say)
                    .is_ok()
            }),
            saving: None,
        })
    }
}

/// What `VALUE_DECLINED`'s `SOURCE` says of a value read from the lock file.
pub const RECORD: &str = "the lock file's holder record";

/// A lock just taken, with the ticket its previous holder left.
pub type Taken<G> = (G, Option<LeftTicket>);

/// A lock a run holds for its whole length.
pub trait RunLock {
    type Guard: LockGuard;

    /// Takes the lock as `request.policy` says. Under `allow` nothing is taken and the guard is
    /// `None`.
    fn acquire(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<Acquired<Self::Guard>, NotAcquired>>;

    /// Who holds the lock now, without taking it; `None` when it is free.
    fn holder(&self) -> impl Future<Output = io::Result<Option<Holder>>>;

    /// The ticket a run that ended without finishing it left for the next holder, while the
    /// lock is free; `None` when there is none (or the lock is held).
    fn left_ticket(&self) -> impl Future<Output = io::Result<Option<LeftTicket>>>;

    /// The last collection of any host sharing the lock, when the lock keeps one (the flock
    /// does not: the state file says it).
    fn fleet_last_collection(&self) -> impl Future<Output = io::Result<Option<FleetCollection>>> {
        async { Ok(None) }
    }

    /// What `status` names the lock by: the lock file, or the database and lock name.
    fn describe(&self) -> String;
}

/// The last collection a shared lock keeps for the whole fleet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FleetCollection {
    /// RFC 3339 UTC.
    pub at: String,
    pub host: String,
    pub report: String,
}

/// What the run collected, for a lock that keeps the fleet's last collection.
#[derive(Debug, Clone)]
pub struct Collection<'a> {
    pub at: SystemTime,
    pub report: &'a std::path::Path,
}

/// Why a run may not go on holding the lock: its lease ran out (the PostgreSQL lock only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseLost {
    /// The sentence the journal shows.
    pub why: String,
}

/// The slot this run belongs to was already collected (or is being collected) by another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTaken {
    pub host: String,
    pub pid: u32,
}

/// The lock while a run holds it. Releasing (or dropping) it frees the lock; the record's
/// ticket stays behind for the next holder unless the ticket was finished. Its methods take
/// `&self`: the run shares the guard between its steps, which may be cancelled at any await.
pub trait LockGuard {
    /// Records the ticket this holder is collecting and when it was requested: a skipped run
    /// names it, and if this holder never finishes it, the next holder finds it
    /// ([`Acquired::left`]).
    fn set_ticket(
        &self,
        ticket: &Ticket,
        requested: SystemTime,
    ) -> impl Future<Output = io::Result<()>>;

    /// Clears the ticket from the record: its report is saved, or it was cancelled, so nobody
    /// is to resume it.
    fn finish_ticket(&self) -> impl Future<Output = io::Result<()>>;

    /// Marks, in one statement guarded by this holder's live lease, that it is about to write
    /// the report of `ticket`: the commit point of a collection across hosts. Only once it
    /// succeeded may the report be written; from then on no later holder fetches the ticket
    /// again (nor collects this run's slot), even if this run dies before it could finish the
    /// ticket. A lock of one host has nothing to mark.
    fn mark_saving(&self, _ticket: &Ticket) -> impl Future<Output = io::Result<()>> {
        async { Ok(()) }
    }
    /// Claims `slot` for this run among every host sharing the lock; `Err` names the host that
    /// claimed it first and collected it (or is saving it). A claim of an earlier holder that
    /// stopped before saving anything is taken over. A lock of one host has nothing to claim.
    fn claim_slot(
        &self,
        _slot: SystemTime,
    ) -> impl Future<Output = Result<Result<(), SlotTaken>, io::Error>> {
        async { Ok(Ok(())) }
    }

    /// Completes when the holder may no longer trust that it holds the lock. Never, for a
    /// lock the kernel holds for the process.
    fn lease_lost(&self) -> impl Future<Output = LeaseLost> {
        std::future::pending()
    }

    /// Makes sure, with a round trip, that the lock is still held right now.
    fn confirm(&self) -> impl Future<Output = Result<(), LeaseLost>> {
        async { Ok(()) }
    }

    /// Whether the holder may still act as the holder at this instant (no round trip).
    fn still_valid(&self) -> Result<(), LeaseLost> {
        Ok(())
    }

    /// Releases the lock; the record keeps an unfinished ticket and nothing else (and, for a
    /// shared lock, `collected` as the fleet's last collection).
    fn release(self, collected: Option<Collection<'_>>) -> impl Future<Output = ()>;
}

/// The result of taking the lock per policy.
#[derive(Debug)]
pub struct Acquired<G> {
    /// `None` under `allow`.
    pub guard: Option<G>,
    /// The other run this one waited for or ended, if any.
    pub previous_holder: Option<u32>,
    /// The host of that run, when the lock is shared by several hosts.
    pub previous_host: Option<String>,
    /// The ticket the previous holder left unfinished, if any; the new holder's record carries
    /// it on until the new holder finishes it or records another.
    pub left: Option<LeftTicket>,
}

impl<G> Acquired<G> {
    /// What `allow` gets from any backend: no lock, nobody before it.
    pub fn unlocked() -> Acquired<G> {
        Acquired {
            guard: None,
            previous_holder: None,
            previous_host: None,
            left: None,
        }
    }
}

/// Why the lock could not be had: which lock, what was asked, and what stood in the way. Its
/// `Display` is the sentence the journal and `status` show.
#[derive(Debug)]
pub struct NotAcquired {
    /// The lock's name in messages (the lock file's path).
    pub lock: String,
    pub request: Request,
    pub refusal: Refusal,
}

impl NotAcquired {
    /// Whether this is a skip (the lock is busy, which is what it is for) rather than a
    /// failure (something is wrong and an operator should look).
    pub fn is_skip(&self) -> bool {
        matches!(
            self.refusal,
            Refusal::Busy(_)
                | Refusal::WaitTimedOut { .. }
                | Refusal::HolderUnconfirmed(_)
                | Refusal::HolderHoldsNoDescriptor(_)
                | Refusal::NotEarlier(_)
                | Refusal::LeaseOutlastsDeadline { .. }
        )
    }

    /// The kind of failure when this is a failure, not a skip: the database out of reach is
    /// one of its own, the rest a plain failure of the run.
    pub fn failure(&self) -> Failure {
        match self.refusal {
            Refusal::Unavailable(_) => Failure::DatabaseUnavailable,
            _ => Failure::Run,
        }
    }

    /// The run that stood in the way, when the refusal names one.
    fn holder(&self) -> Option<&Holder> {
        match &self.refusal {
            Refusal::Busy(holder)
            | Refusal::WaitTimedOut { holder, .. }
            | Refusal::HolderUnconfirmed(holder)
            | Refusal::HolderHoldsNoDescriptor(holder)
            | Refusal::DeadlinePassed(holder)
            | Refusal::NotEarlier(holder)
            | Refusal::LeaseOutlastsDeadline { holder, .. } => Some(holder),
            Refusal::Signal { .. } | Refusal::Io(_) | Refusal::Unavailable(_) => None,
        }
    }

    /// The host of the run that stood in the way, for a shared lock.
    pub fn holder_host(&self) -> Option<String> {
        self.holder().and_then(|holder| holder.host.clone())
    }

    /// The other run that stood in the way, if it is known.
    pub fn holder_pid(&self) -> Option<u32> {
        match &self.refusal {
            Refusal::Signal { pid, .. } => Some(*pid),
            _ => self.holder().and_then(|holder| holder.pid),
        }
    }
}

impl fmt::Display for NotAcquired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lock = &self.lock;
        let deadline = humantime::format_duration(self.request.deadline_setting);
        match &self.refusal {
            Refusal::Busy(holder) => write!(
                f,
                "the previous run still holds the lock {lock}: {holder} (policy forbid)"
            ),
            Refusal::WaitTimedOut { holder, waited } => write!(
                f,
                "waited {} for the lock {lock}, still held by {holder} (policy wait, lock-wait {}, deadline {deadline})",
                humantime::format_duration(round_ms(*waited)),
                humantime::format_duration(self.request.lock_wait),
            ),
            Refusal::HolderUnconfirmed(holder) => write!(
                f,
                "the lock {lock} is held by {holder}, but the lock file's record does not name that process, so policy replace signalled nothing"
            ),
            Refusal::HolderHoldsNoDescriptor(holder) => write!(
                f,
                "the lock {lock} is held, but {holder}, whom /proc/locks and the lock file's record name, was not seen holding an open descriptor of it (it exited while a process that inherited the descriptor holds the lock, or this user may not look at its descriptors), so policy replace signalled nothing; find the holder with `fuser -v {lock}`"
            ),
            Refusal::DeadlinePassed(holder) => write!(
                f,
                "the run deadline ({deadline}) passed while ending the holder of {lock}, {holder}"
            ),
            Refusal::NotEarlier(holder) => write!(
                f,
                "the lock {lock} is held by {holder}, whose slot is not earlier than this run's, so policy replace left it to finish"
            ),
            Refusal::LeaseOutlastsDeadline { holder, remaining } => write!(
                f,
                "the lock {lock} was last held by {holder}, whose lease runs {} more, past this run's deadline ({deadline}); that run may still be collecting, so this one does not",
                humantime::format_duration(round_ms(*remaining))
            ),
            Refusal::Unavailable(why) => write!(f, "cannot use the lock {lock}: {why}"),
            // A path that is not a regular file: its message says what to do.
            Refusal::Io(e) if crate::files::not_regular(e).is_some() => {
                write!(f, "cannot use the lock file {lock}: {e}")
            }
            Refusal::Io(e) => write!(
                f,
                "cannot use the lock file {lock}: {e}; check that its directory exists and this user may write it"
            ),
            Refusal::Signal { pid, error } => write!(
                f,
                "cannot signal pid {pid}, the holder of {lock}: {error}; run every collector as the same user"
            ),
        }
    }
}

impl std::error::Error for NotAcquired {}

/// Takes a lock as `request.policy` says, once a backend has it open as a [`Contest`]: at
/// once if it is free, else skip (`forbid`), wait (`wait`) or end its holder (`replace`).
/// `allow` is the backend's to answer before it opens anything.
pub async fn by_policy<G, C: Contest<Held = Taken<G>>>(
    mut contest: C,
    lock: &str,
    request: Request,
) -> Result<Acquired<G>, NotAcquired> {
    let refused = |refusal| NotAcquired {
        lock: lock.to_owned(),
        request,
        refusal,
    };
    if let Some((guard, left)) = contest.try_take().map_err(|e| refused(Refusal::Io(e)))? {
        return Ok(Acquired {
            guard: Some(guard),
            previous_holder: None,
            previous_host: None,
            left,
        });
    }
    let holder = contest.holder();
    match request.policy {
        Policy::Forbid | Policy::Allow => Err(refused(Refusal::Busy(holder))),
        Policy::Wait => {
            let started = Instant::now();
            let until = request
                .deadline
                .min(crate::time::instant_after(started, request.lock_wait));
            tracing::info!(
                "lock {lock} is held by {holder}; waiting up to {} for it",
                humantime::format_duration(until - started)
            );
            let got = replace::wait_for(until, || contest.try_take())
                .await
                .map_err(|e| refused(Refusal::Io(e)))?;
            match got {
                Some((guard, left)) => Ok(Acquired {
                    guard: Some(guard),
                    previous_holder: holder.pid,
                    previous_host: None,
                    left,
                }),
                None => Err(refused(Refusal::WaitTimedOut {
                    holder: contest.holder(),
                    waited: started.elapsed(),
                })),
            }
        }
        Policy::Replace => {
            let ((guard, left), previous_holder) =
                replace::replace(contest, request.replace_grace, request.deadline)
                    .await
                    .map_err(refused)?;
            Ok(Acquired {
                guard: Some(guard),
                previous_holder,
                previous_host: None,
                left,
            })
        }
    }
}
