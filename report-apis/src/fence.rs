//! The fence: each lock's mark (the highest token seen for it), and the rules that refuse a
//! request of a holder whose lock has since been taken by another.
//!
//! A collector takes a lock (a flock on one host, a PostgreSQL lease across hosts) before it
//! asks for a ticket, and sends the lock's id and the token of its acquisition with each
//! request ([`report_common::fence`]). A holder paused past its lease (SIGSTOP, a frozen VM, a
//! slow network) may still send a request after another host took the lock over: without the
//! fence that is a second pending ticket on a slow server, or a cancel of the ticket the new
//! holder resumes. With it, a token below its lock's mark is refused (409) on every route, so
//! a stale holder is acted on in no way.
//!
//! Locks are told apart by id alone: tokens of different ids are never compared, so a
//! recreated lock starts a fresh mark. A raised mark is written to the state file
//! ([`marks_file`]) before the request that raised it is answered, so no acknowledged mark is
//! lost to a restart; a write that fails refuses the request (503) and raises nothing.
//!
//! A lock has at most one pending ticket: a ticket request with an accepted fence, while the
//! lock's ticket is still pending, is answered with that same ticket. The server is already
//! generating it, so handing it back keeps the load where it is and the work done; a holder
//! that stopped between the ticket's issue and recording it in its lock leaves a ticket nobody
//! knows, and dropping it would throw away generation already done on a slow server.
//!
//! The number of locks is bounded (`limits.max-locks`): a new lock past it is refused (503),
//! never let in by forgetting another's mark. Refusing fails closed and loudly (the fleet's
//! runs fail and alerts fire); forgetting a mark would silently unfence that lock.
//!
//! The rules are one pure function, [`decide`]; [`Fences`] applies them under one gate, so a
//! lock's check, its raise and its ticket happen as one step.

pub mod marks_file;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use report_common::fence::{Fence, LockName, Token};
use report_common::message_id;
use tokio::time::Instant;
use uuid::Uuid;

use crate::config::Config;
use crate::metrics::{LockLabels, Metrics};
use crate::tickets::{TicketFence, Tickets};

pub use marks_file::MarksFileError;

/// How long a request waits for its raised mark to be on disk. A local disk takes
/// milliseconds; one that has not answered in 5 s may never answer, and the request is refused
/// (503) rather than held.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What one lock's fence holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// The name last seen with the lock's id: a label for people, never compared.
    pub name: LockName,
    /// The highest token seen for the lock.
    pub mark: Token,
    /// When the mark was last raised (wall clock, so that it means something after a restart).
    pub raised_at: SystemTime,
    /// The ticket (id, offset) last issued under the lock's fence; pending in [`Tickets`] or
    /// not, which is checked when it matters. Not kept across a restart, as tickets are not.
    pub pending: Option<(Uuid, u64)>,
}

/// What a request asks of the server, as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `GET /request_report`.
    Request,
    /// `GET /get_report/{ticket}`.
    Fetch,
    /// `DELETE /get_report/{ticket}` of a ticket issued under the fence of lock `issued_under`
    /// (`None`: not held, or issued without a fence).
    Cancel { issued_under: Option<Uuid> },
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 409: the token is below the lock's mark; another holder took the lock since.
    Stale {
        lock: LockName,
        token: Token,
        mark: Token,
    },
    /// 409: a cancel of a ticket issued under another lock's fence.
    OtherLock { lock: LockName },
    /// 409: a cancel without a fence of a ticket issued under one.
    TokenlessCancel,
    /// 503: a new lock when `limits.max-locks` locks are kept.
    MaxLocks { max_locks: usize },
    /// 503: the raised mark could not be written to the state file, so it was not raised.
    NotRecorded,
}

/// The rules in force: `[fence] enforce`, `limits.max-locks`, and how many locks are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub enforce: bool,
    pub max_locks: usize,
    pub locks: usize,
}

/// What the rules say of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// As before the fence existed: nothing checked, kept or sent back.
    Unfenced,
    /// Refused before anything is kept.
    Refuse(Refusal),
    /// The fence is enforced: record the token as the lock's mark first when `raise` (a new
    /// lock, or a token above the mark), then refuse with `then`, or go on.
    Enforce { raise: bool, then: Option<Refusal> },
}

