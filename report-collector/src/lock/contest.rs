//! What a lock backend answers, and nothing more: the policies ([`super::policy`]) are written
//! once over it. A backend takes the lock if it is free, says who holds it, judges whether a
//! holder may be ended and ends it; how long it waits between two looks is its own (the flock
//! looks every 50 ms, PostgreSQL every 200 ms, a round trip each).
//!
//! What stands in the way is a [`Refusal`]: the three the policies themselves give, or one of
//! the backend's own ([`BackendRefusal`]), each with its own sentence (a PostgreSQL refusal
//! never names `/proc/locks`).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::holder::{Holder, LeftTicket};
use super::request::Request;
use crate::time::{Timestamp, round_ms};

/// A lock just taken.
#[derive(Debug)]
pub struct Taken<G> {
    pub guard: G,
    /// The ticket the previous holder left unfinished.
    pub left: Option<LeftTicket>,
    /// A holder the backend itself saw off on the way (PostgreSQL: a stale session it ended, a
    /// lease it waited out), when the policy met none.
    pub previous: Option<Holder>,
}

/// How a holder is ended under `replace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Asked to go (SIGTERM; PostgreSQL ends its session, which is final).
    Ask,
    /// `replace-grace` after asking, it still holds the lock (SIGKILL; PostgreSQL has nothing
    /// more to do: its lease is waited out by taking the lock).
    Force,
}

/// A backend's answer to "may this holder be ended?", under `replace`.
#[derive(Debug)]
pub enum Judgement {
    /// Yes. `id` names what is ended (a pid, a database session): a different one is a
    /// different holder, asked anew.
    Endable(i64),
    /// Not known to be the holder (no record yet, a pid the lock outlived): it gets
    /// `replace-grace` to show itself, and is never ended meanwhile; then the run gives up
    /// with this refusal.
    Unconfirmed(Box<dyn BackendRefusal>),
    /// Never ended by this run (across hosts: a holder whose slot is not earlier), unless
    /// this run already ended another.
    Spared(Box<dyn BackendRefusal>),
    /// Nothing to end: the holder is on its way out (its session is gone, its lease runs).
    Going,
}

/// The lock of one backend, opened for one run's request: what the policies contend through.
pub trait Contest {
    type Guard;

    /// How long a waiting run sleeps between two looks.
    fn poll(&self) -> Duration;

    /// Takes the lock if it is free (`Ok(None)`: it is held). `patient`: the run is waiting
    /// anyway, so trouble a backend can wait out (a dropped database connection) is waited out
    /// until `bound` rather than refused.
    fn try_take(
        &mut self,
        bound: Instant,
        patient: bool,
    ) -> impl Future<Output = Result<Option<Taken<Self::Guard>>, Refusal>>;

    /// Who holds the lock, as the last look found it.
    fn holder(&self) -> Holder;

    /// Whether `holder` may be ended for a run of `slot` (checked right before every step).
    fn judge(&self, holder: &Holder, slot: Option<Timestamp>) -> Judgement;

    /// Ends the holder judged [`Judgement::Endable`] with `id`.
    fn end(
        &mut self,
        holder: &Holder,
        id: i64,
        step: Step,
    ) -> impl Future<Output = Result<(), Refusal>>;
}

/// Why the lock could not be had.
#[derive(Debug)]
pub enum Refusal {
    /// Busy under `forbid`.
    Busy(Holder),
    /// `lock-wait` (or the run deadline) passed under `wait`.
    WaitTimedOut { holder: Holder, waited: Duration },
    /// The run deadline passed while ending the holder under `replace`.
    DeadlinePassed(Holder),
    /// What the backend said.
    Backend(Box<dyn BackendRefusal>),
}

impl<R: BackendRefusal + 'static> From<R> for Refusal {
    fn from(refusal: R) -> Refusal {
        Refusal::Backend(Box::new(refusal))
    }
}

/// A refusal of one backend: its own kinds, its own sentences.
pub trait BackendRefusal: fmt::Debug {
    /// A skip (the lock does what it is for) rather than a failure an operator should see to.
    fn is_skip(&self) -> bool;
    /// Whether the lock's store (the database) cannot be reached or refused this collector:
    /// a kind of failure of its own (exit 69), not a failed run.
    fn unreachable(&self) -> bool {
        false
    }
    /// The run that stood in the way, when known.
    fn holder(&self) -> Option<&Holder>;
    /// The pid of the run that stood in the way, when known.
    fn holder_pid(&self) -> Option<u32> {
        self.holder().and_then(|h| h.pid)
    }
    /// The sentence: `lock` is the lock's name, `request` what the run asked.
    fn describe(&self, lock: &str, request: &Request, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

impl Refusal {
    pub fn is_skip(&self) -> bool {
        match self {
            Refusal::Busy(_) | Refusal::WaitTimedOut { .. } => true,
            Refusal::DeadlinePassed(_) => false,
            Refusal::Backend(backend) => backend.is_skip(),
        }
    }

    pub fn unreachable(&self) -> bool {
        matches!(self, Refusal::Backend(backend) if backend.unreachable())
    }

    pub fn holder(&self) -> Option<&Holder> {
        match self {
            Refusal::Busy(holder)
            | Refusal::WaitTimedOut { holder, .. }
            | Refusal::DeadlinePassed(holder) => Some(holder),
            Refusal::Backend(backend) => backend.holder(),
        }
    }

    pub fn holder_pid(&self) -> Option<u32> {
        match self {
            Refusal::Backend(backend) => backend.holder_pid(),
            _ => self.holder().and_then(|h| h.pid),
        }
    }

    /// The sentence the journal and `status` show.
    pub fn describe(
        &self,
        lock: &str,
        request: &Request,
        f: &mut fmt::Formatter<'_>,
    ) -> fmt::Result {
        let deadline = humantime::format_duration(request.deadline_setting);
        match self {
            Refusal::Busy(holder) => write!(
                f,
                "the previous run still holds the lock {lock}: {holder} (policy forbid)"
            ),
            Refusal::WaitTimedOut { holder, waited } => write!(
                f,
                "waited {} for the lock {lock}, still held by {holder} (policy wait, lock-wait {}, deadline {deadline})",
                humantime::format_duration(round_ms(*waited)),
                humantime::format_duration(request.lock_wait),
            ),
            Refusal::DeadlinePassed(holder) => write!(
                f,
                "the run deadline ({deadline}) passed while ending the holder of {lock}, {holder}"
            ),
            Refusal::Backend(backend) => backend.describe(lock, request, f),
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
