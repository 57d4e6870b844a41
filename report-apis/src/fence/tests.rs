use std::time::Duration;

use report_common::fence::{LockName, Token};

use super::*;
use crate::load::LoadClock;

const A: Uuid = Uuid::from_u128(0xa);
const B: Uuid = Uuid::from_u128(0xb);

fn fence(id: Uuid, epoch: u64, count: u64) -> Fence {
    Fence {
        lock: LockName::new(if id == A { "fleet-a" } else { "fleet-b" }).unwrap(),
        id,
        token: Token::new(epoch, count),
    }
}

const ON: Rules = Rules {
    enforce: true,
    max_locks: 2,
    locks: 1,
};

#[test]
fn a_token_below_the_mark_is_refused_on_every_route() {
    for action in [
        Action::Request,
        Action::Fetch,
        Action::Cancel { issued_under: None },
        Action::Cancel {
            issued_under: Some(A),
        },
    ] {
        assert_eq!(
            decide(ON, Some(Token::new(1, 7)), Some(&fence(A, 1, 5)), action),
            Decision::Refuse(Refusal::Stale {
                lock: LockName::new("fleet-a").unwrap(),
                token: Token::new(1, 5),
                mark: Token::new(1, 7),
            }),
            "{action:?}"
        );
    }
    // The epoch counts before the count.
    assert!(matches!(
        decide(
            ON,
            Some(Token::new(2, 0)),
            Some(&fence(A, 1, 99)),
            Action::Fetch
        ),
        Decision::Refuse(Refusal::Stale { .. })
    ));
}

#[test]
fn equal_is_accepted_above_raises_and_a_new_lock_raises_within_the_bound() {
    let mark = Some(Token::new(1, 7));
    assert_eq!(
        decide(ON, mark, Some(&fence(A, 1, 7)), Action::Request),
        Decision::Enforce {
            raise: false,
            then: None
        }
    );
    assert_eq!(
        decide(ON, mark, Some(&fence(A, 2, 0)), Action::Fetch),
        Decision::Enforce {
            raise: true,
            then: None
        }
    );
    assert_eq!(
        decide(ON, None, Some(&fence(B, 0, 0)), Action::Request),
        Decision::Enforce {
            raise: true,
            then: None
        }
    );
    let full = Rules { locks: 2, ..ON };
    assert_eq!(
        decide(full, None, Some(&fence(B, 9, 9)), Action::Request),
        Decision::Refuse(Refusal::MaxLocks { max_locks: 2 })
    );
    // A lock already kept is served at the bound, and past it after a lower max-locks.
    let over = Rules { locks: 5, ..ON };
    assert_eq!(
        decide(over, mark, Some(&fence(A, 1, 8)), Action::Request),
        Decision::Enforce {
            raise: true,
            then: None
        }
    );
}

#[test]
fn a_cancel_is_its_own_lock_s_and_a_fenced_ticket_needs_a_fence() {
    let mark = Some(Token::new(1, 7));
    assert_eq!(
        decide(
            ON,
            mark,
            Some(&fence(A, 1, 8)),
            Action::Cancel {
                issued_under: Some(B)
            }
        ),
        Decision::Enforce {
            raise: true,
            then: Some(Refusal::OtherLock {
                lock: LockName::new("fleet-a").unwrap()
            })
        }
    );
    assert_eq!(
        decide(
            ON,
            mark,
            Some(&fence(A, 1, 7)),
            Action::Cancel {
                issued_under: Some(A)
            }
        ),
        Decision::Enforce {
            raise: false,
            then: None
        }
    );
    assert_eq!(
        decide(
            ON,
            None,
            None,
            Action::Cancel {
                issued_under: Some(A)
            }
        ),
        Decision::Refuse(Refusal::TokenlessCancel)
    );
    for action in [
        Action::Request,
        Action::Fetch,
        Action::Cancel { issued_under: None },
    ] {
        assert_eq!(decide(ON, None, None, action), Decision::Unfenced);
    }
}