/// The rules: `mark` is the lock's mark when the server keeps one for `fence`'s id.
pub fn decide(
    rules: Rules,
    mark: Option<Token>,
    fence: Option<&Fence>,
    action: Action,
) -> Decision {
    let Some(fence) = fence.filter(|_| rules.enforce) else {
        // The original client never sends a fence; only a fenced ticket is its holder's to
        // cancel.
        return match action {
            Action::Cancel {
                issued_under: Some(_),
            } if rules.enforce => Decision::Refuse(Refusal::TokenlessCancel),
            _ => Decision::Unfenced,
        };
    };
    match mark {
        Some(mark) if fence.token < mark => {
            return Decision::Refuse(Refusal::Stale {
                lock: fence.lock.clone(),
                token: fence.token,
                mark,
            });
        }
        None if rules.locks >= rules.max_locks => {
            return Decision::Refuse(Refusal::MaxLocks {
                max_locks: rules.max_locks,
            });
        }
        _ => {}
    }
    let then = match action {
        Action::Cancel {
            issued_under: Some(lock),
        } if lock != fence.id => Some(Refusal::OtherLock {
            lock: fence.lock.clone(),
        }),
        _ => None,
    };
    Decision::Enforce {
        raise: mark.is_none_or(|mark| fence.token > mark),
        then,
    }
}

/// A request's fence refused, with the lock's mark after the request when the server keeps
/// one (sent back as `Report-Fence-Mark`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub refusal: Refusal,
    pub mark: Option<Token>,
}

/// What can change on a reload.
#[derive(Debug)]
struct State {
    locks: HashMap<Uuid, Lock>,
    enforce: bool,
    max_locks: usize,
}

/// Every lock's fence, shared by all handlers.
#[derive(Debug)]
pub struct Fences {
    /// One enforced request at a time, held across the state file's write and the ticket's
    /// issue, so that a lock's check, raise and pending ticket are one step.
    gate: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    file: PathBuf,
    /// Set while a write's blocking task has not returned, timed out or not: a further write
    /// is refused rather than run beside it, where the older one could land last.
    writing: Arc<AtomicBool>,
    /// Set after a write failed, so that the failure is logged once, not per request.
    write_failing: AtomicBool,
    metrics: Arc<Metrics>,
}

