//! The lock the configuration names, whichever backend it is: the one constructor
//! ([`Lock::from_config`]) and the one place outside a backend's own module that matches on the
//! backend. The run, `status` and `check-config` see a [`Lock`] through [`RunLock`] only.

use std::io;
use std::time::Duration;

use report_common::ticket::Ticket;
use tokio::time::Instant;

use super::backend::{FleetCollection, RunLock};
use super::contest::{Contest, Judgement, Refusal, Step, Taken};
use super::flock::{self, FlockLock, HeldFlock};
use super::guard::{Collection, LeaseLost, LockGuard, SlotTaken};
use super::holder::{Holder, LeftTicket};
use super::postgres::contest::PgContest;
use super::postgres::{HeldPostgres, PostgresLock};
use super::request::Request;
use crate::config::{Config, LockBackend};
use crate::time::Timestamp;

/// The lock of this collector.
#[derive(Debug)]
pub enum Lock {
    Flock(FlockLock),
    Postgres(Box<PostgresLock>),
}

/// The lock while a run holds it.
#[derive(Debug)]
pub enum Guard {
    Flock(HeldFlock),
    Postgres(HeldPostgres),
}

/// The lock opened for one run's request.
#[derive(Debug)]
pub enum Contender {
    Flock(flock::Contender),
    Postgres(Box<PgContest>),
}

impl Lock {
    /// The lock `config` names. For PostgreSQL this reads the password file and the CA file,
    /// once; an error is a sentence for an operator (a configuration problem, exit 78). A run
    /// started as root calls this only once it has become the lock directory's owner (see
    /// `identity`). Connects nowhere.
    pub fn from_config(config: &Config) -> Result<Lock, String> {
        Ok(match config.lock_backend {
            LockBackend::Flock => Lock::Flock(FlockLock::new(&config.lock_file)),
            LockBackend::Postgres => Lock::Postgres(Box::new(PostgresLock::from_config(
                &config.postgres.clone().unwrap_or_default(),
            )?)),
        })
    }

    /// What `check-config` could not check of this lock, said so that nobody takes the check
    /// for more than it was.
    pub fn unchecked(&self) -> Vec<String> {
        match self {
            Lock::Flock(_) => Vec::new(),
            Lock::Postgres(lock) => lock.unchecked(),
        }
    }
}

impl RunLock for Lock {
    type Guard = Guard;
    type Contest = Contender;

    async fn open(&self, request: &Request) -> Result<Contender, Refusal> {
        Ok(match self {
            Lock::Flock(lock) => Contender::Flock(lock.open(request).await?),
            Lock::Postgres(lock) => Contender::Postgres(Box::new(lock.open(request).await?)),
        })
    }

    async fn holder(&self) -> io::Result<Option<Holder>> {
        match self {
            Lock::Flock(lock) => lock.holder().await,
            Lock::Postgres(lock) => lock.holder().await,
        }
    }

    async fn left_ticket(&self) -> io::Result<Option<LeftTicket>> {
        match self {
            Lock::Flock(lock) => lock.left_ticket().await,
            Lock::Postgres(lock) => lock.left_ticket().await,
        }
    }

    async fn fleet_last_collection(&self) -> io::Result<Option<FleetCollection>> {
        match self {
            Lock::Flock(lock) => lock.fleet_last_collection().await,
            Lock::Postgres(lock) => lock.fleet_last_collection().await,
        }
    }

    fn describe(&self) -> String {
        match self {
            Lock::Flock(lock) => lock.describe(),
            Lock::Postgres(lock) => lock.describe(),
        }
    }

    fn backend(&self) -> &'static str {
        match self {
            Lock::Flock(lock) => lock.backend(),
            Lock::Postgres(lock) => lock.backend(),
        }
    }

    fn shared(&self) -> bool {
        match self {
            Lock::Flock(lock) => lock.shared(),
            Lock::Postgres(lock) => lock.shared(),
        }
    }
}

/// A lock of one backend taken, as the configured lock's.
fn taken<G>(taken: Option<Taken<G>>, wrap: fn(G) -> Guard) -> Option<Taken<Guard>> {
    taken.map(|t| Taken {
        guard: wrap(t.guard),
        left: t.left,
        previous: t.previous,
    })
}

impl Contest for Contender {
    type Guard = Guard;

    fn poll(&self) -> Duration {
        match self {
            Contender::Flock(c) => c.poll(),
            Contender::Postgres(c) => c.poll(),
        }
    }

    async fn try_take(
        &mut self,
        bound: Instant,
        patient: bool,
    ) -> Result<Option<Taken<Guard>>, Refusal> {
        Ok(match self {
            Contender::Flock(c) => taken(c.try_take(bound, patient).await?, Guard::Flock),
            Contender::Postgres(c) => taken(c.try_take(bound, patient).await?, Guard::Postgres),
        })
    }

    fn holder(&self) -> Holder {
        match self {
            Contender::Flock(c) => c.holder(),
            Contender::Postgres(c) => c.holder(),
        }
    }

    fn judge(&self, holder: &Holder, slot: Option<Timestamp>) -> Judgement {
        match self {
            Contender::Flock(c) => c.judge(holder, slot),
            Contender::Postgres(c) => c.judge(holder, slot),
        }
    }

    async fn end(&mut self, holder: &Holder, id: i64, step: Step) -> Result<(), Refusal> {
        match self {
            Contender::Flock(c) => c.end(holder, id, step).await,
            Contender::Postgres(c) => c.end(holder, id, step).await,
        }
    }
}

impl LockGuard for Guard {
    async fn set_ticket(&self, ticket: &Ticket, requested: Timestamp) -> io::Result<()> {
        match self {
            Guard::Flock(g) => g.set_ticket(ticket, requested).await,
            Guard::Postgres(g) => g.set_ticket(ticket, requested).await,
        }
    }

    async fn finish_ticket(&self) -> io::Result<()> {
        match self {
            Guard::Flock(g) => g.finish_ticket().await,
            Guard::Postgres(g) => g.finish_ticket().await,
        }
    }

    async fn commit<T>(&self, ticket: &Ticket, save: impl FnOnce() -> T) -> Result<T, LeaseLost> {
        match self {
            Guard::Flock(g) => g.commit(ticket, save).await,
            Guard::Postgres(g) => g.commit(ticket, save).await,
        }
    }

    async fn claim_slot(&self, slot: Timestamp) -> io::Result<Result<(), SlotTaken>> {
        match self {
            Guard::Flock(g) => g.claim_slot(slot).await,
            Guard::Postgres(g) => g.claim_slot(slot).await,
        }
    }

    fn fence(&self) -> Option<report_common::fence::Fence> {
        match self {
            Guard::Flock(g) => g.fence(),
            Guard::Postgres(g) => g.fence(),
        }
    }

    async fn lease_lost(&self) -> LeaseLost {
        match self {
            Guard::Flock(g) => g.lease_lost().await,
            Guard::Postgres(g) => g.lease_lost().await,
        }
    }

    async fn release(self, collected: Option<Collection<'_>>) {
        match self {
            Guard::Flock(g) => g.release(collected).await,
            Guard::Postgres(g) => g.release(collected).await,
        }
    }
}
