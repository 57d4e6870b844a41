//! What each policy does with a busy lock, written once over [`Contest`] for every backend.

use tokio::time::Instant;

use super::Policy;
use crate::lock::contest::{Contest, Judgement, Refusal, Step, Taken};
use crate::lock::holder::Holder;
use crate::lock::request::{Acquired, Request};

/// Takes the lock `contest` contends for as `request.policy` says: at once if it is free,
/// else skip (`forbid`), wait (`wait`) or end its holder (`replace`). `allow` never gets here
/// (nothing is opened for it). `lock` names the lock in messages.
pub async fn acquire<C: Contest>(
    contest: &mut C,
    lock: &str,
    request: &Request,
) -> Result<Acquired<C::Guard>, Refusal> {
    if let Some(taken) = contest.try_take(request.deadline, false).await? {
        return Ok(acquired(taken, None));
    }
    let holder = contest.holder();
    match request.policy {
        Policy::Forbid | Policy::Allow => Err(Refusal::Busy(holder)),
        Policy::Wait => wait(contest, lock, request, holder).await,
        Policy::Replace => replace(contest, request).await,
    }
}

/// The result, naming the run this one got past: the one the policy met, else one the
/// backend saw off on the way.
fn acquired<G>(taken: Taken<G>, met: Option<Holder>) -> Acquired<G> {
    let previous = met.or(taken.previous);
    Acquired {
        guard: Some(taken.guard),
        previous_holder: previous.as_ref().and_then(|h| h.pid),
        previous_host: previous.filter(|h| h.show_host).and_then(|h| h.host),
        left: taken.left,
    }
}

