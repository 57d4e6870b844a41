//! Waiting for a busy lock and replacing its holder, written against [`Contest`] so that the
//! tests can script a holder on tokio's paused clock; the flock takes its lock through them
//! (PostgreSQL has its own acquire loop). [`Refusal`], what stood in the way, is here too.
//!
//! The one rule that matters here: a process is signalled only right after the lock itself
//! confirmed that the pid in the holder record is the pid holding the lock, and the process
//! itself was seen holding it ([`Contest::holds_lock`]). Pids are reused, and a stale record,
//! or a lock that outlived the process that took it, must never get an unrelated process
//! killed.

use std::io;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::holder::Holder;

/// What stood in the way of taking the lock.
#[derive(Debug)]
pub enum Refusal {
    /// Busy under `forbid`.
    Busy(Holder),
    /// `lock-wait` (or the run deadline) passed under `wait`.
    WaitTimedOut { holder: Holder, waited: Duration },
    /// Under `replace`, the holder could not be confirmed, so nothing was signalled.
    HolderUnconfirmed(Holder),
    /// Under `replace`, the pid the lock and its record name holds no descriptor of the lock
    /// (another process inherited it), so nothing was signalled.
    HolderHoldsNoDescriptor(Holder),
    /// The run deadline passed while ending the holder.
    DeadlinePassed(Holder),
    /// Under `replace` on a shared lock: the holder's slot is not earlier than this run's,
    /// so it is left to finish.
    NotEarlier(Holder),
    /// The lock's previous holder may still be running (its lease is live) and the run
    /// deadline would pass before the lease ends.
    LeaseOutlastsDeadline { holder: Holder, remaining: Duration },
    /// The shared lock's database cannot be reached or refused this collector.
    Unavailable(String),
    /// The lock could not be used at all.
    Io(io::Error),
    /// The holder could not be signalled.
    Signal { pid: u32, error: nix::Error },
}

/// A holder that could not be signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalError {
    pub pid: u32,
    pub error: nix::Error,
}

impl From<SignalError> for Refusal {
    fn from(e: SignalError) -> Refusal {
        Refusal::Signal {
            pid: e.pid,
            error: e.error,
        }
    }
}

/// How often a waiting run looks at the lock again.
pub const LOCK_POLL: Duration = Duration::from_millis(50);

/// What the waiting and replacing loops deal with: the lock they want, who holds it, and
/// kill(2).
pub trait Contest {
    type Held;
    /// Takes the lock if it is free.
    fn try_take(&mut self) -> io::Result<Option<Self::Held>>;
    /// Who holds the lock now.
    fn holder(&self) -> Holder;
    /// Whether process `pid` itself holds the lock now (for the flock: an open descriptor of
    /// the lock file carrying it), asked right before every signal.
    fn holds_lock(&self, pid: u32) -> bool;
    fn signal(&mut self, pid: u32, signal: Signal) -> Result<(), SignalError>;
}

/// Calls `attempt` every [`LOCK_POLL`] until it gives something or `until` passes.
pub async fn wait_for<T>(
    until: Instant,
    mut attempt: impl FnMut() -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    loop {
        if let Some(got) = attempt()? {
            return Ok(Some(got));
        }
        let now = Instant::now();
        if now >= until {
            return Ok(None);
        }
        tokio::time::sleep_until((now + LOCK_POLL).min(until)).await;
    }
}