#[test]
fn unenforced_nothing_is_refused() {
    let off = Rules {
        enforce: false,
        locks: 2,
        ..ON
    };
    for (fence, action) in [
        (Some(fence(A, 0, 0)), Action::Request),
        (Some(fence(B, 0, 0)), Action::Request),
        (
            Some(fence(A, 0, 0)),
            Action::Cancel {
                issued_under: Some(B),
            },
        ),
        (
            None,
            Action::Cancel {
                issued_under: Some(B),
            },
        ),
    ] {
        assert_eq!(
            decide(off, Some(Token::new(9, 9)), fence.as_ref(), action),
            Decision::Unfenced
        );
    }
}

/// A store, the fences and their state file in a temporary directory, on a paused clock.
struct Fixture {
    _dir: tempfile::TempDir,
    file: PathBuf,
    config: Config,
    tickets: Tickets,
    fences: Fences,
    metrics: Arc<Metrics>,
}

impl Fixture {
    fn new(max_locks: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.heavy_load.period = Duration::ZERO;
        config.limits.max_locks = max_locks;
        config.fence.state_file = dir.path().join("fence.json");
        let metrics = Arc::new(Metrics::new());
        let start = Instant::now();
        let clock = LoadClock::new(&config.heavy_load, start);
        let tickets = Tickets::new(&config, clock, metrics.clone(), start);
        let fences = Fences::load(&config, metrics.clone()).unwrap();
        Fixture {
            file: config.fence.state_file.clone(),
            _dir: dir,
            config,
            tickets,
            fences,
            metrics,
        }
    }

    /// A ticket request as the handler makes it: the lock's pending ticket, else a new one.
    async fn request(&self, fence: &Fence) -> Result<(Uuid, u64), Refused> {
        let admitted = self.fences.admit(Some(fence), Action::Request).await?;
        let now = Instant::now();
        if let Some(pending) = admitted.pending_ticket(&self.tickets, now) {
            return Ok(pending);
        }
        let id = self
            .tickets
            .issue_under(5, admitted.ticket_fence(), now)
            .unwrap();
        admitted.issued(id, 5);
        Ok((id, 5))
    }
}

#[tokio::test(start_paused = true)]
async fn a_lock_has_one_pending_ticket_until_it_is_fetched_and_another_lock_its_own() {
    let f = Fixture::new(4);
    let first = f.request(&fence(A, 1, 1)).await.unwrap();
    assert_eq!(f.request(&fence(A, 1, 1)).await.unwrap(), first);
    assert_eq!(
        f.request(&fence(A, 1, 2)).await.unwrap(),
        first,
        "a raise too"
    );
    assert_eq!(f.metrics.fence_tickets_returned.get(), 2);
    let other = f.request(&fence(B, 1, 1)).await.unwrap();
    assert_ne!(other, first);
    assert_eq!(
        f.tickets.fence_of(first.0, 5, Instant::now()),
        Some(TicketFence {
            lock: A,
            token: Token::new(1, 1)
        })
    );

    // Fetched once ready (1 s alone, 2 s with B's beside it): no longer pending.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(matches!(
        f.tickets.fetch(first.0, 5, Instant::now()),
        crate::tickets::Fetch::Ready { .. }
    ));
    let next = f.request(&fence(A, 1, 2)).await.unwrap();
    assert_ne!(next, first);
}

#[tokio::test(start_paused = true)]
async fn an_expired_or_cancelled_ticket_is_no_longer_handed_back() {
    let f = Fixture::new(4);
    let first = f.request(&fence(A, 1, 1)).await.unwrap();
    assert!(f.tickets.cancel(first.0, 5, Instant::now()));
    let second = f.request(&fence(A, 1, 1)).await.unwrap();
    assert_ne!(second, first);
    // Unready tickets expire 3 ticket-ttl after their request.
    tokio::time::advance(f.config.limits.ticket_ttl * 3 + Duration::from_secs(1)).await;
    let third = f.request(&fence(A, 1, 1)).await.unwrap();
    assert_ne!(third, second);
}