/// Looks again every poll until the lock is free or `lock-wait` (or the deadline) passed.
async fn wait<C: Contest>(
    contest: &mut C,
    lock: &str,
    request: &Request,
    holder: Holder,
) -> Result<Acquired<C::Guard>, Refusal> {
    let started = Instant::now();
    let until = request
        .deadline
        .min(crate::time::instant_after(started, request.lock_wait));
    tracing::info!(
        HOLDER_HOST = holder.shown_host(),
        "lock {lock} is held by {holder}; waiting up to {} for it",
        humantime::format_duration(until.saturating_duration_since(started))
    );
    loop {
        let now = Instant::now();
        if now >= until {
            return Err(Refusal::WaitTimedOut {
                holder: contest.holder(),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep_until((now + contest.poll()).min(until)).await;
        if let Some(taken) = contest.try_take(until, true).await? {
            return Ok(acquired(taken, Some(holder)));
        }
    }
}

/// Ends the holder: asked first, forced once `replace-grace` passed (a backend whose first
/// step is final does nothing then), each step right after the backend judged it endable;
/// bounded by the run deadline. Names the first holder it ended.
async fn replace<C: Contest>(
    contest: &mut C,
    request: &Request,
) -> Result<Acquired<C::Guard>, Refusal> {
    let started = Instant::now();
    let grace = request.replace_grace;
    // (what was ended, when it was asked, whether it was forced)
    let mut ended: Option<(i64, Instant, bool)> = None;
    let mut first: Option<Holder> = None;
    loop {
        let now = Instant::now();
        let holder = contest.holder();
        if now >= request.deadline {
            return Err(Refusal::DeadlinePassed(holder));
        }
        match contest.judge(&holder, request.slot) {
            Judgement::Endable(id) => {
                first.get_or_insert_with(|| holder.clone());
                match ended {
                    Some((was, asked, forced)) if was == id => {
                        if !forced && now >= asked + grace {
                            contest.end(&holder, id, Step::Force).await?;
                            ended = Some((id, asked, true));
                        }
                    }
                    _ => {
                        contest.end(&holder, id, Step::Ask).await?;
                        ended = Some((id, now, false));
                    }
                }
            }
            Judgement::Unconfirmed(refusal) => {
                if ended.is_none() && now >= started + grace {
                    return Err(Refusal::Backend(refusal));
                }
            }
            Judgement::Spared(refusal) => {
                if ended.is_none() {
                    return Err(Refusal::Backend(refusal));
                }
            }
            Judgement::Going => {}
        }
        tokio::time::sleep_until((now + contest.poll()).min(request.deadline)).await;
        if let Some(taken) = contest.try_take(request.deadline, ended.is_some()).await? {
            return Ok(acquired(taken, first));
        }
    }
}

#[cfg(test)]
mod tests {
    //! Every branch of every policy, on tokio's paused clock, against a backend in memory that
    //! ends its holder either way a real one does: killed (the kernel frees an flock at once)
    //! or its session ended and its lease waited out (PostgreSQL).
    use std::fmt;
    use std::time::Duration;

    use super::*;
    use crate::lock::contest::BackendRefusal;
    use crate::time::Timestamp;

    /// How the holder in memory goes once asked.
    #[derive(Debug, Clone, Copy)]
    enum Ending {
        /// A process: gone `after` a SIGTERM (never, if `None`), at once on SIGKILL.
        Killed { after: Option<Duration> },
        /// A lease: the session ends when asked; the lock is free once `lease` more passed.
        Lease { lease: Duration },
    }

    /// Why the memory backend refused.
    #[derive(Debug, PartialEq, Eq)]
    enum Said {
        Unconfirmed,
        NotEarlier,
    }

    #[derive(Debug)]
    struct MemoryRefusal(Said, Holder);

    impl BackendRefusal for MemoryRefusal {
        fn is_skip(&self) -> bool {
            true
        }
        fn holder(&self) -> Option<&Holder> {
            Some(&self.1)
        }
        fn describe(&self, _: &str, _: &Request, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }

    /// One lock in memory and its holder.
    struct Memory {
        poll: Duration,
        start: Instant,
        /// When the lock becomes free by itself (`None`: held until ended).
        free_at: Option<Instant>,
        ending: Ending,
        confirmed: bool,
        /// The holder's slot, against the run's (a lease's rule under `replace`).
        earlier: Option<bool>,
        steps: Vec<(i64, Step, Duration)>,
        looks: usize,
    }

    impl Memory {
        fn held(ending: Ending) -> Memory {
            Memory {
                poll: Duration::from_millis(50),
                start: Instant::now(),
                free_at: None,
                ending,
                confirmed: true,
                earlier: None,
                steps: Vec::new(),
                looks: 0,
            }
        }

        fn free() -> Memory {
            Memory {
                free_at: Some(Instant::now()),
                ..Memory::held(Ending::Killed { after: None })
            }
        }

        fn at(&self) -> Duration {
            self.start.elapsed()
        }
    }

    impl Contest for Memory {
        type Guard = Duration;

        fn poll(&self) -> Duration {
            self.poll
        }

        async fn try_take(
            &mut self,
            _bound: Instant,
            _patient: bool,
        ) -> Result<Option<Taken<Duration>>, Refusal> {
            self.looks += 1;
            let free = self.free_at.is_some_and(|at| Instant::now() >= at);
            Ok(free.then(|| Taken {
                guard: self.start.elapsed(),
                left: None,
                previous: None,
            }))
        }

        fn holder(&self) -> Holder {
            Holder {
                confirmed: self.confirmed,
                ..Holder::from_lock(Some(4242), None)
            }
        }

        fn judge(&self, holder: &Holder, _slot: Option<Timestamp>) -> Judgement {
            let refuse = |said| Box::new(MemoryRefusal(said, holder.clone()));
            match self.earlier {
                Some(false) => return Judgement::Spared(refuse(Said::NotEarlier)),
                _ if !self.confirmed => return Judgement::Unconfirmed(refuse(Said::Unconfirmed)),
                _ => {}
            }
            match (self.ending, self.steps.is_empty()) {
                // A session ended once is gone: its lease runs out by itself.
                (Ending::Lease { .. }, false) => Judgement::Going,
                _ => Judgement::Endable(4242),
            }
        }

        async fn end(&mut self, _holder: &Holder, id: i64, step: Step) -> Result<(), Refusal> {
            self.steps.push((id, step, self.at()));
            let now = Instant::now();
            let free_at = match (self.ending, step) {
                (Ending::Killed { .. }, Step::Force) => Some(now),
                (Ending::Killed { after }, Step::Ask) => after.map(|after| now + after),
                (Ending::Lease { lease }, Step::Ask) => Some(now + lease),
                (Ending::Lease { .. }, Step::Force) => self.free_at,
            };
            self.free_at = match (self.free_at, free_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            Ok(())
        }
    }

    const GRACE: Duration = Duration::from_secs(10);

    fn request(policy: Policy) -> Request {
        Request {
            policy,
            lock_wait: Duration::from_secs(30),
            replace_grace: GRACE,
            deadline: Instant::now() + Duration::from_secs(600),
            deadline_setting: Duration::from_secs(600),
            slot: Some(Timestamp::UNIX_EPOCH),
        }
    }

    /// What the memory backend said, when the refusal is its own.
    fn refusal_of(refusal: &Refusal) -> Option<Said> {
        let Refusal::Backend(backend) = refusal else {
            return None;
        };
        let text = format!("{backend:?}");
        [Said::Unconfirmed, Said::NotEarlier]
            .into_iter()
            .find(|said| text.contains(&format!("({said:?},")))
    }

    #[tokio::test(start_paused = true)]
    async fn a_free_lock_is_taken_at_once_under_every_policy() {
        for policy in [Policy::Forbid, Policy::Wait, Policy::Replace] {
            let mut lock = Memory::free();
            let acquired = acquire(&mut lock, "l", &request(policy)).await.unwrap();
            assert_eq!(acquired.guard, Some(Duration::ZERO), "{policy}");
            assert_eq!(acquired.previous_holder, None);
            assert_eq!(lock.looks, 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn forbid_skips_at_once_naming_the_holder() {
        let mut lock = Memory::held(Ending::Killed { after: None });
        let start = Instant::now();
        let err = acquire(&mut lock, "l", &request(Policy::Forbid))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Refusal::Busy(h) if h.pid == Some(4242)),
            "{err:?}"
        );
        assert!(err.is_skip());
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(lock.steps.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_takes_the_lock_at_the_first_look_after_it_is_free() {
        let mut lock = Memory::held(Ending::Killed { after: None });
        lock.free_at = Some(Instant::now() + Duration::from_millis(730));
        let acquired = acquire(&mut lock, "l", &request(Policy::Wait))
            .await
            .unwrap();
        assert_eq!(acquired.guard, Some(Duration::from_millis(750)));
        assert_eq!(acquired.previous_holder, Some(4242));
        assert!(lock.steps.is_empty(), "waiting ends nobody");
    }

    #[tokio::test(start_paused = true)]
    async fn wait_gives_up_exactly_at_lock_wait_or_the_deadline_whichever_is_first() {
        for (lock_wait, deadline) in [(2, 600), (600, 3)] {
            let mut lock = Memory::held(Ending::Killed { after: None });
            let start = Instant::now();
            let request = Request {
                lock_wait: Duration::from_secs(lock_wait),
                deadline: start + Duration::from_secs(deadline),
                ..request(Policy::Wait)
            };
            let err = acquire(&mut lock, "l", &request).await.unwrap_err();
            let limit = Duration::from_secs(lock_wait.min(deadline));
            assert!(
                matches!(&err, Refusal::WaitTimedOut { waited, .. } if *waited == limit),
                "{err:?}"
            );
            assert!(err.is_skip());
            assert_eq!(start.elapsed(), limit);
            // One look at once, then one every poll, including one at the limit.
            let polls = limit.as_millis() / lock.poll.as_millis();
            assert_eq!(lock.looks, usize::try_from(polls).unwrap() + 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wait_looks_at_the_backend_s_own_pace() {
        let mut lock = Memory::held(Ending::Killed { after: None });
        lock.poll = Duration::from_millis(200);
        let request = Request {
            lock_wait: Duration::from_secs(2),
            ..request(Policy::Wait)
        };
        acquire(&mut lock, "l", &request).await.unwrap_err();
        assert_eq!(lock.looks, 11);
    }

    #[tokio::test(start_paused = true)]
    async fn replace_asks_once_and_takes_the_lock_when_a_killed_holder_goes() {
        let mut lock = Memory::held(Ending::Killed {
            after: Some(Duration::from_millis(1200)),
        });
        let acquired = acquire(&mut lock, "l", &request(Policy::Replace))
            .await
            .unwrap();
        assert_eq!(lock.steps, [(4242, Step::Ask, Duration::ZERO)]);
        assert_eq!(acquired.previous_holder, Some(4242));
        assert_eq!(acquired.guard, Some(Duration::from_millis(1200)));
    }

    #[tokio::test(start_paused = true)]
    async fn replace_forces_exactly_when_the_grace_runs_out() {
        let mut lock = Memory::held(Ending::Killed { after: None });
        let acquired = acquire(&mut lock, "l", &request(Policy::Replace))
            .await
            .unwrap();
        assert_eq!(
            lock.steps,
            [
                (4242, Step::Ask, Duration::ZERO),
                (4242, Step::Force, GRACE)
            ]
        );
        // Seen at the first look after it went.
        assert_eq!(acquired.guard, Some(GRACE + lock.poll));
    }

    #[tokio::test(start_paused = true)]
    async fn replace_ends_a_session_once_and_takes_the_lock_when_its_lease_ran_out() {
        let lease = Duration::from_secs(25);
        let mut lock = Memory::held(Ending::Lease { lease });
        let acquired = acquire(&mut lock, "l", &request(Policy::Replace))
            .await
            .unwrap();
        // Asked once; an ended session is on its way out, so nothing more is asked of it.
        assert_eq!(lock.steps, [(4242, Step::Ask, Duration::ZERO)]);
        assert_eq!(acquired.guard, Some(lease));
        assert_eq!(acquired.previous_holder, Some(4242));
    }

    #[tokio::test(start_paused = true)]
    async fn replace_never_ends_an_unconfirmed_holder_and_gives_up_after_the_grace() {
        let mut lock = Memory::held(Ending::Killed {
            after: Some(Duration::ZERO),
        });
        lock.confirmed = false;
        let start = Instant::now();
        let err = acquire(&mut lock, "l", &request(Policy::Replace))
            .await
            .unwrap_err();
        assert_eq!(refusal_of(&err), Some(Said::Unconfirmed), "{err:?}");
        assert!(lock.steps.is_empty());
        assert_eq!(start.elapsed(), GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn replace_takes_the_lock_an_unconfirmed_holder_let_go_within_the_grace() {
        let mut lock = Memory::held(Ending::Killed { after: None });
        lock.confirmed = false;
        lock.free_at = Some(Instant::now() + Duration::from_secs(3));
        let acquired = acquire(&mut lock, "l", &request(Policy::Replace))
            .await
            .unwrap();
        assert!(lock.steps.is_empty());
        assert_eq!(acquired.guard, Some(Duration::from_secs(3)));
        assert_eq!(acquired.previous_holder, None, "nobody was ended");
    }

    #[tokio::test(start_paused = true)]
    async fn replace_spares_a_holder_of_a_slot_not_earlier_at_once() {
        let mut lock = Memory::held(Ending::Lease {
            lease: Duration::from_secs(25),
        });
        lock.earlier = Some(false);
        let start = Instant::now();
        let err = acquire(&mut lock, "l", &request(Policy::Replace))
            .await
            .unwrap_err();
        assert_eq!(refusal_of(&err), Some(Said::NotEarlier), "{err:?}");
        assert!(err.is_skip());
        assert!(lock.steps.is_empty());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_run_deadline_bounds_replacing() {
        let mut lock = Memory::held(Ending::Killed { after: None });
        let start = Instant::now();
        let request = Request {
            deadline: start + Duration::from_secs(3),
            ..request(Policy::Replace)
        };
        let err = acquire(&mut lock, "l", &request).await.unwrap_err();
        assert!(matches!(err, Refusal::DeadlinePassed(_)), "{err:?}");
        assert!(!err.is_skip());
        assert_eq!(lock.steps, [(4242, Step::Ask, Duration::ZERO)]);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_longer_than_the_deadline_is_not_waited_past_it() {
        let mut lock = Memory::held(Ending::Lease {
            lease: Duration::from_secs(60),
        });
        let start = Instant::now();
        let request = Request {
            deadline: start + Duration::from_secs(20),
            ..request(Policy::Replace)
        };
        let err = acquire(&mut lock, "l", &request).await.unwrap_err();
        assert!(matches!(err, Refusal::DeadlinePassed(_)), "{err:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(20));
    }

    #[test]
    fn only_forbid_skips_late_starts_and_only_allow_takes_no_lock() {
        for policy in Policy::ALL {
            assert_eq!(policy.skips_late_starts(), policy == Policy::Forbid);
            assert_eq!(policy.locks(), policy != Policy::Allow);
            assert_eq!(policy.as_str().parse::<Policy>(), Ok(policy));
        }
        assert!("sometimes".parse::<Policy>().is_err());
    }
}
