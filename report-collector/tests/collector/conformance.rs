//! One suite for every lock backend: what a run relies on from its lock, whichever one the
//! configuration names, checked on the real thing (a lock file and the kernel's flock; a
//! PostgreSQL cluster started by the tests). The lock is made as a run makes it
//! (`Lock::from_config`) and taken through `lock::acquire`; holders that must be killed or
//! ended are real collector processes.
//!
//! Each test names the capability it needs ([`Needs`]); a backend without it runs the rest.
//! A new backend is one more [`Backend`] variant and one more `conformance!` line at the end.

use std::cell::Cell;
use std::process::Child;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use report_collector::config::Source;
use report_collector::lock::{self, Lock, LockGuard, Policy, Refusal, Request, RunLock};
use report_collector::time::Timestamp;
use tokio::time::Instant;

use super::util::cluster::{Cluster, Fleet};
use super::util::{ApiServer, PATIENCE, Setup, finish_within, signal, timing_guard};

/// The lease of the PostgreSQL backend in this suite: short, so a killed holder's is waited
/// out quickly.
const LEASE: Duration = Duration::from_secs(3);

/// What a test needs of a backend beyond taking, waiting, replacing and releasing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// A lease a holder can lose while it lives (its session ended, a partition).
    Lease,
    /// A fencing token with every acquisition.
    Token,
}

/// A backend under test.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Flock,
    Postgres,
}

impl Backend {
    fn has(self, needs: Needs) -> bool {
        match self {
            Backend::Flock => matches!(needs, Needs::Token),
            Backend::Postgres => matches!(needs, Needs::Lease | Needs::Token),
        }
    }

    /// A collector's configuration on a lock of this backend that nothing else uses (`name`
    /// tells tests apart), against `server_url`.
    fn site(self, name: &str, server_url: &str) -> Site {
        match self {
            Backend::Flock => Site {
                setup: Setup::new(server_url, &[("deadline", "\"40s\"")]),
                fleet: None,
            },
            Backend::Postgres => {
                let fleet = Cluster::shared().fleet(&format!("conformance_{name}"));
                let setup = Setup::new(
                    server_url,
                    &[("lock-backend", "\"postgres\""), ("deadline", "\"40s\"")],
                );
                let table = format!(
                    "\n[postgres]\nconnect = {:?}\nhost-name = \"host-a\"\nlock-name = {name:?}\nlease = \"{}s\"\ntls = \"disable\"\n",
                    fleet.connect(),
                    LEASE.as_secs()
                );
                let mut text = std::fs::read_to_string(&setup.config).unwrap();
                text.push_str(&table);
                std::fs::write(&setup.config, text).unwrap();
                Site {
                    setup,
                    fleet: Some(fleet),
                }
            }
        }
    }
}

/// One lock of one backend, as a run's configuration names it.
struct Site {
    setup: Setup,
    fleet: Option<Fleet>,
}

impl Site {
    /// The lock, made as a run makes it.
    fn lock(&self) -> Lock {
        let loaded = Source {
            file: Some(self.setup.config.clone()),
            ..Source::default()
        }
        .load()
        .unwrap();
        Lock::from_config(&loaded.config).unwrap()
    }

    /// A collector run by hand on this lock, as its own process.
    fn spawn_run(&self) -> Child {
        self.setup.spawn(&["run", "--trigger", "manual"])
    }