/// A request the fence lets through; holds the gate while it lives (see [`Fences::gate`]).
#[derive(Debug)]
pub struct Admitted<'a> {
    fences: &'a Fences,
    /// The lock and token, when the fence was enforced.
    fence: Option<(Uuid, Token)>,
    mark: Option<Token>,
    _gate: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl Fences {
    /// The fences of `config`, with the marks of `locks` (read from the state file at start).
    pub fn new(config: &Config, locks: HashMap<Uuid, Lock>, metrics: Arc<Metrics>) -> Self {
        let fences = Fences {
            gate: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                locks,
                enforce: config.fence.enforce,
                max_locks: config.limits.max_locks,
            }),
            file: config.fence.state_file.clone(),
            writing: Arc::new(AtomicBool::new(false)),
            write_failing: AtomicBool::new(false),
            metrics,
        };
        {
            let state = fences.state();
            for (id, lock) in &state.locks {
                fences.publish(*id, lock);
            }
            fences.publish_count(&state);
        }
        fences
    }

    /// Reads the marks of `config`'s state file (see [`marks_file::load`]) and keeps them.
    pub fn load(config: &Config, metrics: Arc<Metrics>) -> Result<Self, MarksFileError> {
        let locks = marks_file::load(&config.fence.state_file, config.limits.max_locks)?;
        tracing::info!(
            "fence marks of {} locks read from {}",
            locks.len(),
            config.fence.state_file.display()
        );
        Ok(Self::new(config, locks, metrics))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a reloaded configuration: `enforce` and `max-locks` from now on. No mark is
    /// dropped, also under a lower `max-locks`.
    pub fn reconfigure(&self, config: &Config) {
        let mut state = self.state();
        state.enforce = config.fence.enforce;
        state.max_locks = config.limits.max_locks;
    }

    /// The lock's mark, if kept.
    pub fn mark(&self, id: Uuid) -> Option<Token> {
        self.state().locks.get(&id).map(|lock| lock.mark)
    }

    /// Applies the rules to a request: lets it through (raising its lock's mark, on disk
    /// first, when its token is above it) or says why not.
    pub async fn admit(
        &self,
        fence: Option<&Fence>,
        action: Action,
    ) -> Result<Admitted<'_>, Refused> {
        let unfenced = Admitted {
            fences: self,
            fence: None,
            mark: None,
            _gate: None,
        };
        // Tokenless and unenforced requests need no gate: they change nothing here.
        let Some(fence) = fence.filter(|_| self.state().enforce) else {
            let rules = self.rules();
            return match decide(rules, None, fence, action) {
                Decision::Refuse(refusal) => Err(Refused {
                    refusal,
                    mark: None,
                }),
                _ => Ok(unfenced),
            };
        };
        if let Some(decided) = self.admit_ungated(fence, action) {
            return decided;
        }
        let gate = self.gate.lock().await;
        let (rules, mark) = self.rules_and_mark(fence.id);
        match decide(rules, mark, Some(fence), action) {
            Decision::Unfenced => Ok(unfenced),
            Decision::Refuse(refusal) => Err(Refused { refusal, mark }),
            Decision::Enforce { raise, then } => {
                let mark = if raise {
                    self.raise(fence)
                        .await
                        .map_err(|refusal| Refused { refusal, mark })?
                } else {
                    self.seen(fence)
                };
                match then {
                    Some(refusal) => Err(Refused {
                        refusal,
                        mark: Some(mark),
                    }),
                    None => Ok(Admitted {
                        fences: self,
                        fence: Some((fence.id, fence.token)),
                        mark: Some(mark),
                        _gate: Some(gate),
                    }),
                }
            }
        }
    }

    /// What needs no gate, decided under the state's lock alone: a stale token (a mark only
    /// rises, so the refusal stands), and a fetch or a cancel carrying the lock's mark, which
    /// raises no mark and issues no ticket. So polls do not queue behind one another, nor
    /// behind a raise's write; a poll decided here while another request's raise is being
    /// written is ordered before that raise, whose request has not been answered yet. `None`:
    /// take the gate.
    fn admit_ungated(
        &self,
        fence: &Fence,
        action: Action,
    ) -> Option<Result<Admitted<'_>, Refused>> {
        let (rules, mark) = self.rules_and_mark(fence.id);
        match decide(rules, mark, Some(fence), action) {
            Decision::Refuse(refusal @ Refusal::Stale { .. }) => {
                Some(Err(Refused { refusal, mark }))
            }
            Decision::Enforce { raise: false, then } if action != Action::Request => {
                let mark = self.seen(fence);
                Some(match then {
                    Some(refusal) => Err(Refused {
                        refusal,
                        mark: Some(mark),
                    }),
                    None => Ok(Admitted {
                        fences: self,
                        fence: Some((fence.id, fence.token)),
                        mark: Some(mark),
                        _gate: None,
                    }),
                })
            }
            _ => None,
        }
    }

    fn rules_and_mark(&self, id: Uuid) -> (Rules, Option<Token>) {
        let state = self.state();
        (self.rules_of(&state), state.locks.get(&id).map(|l| l.mark))
    }

    fn rules(&self) -> Rules {
        self.rules_of(&self.state())
    }

    fn rules_of(&self, state: &State) -> Rules {
        Rules {
            enforce: state.enforce,
            max_locks: state.max_locks,
            locks: state.locks.len(),
        }
    }

    /// An accepted token equal to the mark: only the name may have changed.
    fn seen(&self, fence: &Fence) -> Token {
        let mut state = self.state();
        let Some(lock) = state.locks.get_mut(&fence.id) else {
            return fence.token;
        };
        if lock.name != fence.lock {
            let old = lock.clone();
            lock.name = fence.lock.clone();
            let new = lock.clone();
            self.unpublish(fence.id, &old);
            self.publish(fence.id, &new);
        }
        fence.token
    }

    /// Writes the state file with `fence`'s token as its lock's mark, then keeps it; the gate
    /// is held, so no other raise runs meanwhile.
    async fn raise(&self, fence: &Fence) -> Result<Token, Refusal> {
        let raised = {
            let state = self.state();
            let pending = state.locks.get(&fence.id).and_then(|lock| lock.pending);
            Lock {
                name: fence.lock.clone(),
                mark: fence.token,
                raised_at: SystemTime::now(),
                pending,
            }
        };
        let bytes = {
            let state = self.state();
            let others = state.locks.iter().filter(|(id, _)| **id != fence.id);
            marks_file::encode(others.chain([(&fence.id, &raised)]))
        };
        if let Err(why) = self.write(bytes).await {
            self.write_failed(&why);
            return Err(Refusal::NotRecorded);
        }
        if self.write_failing.swap(false, Ordering::Relaxed) {
            tracing::info!(
                "the fence state file {} is written again",
                self.file.display()
            );
        }
        let mut state = self.state();
        if let Some(old) = state.locks.insert(fence.id, raised.clone()) {
            self.unpublish(fence.id, &old);
        }
        self.publish(fence.id, &raised);
        self.publish_count(&state);
        Ok(fence.token)
    }

    /// Writes the state file on a blocking task (which also keeps a paused test clock from
    /// jumping past the write), waiting at most [`WRITE_TIMEOUT`]; a write still running from
    /// before refuses this one.
    async fn write(&self, bytes: Vec<u8>) -> Result<(), String> {
        if self.writing.swap(true, Ordering::AcqRel) {
            return Err(
                "an earlier write has not returned yet (does its file system answer?)".to_owned(),
            );
        }
        let (file, writing) = (self.file.clone(), self.writing.clone());
        let task = tokio::task::spawn_blocking(move || {
            let written = marks_file::write(&file, &bytes);
            writing.store(false, Ordering::Release);
            written
        });
        match tokio::time::timeout(WRITE_TIMEOUT, task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(err))) => Err(err.to_string()),
            Ok(Err(err)) => {
                self.writing.store(false, Ordering::Release);
                Err(format!("the write ended without a result: {err}"))
            }
            Err(_) => Err(format!(
                "not written within {} (does its file system answer?)",
                humantime::format_duration(WRITE_TIMEOUT)
            )),
        }
    }

    /// Logged once until a write succeeds again: each request refused meanwhile is a 503.
    fn write_failed(&self, why: &str) {
        if !self.write_failing.swap(true, Ordering::Relaxed) {
            tracing::error!(
                MESSAGE_ID = message_id::FENCE_STATE_NOT_WRITTEN,
                STATE_FILE = %self.file.display(),
                "cannot write the fence state file {}: {why}; requests that would raise a lock's \
                 mark are refused with 503 until it can be written (check the file system and \
                 the directory's permissions)",
                self.file.display()
            );
        }
    }

    /// Brings every lock's pending-ticket gauge up to date at `now`.
    pub fn refresh(&self, tickets: &Tickets, now: Instant) {
        let mut state = self.state();
        for (id, lock) in &mut state.locks {
            if let Some((ticket, offset)) = lock.pending
                && !tickets.is_pending(ticket, offset, now)
            {
                lock.pending = None;
            }
            self.metrics
                .fence_pending_tickets
                .get_or_create(&labels(*id, lock))
                .set(i64::from(lock.pending.is_some()));
        }
    }

    fn publish(&self, id: Uuid, lock: &Lock) {
        let labels = labels(id, lock);
        let saturated = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let metrics = &self.metrics;
        metrics
            .fence_mark_epoch
            .get_or_create(&labels)
            .set(saturated(lock.mark.epoch));
        metrics
            .fence_mark_count
            .get_or_create(&labels)
            .set(saturated(lock.mark.count));
        metrics
            .fence_pending_tickets
            .get_or_create(&labels)
            .set(i64::from(lock.pending.is_some()));
    }

    /// Drops a lock's gauges under its old name, so that a renamed lock has one set.
    fn unpublish(&self, id: Uuid, old: &Lock) {
        let labels = labels(id, old);
        self.metrics.fence_mark_epoch.remove(&labels);
        self.metrics.fence_mark_count.remove(&labels);
        self.metrics.fence_pending_tickets.remove(&labels);
    }

    fn publish_count(&self, state: &State) {
        let count = i64::try_from(state.locks.len()).unwrap_or(i64::MAX);
        self.metrics.fence_locks.set(count);
    }
}

