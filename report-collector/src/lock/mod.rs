//! The run lock: the policies once ([`policy`]) over a narrow contest every backend answers
//! ([`contest`]), and what a run does with the lock it holds ([`LockGuard`]). Nothing outside
//! this module knows which backend a run uses: [`Lock::from_config`] is the one constructor
//! ([`configured`]).
//!
//! - [`policy`]: the four policies, their names and what each does, over [`contest::Contest`].
//! - [`contest`]: what a backend answers (take, who holds, may this holder be ended, end it)
//!   and the refusals.
//! - [`flock`]: the local backend, an `flock` on `lock-file` (the default).
//! - [`postgres`]: the shared backend, a lease in a PostgreSQL row behind a session advisory
//!   lock, for collectors on several hosts.
//! - [`holder`]: the holder record every backend carries (pid, since, host, ticket and when it
//!   was requested).
//! - [`proc_locks`]: who holds an flock, read from `/proc/locks`.
//!
//! A backend is a module that implements [`RunLock`] (open the lock for a request, read who
//! holds it), [`contest::Contest`] and [`LockGuard`], plus a variant of [`Lock`]; the crate
//! README's "How the collector is built" says what each must guarantee, and
//! `tests/collector/conformance.rs` runs the same suite on every backend.

pub mod configured;
pub mod contest;
pub mod flock;
pub mod holder;
pub mod policy;
pub mod postgres;
pub mod proc_locks;

use std::fmt;
use std::future::Future;
use std::io;
use std::time::{Duration, SystemTime};

use report_common::ticket::Ticket;
use tokio::time::Instant;

use crate::config::Config;
pub use configured::Lock;
pub use contest::{Contest, Refusal, Taken};
pub use holder::{Holder, HolderRecord};
pub use policy::Policy;

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

/// A lock a run holds for its whole length.
pub trait RunLock {
    type Guard: LockGuard;
    type Contest: Contest<Guard = Self::Guard>;

    /// Opens the lock for one run's `request` (the lock file, a database session); nothing is
    /// taken yet: [`acquire`] takes it as the policy says.
    fn open(&self, request: &Request) -> impl Future<Output = Result<Self::Contest, Refusal>>;

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

    /// The backend's name, as `lock-backend` and `status --json` write it.
    fn backend(&self) -> &'static str;

    /// Whether collectors on several hosts share the lock (its holders are named with their
    /// host; a lock file on this host says nothing).
    fn shared(&self) -> bool {
        false
    }
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

    /// Commits the report of `ticket`: makes sure this run still holds the lock (a round trip,
    /// for a lock with a lease), marks the ticket as being saved where other hosts share the
    /// lock (the commit point across hosts: from then on no later holder fetches it again, even
    /// if this run dies before finishing it), then calls `save`, once. `Err`: the lock was
    /// lost, and `save` was not called. The residual the README names: a run that dies between
    /// the mark and the end of `save` leaves the ticket marked and no report.
    fn commit<T>(
        &self,
        ticket: &Ticket,
        save: impl FnOnce() -> T,
    ) -> impl Future<Output = Result<T, LeaseLost>>;

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
        self.refusal.is_skip()
    }

    /// Whether the lock's store (the database) cannot be reached or refused this collector.
    pub fn unreachable(&self) -> bool {
        self.refusal.unreachable()
    }

    /// The host of the run that stood in the way, for a shared lock.
    pub fn holder_host(&self) -> Option<String> {
        self.refusal.holder().and_then(|holder| holder.host.clone())
    }

    /// The other run that stood in the way, if it is known.
    pub fn holder_pid(&self) -> Option<u32> {
        self.refusal.holder_pid()
    }
}

impl fmt::Display for NotAcquired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.refusal.describe(&self.lock, &self.request, f)
    }
}

impl std::error::Error for NotAcquired {}

/// Takes `lock` as `request.policy` says ([`policy::acquire`]); under `allow` nothing is
/// opened or taken and the guard is `None`.
pub async fn acquire<L: RunLock>(
    lock: &L,
    request: Request,
) -> Result<Acquired<L::Guard>, NotAcquired> {
    if !request.policy.locks() {
        return Ok(Acquired::unlocked());
    }
    let name = lock.describe();
    let refused = |refusal| NotAcquired {
        lock: name.clone(),
        request,
        refusal,
    };
    let mut contest = lock.open(&request).await.map_err(refused)?;
    policy::acquire(&mut contest, &name, &request)
        .await
        .map_err(refused)
}