    /// Ends the database session of the lock's holder from outside, as an operator or a
    /// partition would (a backend with a lease only).
    fn end_holders_session(&self, name: &str) {
        let fleet = self.fleet.as_ref().expect("a backend with a lease");
        fleet.psql(&format!(
            "SELECT pg_terminate_backend(session) FROM report_collector.report_collector_lock WHERE name = '{name}'"
        ));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn request(policy: Policy) -> Request {
    Request {
        policy,
        lock_wait: Duration::from_secs(10),
        replace_grace: Duration::from_secs(2),
        deadline: Instant::now() + Duration::from_secs(30),
        deadline_setting: Duration::from_secs(30),
        slot: None,
    }
}

/// Waits until the lock names `pid` as its holder, with a ticket recorded.
async fn holder_with_ticket(lock: &Lock, pid: u32) -> String {
    let until = Instant::now() + PATIENCE;
    loop {
        if let Ok(Some(holder)) = lock.holder().await
            && holder.pid == Some(pid)
            && let Some(ticket) = holder.ticket
        {
            return ticket.as_str().to_owned();
        }
        assert!(
            Instant::now() < until,
            "pid {pid} never held the lock with a ticket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A crowd of runs at once: exactly one holds the lock, every other is told it is busy.
fn a_crowd_gets_exactly_one_holder(backend: Backend) {
    let _timing = timing_guard();
    let site = backend.site("crowd", &ApiServer::fast().url);
    let lock = Rc::new(site.lock());
    let local = tokio::task::LocalSet::new();
    runtime().block_on(local.run_until(async {
        // Eight runs at once, each with its own lock file description or database session.
        let contenders: Vec<_> = (0..8)
            .map(|_| {
                let lock = Rc::clone(&lock);
                tokio::task::spawn_local(async move {
                    lock::acquire(&*lock, request(Policy::Forbid)).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for contender in contenders {
            results.push(contender.await.unwrap());
        }
        let held = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(held, 1, "{results:?}");
        for refused in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(refused.is_skip(), "{refused}");
            assert!(matches!(refused.refusal, Refusal::Busy(_)), "{refused}");
        }
        for acquired in results.into_iter().flatten() {
            acquired.guard.unwrap().release(None).await;
        }
    }));
}

/// Under `wait`: one holder at a time; a waiter gets the lock once the holder lets go, and
/// nobody waits past `lock-wait` or the run's deadline.
fn wait_holds_one_at_a_time_and_never_past_its_bounds(backend: Backend) {
    let _timing = timing_guard();
    let site = backend.site("wait", &ApiServer::fast().url);
    let lock = site.lock();
    runtime().block_on(async {
        let first = lock::acquire(&lock, request(Policy::Forbid)).await.unwrap();

        for (lock_wait, deadline) in [(1, 30), (30, 1)] {
            let started = Instant::now();
            let waited = lock::acquire(
                &lock,
                Request {
                    lock_wait: Duration::from_secs(lock_wait),
                    deadline: started + Duration::from_secs(deadline),
                    ..request(Policy::Wait)
                },
            )
            .await
            .unwrap_err();
            let took = started.elapsed();
            assert!(
                matches!(waited.refusal, Refusal::WaitTimedOut { .. }),
                "{waited}"
            );
            assert!(waited.is_skip());
            let bound = Duration::from_secs(lock_wait.min(deadline));
            assert!(took >= bound, "gave up after {took:?}, before {bound:?}");
            assert!(
                took < bound + Duration::from_secs(1),
                "waited {took:?}, past {bound:?}"
            );
        }

        // The holder lets go 500 ms into a wait: the waiter gets the lock, only then.
        let releasing = Rc::new(Cell::new(false));
        let guard = first.guard.unwrap();
        let flag = Rc::clone(&releasing);
        let let_go = async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            flag.set(true);
            guard.release(None).await;
        };
        let waiter = async {
            let got = lock::acquire(&lock, request(Policy::Wait)).await.unwrap();
            assert!(releasing.get(), "the waiter got the lock while it was held");
            got
        };
        let ((), second) = tokio::join!(let_go, waiter);
        second.guard.unwrap().release(None).await;
    });
}

/// Under `replace`, a holder the backend cannot confirm as one to end (the flock: this very
/// process; across hosts: a holder of a slot not earlier) is left holding.
fn replace_leaves_a_holder_it_cannot_confirm(backend: Backend) {
    let site = backend.site("unconfirmed", &ApiServer::fast().url);
    let lock = site.lock();
    runtime().block_on(async {
        let held = lock::acquire(&lock, request(Policy::Forbid)).await.unwrap();
        let refused = lock::acquire(
            &lock,
            Request {
                replace_grace: Duration::from_millis(300),
                ..request(Policy::Replace)
            },
        )
        .await
        .unwrap_err();
        assert!(refused.is_skip(), "{refused}");
        let holder = lock.holder().await.unwrap().expect("still held");
        assert_eq!(holder.pid, Some(std::process::id()));
        held.guard.unwrap().release(None).await;
    });
}

/// Under `replace`, a confirmed holder of an earlier slot (a real collector run) is ended and
/// the lock taken from it.
fn replace_ends_a_confirmed_holder_and_takes_the_lock(backend: Backend) {
    let _timing = timing_guard();
    let slow = ApiServer::slow(Duration::from_secs(60));
    let site = backend.site("replace", &slow.url);
    let lock = site.lock();
    let child = site.spawn_run();
    let pid = child.id();
    runtime().block_on(async {
        holder_with_ticket(&lock, pid).await;
        let acquired = lock::acquire(
            &lock,
            Request {
                slot: Some(Timestamp::from(
                    SystemTime::now() + Duration::from_secs(86_400),
                )),
                ..request(Policy::Replace)
            },
        )
        .await
        .unwrap();
        assert_eq!(acquired.previous_holder, Some(pid));
        let holder = lock.holder().await.unwrap().expect("held by this run");
        assert_eq!(holder.pid, Some(std::process::id()));
        acquired.guard.unwrap().release(None).await;
    });
    // Ended, not left running beside the new holder.
    finish_within(child, PATIENCE);
}

/// A holder killed outright leaves its ticket to the next holder, who is handed it.
fn a_killed_holders_ticket_is_handed_to_the_next(backend: Backend) {
    let slow = ApiServer::slow(Duration::from_secs(60));
    let site = backend.site("killed", &slow.url);
    let lock = site.lock();
    let child = site.spawn_run();
    let pid = child.id();
    runtime().block_on(async {
        let ticket = holder_with_ticket(&lock, pid).await;
        signal(&child, Signal::SIGKILL);
        let acquired = lock::acquire(&lock, request(Policy::Wait)).await.unwrap();
        let left = acquired.left.as_ref().expect("the killed holder's ticket");
        assert_eq!(left.ticket, ticket.as_str());
        assert_eq!(left.by_pid, pid);
        acquired.guard.unwrap().release(None).await;
    });
    finish_within(child, PATIENCE);
}

/// The lock is free again however a run lets go of it: released, its guard dropped (a run
/// cancelled while it held the lock), or cancelled while it still waited for it.
fn the_lock_is_free_again_on_every_way_out(backend: Backend) {
    let site = backend.site("free", &ApiServer::fast().url);
    let lock = site.lock();
    runtime().block_on(async {
        let held = lock::acquire(&lock, request(Policy::Forbid)).await.unwrap();
        held.guard.unwrap().release(None).await;
        assert_eq!(lock.holder().await.unwrap(), None);

        // Dropped without a release: free at once, or once its lease ran out.
        let held = lock::acquire(&lock, request(Policy::Forbid)).await.unwrap();
        drop(held);
        let again = lock::acquire(&lock, request(Policy::Wait)).await.unwrap();

        // A waiter cancelled mid-wait holds nothing afterwards.
        let cancelled = tokio::time::timeout(
            Duration::from_millis(300),
            lock::acquire(&lock, request(Policy::Wait)),
        )
        .await;
        assert!(
            cancelled.is_err(),
            "the lock was held: the waiter could not get it"
        );
        again.guard.unwrap().release(None).await;
        let last = lock::acquire(&lock, request(Policy::Forbid)).await.unwrap();
        last.guard.unwrap().release(None).await;
    });
}

/// `status` sees the holder while the lock is held, and nobody once it is released.
fn status_sees_the_holder(backend: Backend) {
    let site = backend.site("status", &ApiServer::fast().url);
    let lock = site.lock();
    runtime().block_on(async {
        // (A database lock has no tables to look at before its first run made them.)
        let held = lock::acquire(&lock, request(Policy::Forbid)).await.unwrap();
        let holder = lock.holder().await.unwrap().expect("held");
        assert_eq!(holder.pid, Some(std::process::id()));
        assert!(holder.confirmed, "{holder:?}");
        held.guard.unwrap().release(None).await;
        assert_eq!(lock.holder().await.unwrap(), None);
    });
}

/// Every acquisition's token is greater than every earlier one's.
fn the_token_only_increases(backend: Backend) {
    assert!(backend.has(Needs::Token), "{backend:?} hands out no token");
    let site = backend.site("token", &ApiServer::fast().url);
    let lock = site.lock();
    runtime().block_on(async {
        let mut last = None;
        for _ in 0..4 {
            let guard = lock::acquire(&lock, request(Policy::Forbid))
                .await
                .unwrap()
                .guard
                .unwrap();
            let token = guard.token().expect("a token");
            assert!(Some(token) > last, "{token} after {last:?}");
            last = Some(token);
            guard.release(None).await;
        }
    });
}

/// A holder whose lease is ended from outside learns it within the lease, and commits
/// nothing after: its save is never called.
fn a_lost_lease_stops_the_holder_before_it_commits(backend: Backend) {
    assert!(backend.has(Needs::Lease), "{backend:?} has no lease");
    let site = backend.site("lease", &ApiServer::fast().url);
    let lock = site.lock();
    runtime().block_on(async {
        let guard = lock::acquire(&lock, request(Policy::Forbid))
            .await
            .unwrap()
            .guard
            .unwrap();
        site.end_holders_session("lease");
        let lost = tokio::time::timeout(LEASE + Duration::from_secs(2), guard.lease_lost())
            .await
            .expect("the lost lease is noticed within the lease");
        assert!(!lost.why.is_empty());
        let ticket = report_common::ticket::Ticket::new("abc_1").unwrap();
        let saved = Cell::new(false);
        let committed = guard.commit(&ticket, || saved.set(true)).await;
        assert!(committed.is_err(), "committed after the lease was lost");
        assert!(!saved.get(), "saved after the lease was lost");
        guard.release(None).await;
    });
}

/// The tests of the suite on one backend, as `#[test]`s, each carrying `$attr` if given.
macro_rules! tests {
    ($backend:expr, [$($test:ident),* $(,)?]) => {
        $(
            #[test]
            fn $test() {
                super::$test($backend)
            }
        )*
    };
    ($backend:expr, [$($test:ident),* $(,)?], #[$attr:meta]) => {
        $(
            #[test]
            #[$attr]
            fn $test() {
                super::$test($backend)
            }
        )*
    };
}

/// The suite on one backend: every test that needs nothing more, then those that need a
/// capability the backend has; `$ignore` is how a plain `cargo test` lists them when they need
/// what it does not have (under `make test` they run).
macro_rules! conformance {
    ($name:ident, $backend:expr, [$($capable:ident),* $(,)?] $(, #[$ignore:meta])?) => {
        mod $name {

            tests!(
                $backend,
                [
                    a_crowd_gets_exactly_one_holder,
                    wait_holds_one_at_a_time_and_never_past_its_bounds,
                    replace_leaves_a_holder_it_cannot_confirm,
                    replace_ends_a_confirmed_holder_and_takes_the_lock,
                    a_killed_holders_ticket_is_handed_to_the_next,
                    the_lock_is_free_again_on_every_way_out,
                    status_sees_the_holder,
                ]
                $(, #[$ignore])?
            );
            tests!($backend, [$($capable),*] $(, #[$ignore])?);
        }
    };
}

conformance!(flock, super::Backend::Flock, [the_token_only_increases]);
conformance!(
    postgres,
    super::Backend::Postgres,
    [the_token_only_increases, a_lost_lease_stops_the_holder_before_it_commits],
    #[ignore = "needs root and PostgreSQL 15 (a cluster of its own): make test runs it"]
);
