//! What a run does with the lock it holds: record its ticket, commit its report at most once,
//! claim its slot, learn that it lost the lock, release it.

use std::future::Future;
use std::io;

use report_common::fence::Fence;
use report_common::ticket::Ticket;

use super::token::Token;
use crate::time::Timestamp;

/// What the run collected, for a lock that keeps the fleet's last collection.
#[derive(Debug, Clone)]
pub struct Collection<'a> {
    pub at: Timestamp,
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
        requested: Timestamp,
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
        _slot: Timestamp,
    ) -> impl Future<Output = Result<Result<(), SlotTaken>, io::Error>> {
        async { Ok(Ok(())) }
    }

    /// The lock's id and the fencing token of this acquisition, which every request to the
    /// report server carries: the token is greater than that of every earlier holder of the
    /// lock, so the server refuses a holder that was ended ([`Token`]: the flock's count in
    /// its token file, the PostgreSQL `generation` in the database's timeline). `None` for a
    /// lock that keeps no count.
    fn fence(&self) -> Option<Fence> {
        None
    }

    /// The token of [`LockGuard::fence`].
    fn token(&self) -> Option<Token> {
        self.fence().map(|fence| fence.token)
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
