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
//! - [`token`]: the fencing token each acquisition yields, which only ever increases.
//!
//! A backend is a module that implements [`RunLock`] (open the lock for a request, read who
//! holds it), [`contest::Contest`] and [`LockGuard`], plus a variant of [`Lock`]; the crate
//! README's "How the collector is built" says what each must guarantee, and
//! `tests/collector/conformance.rs` runs the same suite on every backend.

pub mod backend;
pub mod configured;
pub mod contest;
pub mod flock;
pub mod guard;
pub mod holder;
pub mod policy;
pub mod postgres;
pub mod proc_locks;
pub mod request;
pub mod token;

pub use backend::{FleetCollection, RunLock};
pub use configured::Lock;
pub use contest::{Contest, NotAcquired, Refusal, Taken};
pub use guard::{Collection, LeaseLost, LockGuard, SlotTaken};
pub use holder::{Holder, HolderRecord, LeftTicket};
pub use policy::Policy;
pub use request::{Acquired, Request};
pub use token::Token;

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
    policy::acquire::acquire(&mut contest, &name, &request)
        .await
        .map_err(refused)
}
