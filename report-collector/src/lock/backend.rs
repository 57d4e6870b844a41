//! What a backend is to the run: a lock it opens for a request, whose holder (and left ticket)
//! it can read without taking it.

use std::future::Future;
use std::io;

use super::contest::{Contest, Refusal};
use super::guard::LockGuard;
use super::holder::{Holder, LeftTicket};
use super::request::Request;

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
    /// RFC 3339 UTC, whole seconds, in `status --json`.
    #[serde(with = "crate::time::serde::seconds")]
    pub at: crate::time::Timestamp,
    pub host: String,
    pub report: String,
}