fn labels(id: Uuid, lock: &Lock) -> LockLabels {
    LockLabels {
        lock: lock.name.as_str().to_owned(),
        lock_id: id.simple().to_string(),
    }
}

impl Admitted<'_> {
    /// The lock's mark after the request, when the fence was enforced: `Report-Fence-Mark`.
    pub fn mark(&self) -> Option<Token> {
        self.mark
    }

    /// What to record on a ticket issued now.
    pub fn ticket_fence(&self) -> Option<TicketFence> {
        self.fence.map(|(lock, token)| TicketFence { lock, token })
    }

    /// The lock's ticket if it is still pending at `now`; only when the fence was enforced.
    pub fn pending_ticket(&self, tickets: &Tickets, now: Instant) -> Option<(Uuid, u64)> {
        let (id, _) = self.fence?;
        let mut state = self.fences.state();
        let lock = state.locks.get_mut(&id)?;
        let (ticket, offset) = lock.pending?;
        if tickets.is_pending(ticket, offset, now) {
            self.fences.metrics.fence_tickets_returned.inc();
            return Some((ticket, offset));
        }
        lock.pending = None;
        None
    }

    /// Records the ticket just issued as the lock's pending one.
    pub fn issued(&self, ticket: Uuid, offset: u64) {
        let Some((id, _)) = self.fence else {
            return;
        };
        let mut state = self.fences.state();
        if let Some(lock) = state.locks.get_mut(&id) {
            lock.pending = Some((ticket, offset));
            let lock = lock.clone();
            self.fences.publish(id, &lock);
        }
    }
}

#[cfg(test)]
mod tests;