#[tokio::test(start_paused = true)]
async fn raised_marks_are_on_disk_before_the_answer_and_read_back_at_start() {
    let f = Fixture::new(4);
    f.request(&fence(A, 1, 7)).await.unwrap();
    f.request(&fence(B, 3, 0)).await.unwrap();
    let stale = f.request(&fence(A, 1, 6)).await.unwrap_err();
    assert_eq!(stale.mark, Some(Token::new(1, 7)));
    let on_disk = marks_file::load(&f.file, 4).unwrap();
    assert_eq!(on_disk[&A].mark, Token::new(1, 7));
    assert_eq!(on_disk[&B].mark, Token::new(3, 0));

    let again = Fences::load(&f.config, Arc::new(Metrics::new())).unwrap();
    assert_eq!(again.mark(A), Some(Token::new(1, 7)));
    assert!(
        again
            .admit(Some(&fence(A, 1, 6)), Action::Fetch)
            .await
            .is_err()
    );
    assert!(
        again
            .admit(Some(&fence(A, 1, 7)), Action::Fetch)
            .await
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn a_mark_that_cannot_be_written_is_not_raised_and_the_request_refused() {
    let f = Fixture::new(4);
    f.request(&fence(A, 1, 1)).await.unwrap();
    // The directory gone: the write fails.
    let dir = f.file.parent().unwrap().to_owned();
    std::fs::remove_dir_all(&dir).unwrap();
    let refused = f
        .fences
        .admit(Some(&fence(A, 1, 2)), Action::Fetch)
        .await
        .unwrap_err();
    assert_eq!(
        refused,
        Refused {
            refusal: Refusal::NotRecorded,
            mark: Some(Token::new(1, 1))
        }
    );
    assert_eq!(f.fences.mark(A), Some(Token::new(1, 1)));
    // Equal needs no write and is served.
    assert!(
        f.fences
            .admit(Some(&fence(A, 1, 1)), Action::Fetch)
            .await
            .is_ok()
    );
    std::fs::create_dir(&dir).unwrap();
    assert!(
        f.fences
            .admit(Some(&fence(A, 1, 2)), Action::Fetch)
            .await
            .is_ok()
    );
    assert_eq!(f.fences.mark(A), Some(Token::new(1, 2)));
}

#[tokio::test(start_paused = true)]
async fn at_max_locks_a_new_lock_is_refused_and_a_reload_makes_room_without_evicting() {
    let f = Fixture::new(1);
    f.request(&fence(A, 1, 1)).await.unwrap();
    assert_eq!(
        f.request(&fence(B, 1, 1)).await.unwrap_err(),
        Refused {
            refusal: Refusal::MaxLocks { max_locks: 1 },
            mark: None
        }
    );
    let mut config = f.config.clone();
    config.limits.max_locks = 2;
    f.fences.reconfigure(&config);
    f.request(&fence(B, 1, 1)).await.unwrap();
    config.limits.max_locks = 1;
    f.fences.reconfigure(&config);
    assert_eq!(f.fences.mark(A), Some(Token::new(1, 1)));
    assert_eq!(f.fences.mark(B), Some(Token::new(1, 1)));
    assert!(f.request(&fence(A, 1, 2)).await.is_ok());
    assert_eq!(f.metrics.fence_locks.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_renamed_lock_keeps_one_set_of_gauges() {
    let f = Fixture::new(4);
    f.request(&fence(A, 1, 1)).await.unwrap();
    let mut renamed = fence(A, 1, 1);
    renamed.lock = LockName::new("fleet-renamed").unwrap();
    f.request(&renamed).await.unwrap();
    let text = f.metrics.encode();
    assert!(
        text.contains(&format!(
            "report_apis_fence_mark_count{{lock=\"fleet-renamed\",lock_id=\"{}\"}} 1",
            A.simple()
        )),
        "{text}"
    );
    assert!(!text.contains("lock=\"fleet-a\""), "{text}");
}