/// Ends the holder: SIGTERM, up to `grace` for it to go, then SIGKILL; each signal only after
/// checking, right before, that the holder is confirmed (see the module doc).
/// Returns the lock and the pid of the first holder it ended.
pub async fn replace<C: Contest>(
    mut contest: C,
    grace: Duration,
    deadline: Instant,
) -> Result<(C::Held, Option<u32>), Refusal> {
    let started = Instant::now();
    // (pid, when SIGTERM was sent, whether SIGKILL was sent)
    let mut signalled: Option<(u32, Instant, bool)> = None;
    let mut first_holder = None;
    loop {
        if let Some(held) = contest.try_take().map_err(Refusal::Io)? {
            return Ok((held, first_holder));
        }
        let now = Instant::now();
        let holder = contest.holder();
        if now >= deadline {
            return Err(Refusal::DeadlinePassed(holder));
        }
        let me = std::process::id();
        match (holder.confirmed, holder.pid) {
            (true, Some(pid)) if pid != me && !contest.holds_lock(pid) => {
                // Named by the lock and the record, yet holding nothing: the lock lives on in
                // a process that inherited its descriptor, and the pid may be anyone's now.
                if signalled.is_none() && now >= started + grace {
                    return Err(Refusal::HolderHoldsNoDescriptor(holder));
                }
            }
            (true, Some(pid)) if pid != me => {
                first_holder.get_or_insert(pid);
                match signalled {
                    Some((p, at, killed)) if p == pid => {
                        if !killed && now >= at + grace {
                            tracing::warn!(
                                MESSAGE_ID = report_common::message_id::HOLDER_REPLACED,
                                HOLDER_PID = pid,
                                HOLDER_HOST = "",
                                ENDED_BY = "SIGKILL",
                                "holder pid {pid} still holds the lock {} after SIGTERM; sending SIGKILL",
                                humantime::format_duration(grace)
                            );
                            contest.signal(pid, Signal::SIGKILL)?;
                            signalled = Some((pid, at, true));
                        }
                    }
                    _ => {
                        tracing::info!(
                            MESSAGE_ID = report_common::message_id::HOLDER_REPLACED,
                            HOLDER_PID = pid,
                            HOLDER_HOST = "",
                            ENDED_BY = "SIGTERM",
                            "policy replace: ending the run holding the lock, {holder}, with SIGTERM"
                        );
                        contest.signal(pid, Signal::SIGTERM)?;
                        signalled = Some((pid, now, false));
                    }
                }
            }
            _ => {
                // No record yet (the holder writes it right after locking) or a holder that
                // is not a collector: give it the grace period to show itself, never signal.
                if signalled.is_none() && now >= started + grace {
                    return Err(Refusal::HolderUnconfirmed(holder));
                }
            }
        }
        tokio::time::sleep_until((now + LOCK_POLL).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waiting_gives_up_exactly_at_the_limit() {
        let start = Instant::now();
        let mut attempts = 0;
        let got: Option<()> = wait_for(start + Duration::from_secs(2), || {
            attempts += 1;
            Ok(None)
        })
        .await
        .unwrap();
        assert_eq!(got, None);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // One attempt at once, then one every LOCK_POLL, including one at the limit.
        let polls = Duration::from_secs(2).as_millis() / LOCK_POLL.as_millis();
        assert_eq!(attempts, usize::try_from(polls).unwrap() + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_takes_the_lock_as_soon_as_it_is_free() {
        let start = Instant::now();
        let free_at = start + Duration::from_millis(730);
        let got = wait_for(start + Duration::from_secs(5), || {
            Ok((Instant::now() >= free_at).then_some("lock"))
        })
        .await
        .unwrap();
        assert_eq!(got, Some("lock"));
        assert!(start.elapsed() - Duration::from_millis(730) < LOCK_POLL);
    }

    /// A holder on tokio's paused clock: it lets go of the lock `exits_after` a SIGTERM (never,
    /// if `None`) or at once on SIGKILL; every signal is recorded with its time.
    struct ScriptedHolder {
        pid: u32,
        confirmed: bool,
        /// Whether the process itself holds the lock (not a pid the lock outlived).
        holds: bool,
        exits_after: Option<Duration>,
        term_at: Option<Instant>,
        killed: bool,
        start: Instant,
        signals: Vec<(u32, Signal, Duration)>,
    }

    impl ScriptedHolder {
        fn new(confirmed: bool, exits_after: Option<Duration>) -> ScriptedHolder {
            ScriptedHolder {
                pid: 4242,
                confirmed,
                holds: true,
                exits_after,
                term_at: None,
                killed: false,
                start: Instant::now(),
                signals: Vec::new(),
            }
        }
    }

    impl Contest for &mut ScriptedHolder {
        type Held = Duration;

        fn try_take(&mut self) -> io::Result<Option<Duration>> {
            let gone = self.killed
                || matches!((self.term_at, self.exits_after), (Some(at), Some(after)) if Instant::now() >= at + after);
            Ok(gone.then(|| self.start.elapsed()))
        }

        fn holder(&self) -> Holder {
            Holder {
                confirmed: self.confirmed,
                ..Holder::from_lock(Some(self.pid), None)
            }
        }

        fn holds_lock(&self, pid: u32) -> bool {
            pid == self.pid && self.holds
        }

        fn signal(&mut self, pid: u32, signal: Signal) -> Result<(), SignalError> {
            self.signals.push((pid, signal, self.start.elapsed()));
            match signal {
                Signal::SIGKILL => self.killed = true,
                _ => self.term_at = Some(Instant::now()),
            }
            Ok(())
        }
    }

    const GRACE: Duration = Duration::from_secs(10);

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(600)
    }

    #[tokio::test(start_paused = true)]
    async fn replace_sends_sigterm_once_and_takes_the_lock_when_the_holder_goes() {
        let mut holder = ScriptedHolder::new(true, Some(Duration::from_millis(1200)));
        let (taken_at, previous) = replace(&mut holder, GRACE, far()).await.unwrap();
        assert_eq!(holder.signals, [(4242, Signal::SIGTERM, Duration::ZERO)]);
        assert_eq!(previous, Some(4242));
        // Seen at the first look after it went.
        assert_eq!(taken_at, Duration::from_millis(1200));
    }

    #[tokio::test(start_paused = true)]
    async fn replace_sends_sigkill_exactly_when_the_grace_runs_out() {
        let mut holder = ScriptedHolder::new(true, None);
        let (taken_at, _) = replace(&mut holder, GRACE, far()).await.unwrap();
        assert_eq!(
            holder.signals,
            [
                (4242, Signal::SIGTERM, Duration::ZERO),
                (4242, Signal::SIGKILL, GRACE)
            ]
        );
        assert_eq!(taken_at, GRACE + LOCK_POLL);
    }

    #[tokio::test(start_paused = true)]
    async fn replace_never_signals_an_unconfirmed_holder_and_gives_up_after_the_grace() {
        let mut holder = ScriptedHolder::new(false, Some(Duration::ZERO));
        let start = Instant::now();
        let err = replace(&mut holder, GRACE, far()).await.unwrap_err();
        assert!(matches!(err, Refusal::HolderUnconfirmed(_)), "{err:?}");
        assert!(holder.signals.is_empty());
        assert_eq!(start.elapsed(), GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn the_run_deadline_bounds_replacing() {
        let mut holder = ScriptedHolder::new(true, None);
        let start = Instant::now();
        let err = replace(&mut holder, GRACE, start + Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(matches!(err, Refusal::DeadlinePassed(_)), "{err:?}");
        assert_eq!(holder.signals, [(4242, Signal::SIGTERM, Duration::ZERO)]);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn replace_never_signals_a_pid_the_lock_outlived() {
        let mut holder = ScriptedHolder::new(true, Some(Duration::ZERO));
        holder.holds = false;
        let start = Instant::now();
        let err = replace(&mut holder, GRACE, far()).await.unwrap_err();
        assert!(
            matches!(err, Refusal::HolderHoldsNoDescriptor(_)),
            "{err:?}"
        );
        assert!(holder.signals.is_empty());
        assert_eq!(start.elapsed(), GRACE);
    }
}
