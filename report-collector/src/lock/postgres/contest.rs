//! What the PostgreSQL lock answers the policies ([`crate::lock::policy`]): take the session
//! advisory lock and then the lease in the row, say who holds it, judge a holder under
//! `replace` (only one of an earlier slot is ended), end a holder by ending its session.
//!
//! Taking it is more than one statement. A holder whose lease ran out by the database's clock
//! while the server still keeps its session (a host cut off before the keepalives gave up) has
//! its session ended on the way, whatever the policy. Once the advisory lock is this run's,
//! the previous holder's lease may still run: it is waited out when it ends before the run's
//! deadline, else the lock is left ([`PgRefusal::LeaseOutlastsDeadline`]). A patient run (one
//! that waits anyway) that loses its connection, because the database restarted, connects
//! again within its bound: giving up would leave the slot to nobody.

use std::fmt;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use report_common::fence::{Fence, LockName};
use tokio::time::Instant;
use tokio_postgres::types::Type;

use super::row::{Lease, Row};
use super::{
    ADVISORY_CLASS, Commit, FirstLook, HeldPostgres, POLL, Params, PostgresLock, SLOT_PRUNE_EVERY,
    SLOT_RETENTION_DAYS, Session, Shared, Validity, WAIT_MARGIN, connection_lost, describe,
    renew_every, terminate, try_advisory_lock,
};
use crate::config::LEASE_RANGE;
use crate::lock::backend::{FleetCollection, RunLock};
use crate::lock::contest::{BackendRefusal, Contest, Judgement, Refusal, Step, Taken};
use crate::lock::holder::{Holder, LeftTicket};
use crate::lock::request::Request;
use crate::lock::token::Token;
use crate::time::{Timestamp, round_ms};

/// The PostgreSQL lock, opened (connected) for one run's request.
#[derive(Debug)]
pub struct PgContest {
    lock: PostgresLock,
    request: Request,
    /// `None` only while connecting again, or once the lock is taken.
    session: Option<Session>,
    /// The row as the last look read it.
    row: Row,
    /// A holder seen off on the way (a stale session ended, a lease waited out).
    previous: Option<Holder>,
    /// An untrusted lease in the row was waited out, once.
    waited_untrusted: bool,
    /// Why the last session dropped, while it is connected again.
    dropped: Option<String>,
    /// What opening the session saw, taken as the next attempt's look.
    first: Option<FirstLook>,
}

/// Why one attempt did not end with the lock or with "busy".
enum Stop {
    Refused(PgRefusal),
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Stop {
    fn from(e: tokio_postgres::Error) -> Stop {
        Stop::Db(e)
    }
}

impl PgContest {
    pub(super) fn new(
        lock: PostgresLock,
        request: Request,
        session: Session,
        first: Option<FirstLook>,
    ) -> PgContest {
        PgContest {
            lock,
            request,
            session: Some(session),
            row: Row::default(),
            previous: None,
            waited_untrusted: false,
            dropped: None,
            first,
        }
    }

    fn client(&self) -> Arc<tokio_postgres::Client> {
        Arc::clone(
            &self
                .session
                .as_ref()
                .expect("a session while contending")
                .client,
        )
    }

    /// One attempt on the current session: the advisory lock (ending a stale session on the
    /// way), then the lease.
    async fn attempt(&mut self) -> Result<Option<Taken<HeldPostgres>>, Stop> {
        let client = self.client();
        loop {
            let (got, row) = match self.first.take() {
                Some(FirstLook {
                    got,
                    row: Some(row),
                }) => (got, row),
                Some(FirstLook { got, row: None }) => (got, self.lock.read_row(&client).await?),
                None => {
                    // The row is read after the advisory lock was tried, as a statement of its
                    // own (a snapshot taken once the lock is this run's), and sent with it:
                    // `biased` polls, and so sends, them in this order.
                    let (got, row) = tokio::join!(
                        biased;
                        try_advisory_lock(&client, self.lock.key),
                        self.lock.read_row(&client),
                    );
                    (got?, row?)
                }
            };
            let row = match row {
                Some(row) => Some(row),
                None => {
                    self.lock.make_row(&client).await?;
                    self.lock.read_row(&client).await?
                }
            };
            if got {
                return self.take_lease(&client, row).await.map(Some);
            }
            self.row = row.unwrap_or_default();
            if !self.end_stale_session(&client).await? {
                return Ok(None);
            }
        }
    }

    /// Ends the session of a holder whose lease ran out by the database's clock but whose
    /// session the server still keeps: its run has stopped itself (the lease is over), and
    /// the lock moves on. True when one was ended (look again, after a poll).
    async fn end_stale_session(&mut self, client: &tokio_postgres::Client) -> Result<bool, Stop> {
        let row = &self.row;
        let stale = match row.session {
            Some(s) if row.lease_ended() && row.session_holds => s,
            _ => return Ok(false),
        };
        if Instant::now() >= self.request.deadline {
            return Ok(false);
        }
        let holder = row.holder();
        tracing::warn!(
            MESSAGE_ID = report_common::message_id::STALE_SESSION_ENDED,
            HOLDER_PID = holder.pid.unwrap_or(0),
            HOLDER_HOST = holder.shown_host(),
            SESSION = stale,
            "the lease of {holder} ran out {} ago but its database session {stale} still holds the lock; ending that session",
            humantime::format_duration(round_ms(match row.lease {
                Lease::Over(ago) => ago,
                _ => Duration::ZERO,
            }))
        );
        terminate(client, stale).await?;
        self.previous.get_or_insert(holder);
        tokio::time::sleep(POLL).await;
        Ok(true)
    }

    /// With the advisory lock this run's: waits out the previous holder's lease, then takes
    /// the row with a new generation. `row`: the row as read once the advisory lock was taken.
    async fn take_lease(
        &mut self,
        client: &tokio_postgres::Client,
        row: Option<Row>,
    ) -> Result<Taken<HeldPostgres>, Stop> {
        let mut read = Some(row);
        loop {
            let row = match read.take() {
                Some(row) => row,
                None => self.lock.read_row(client).await?,
            };
            let Some(row) = row else {
                return Err(Stop::Refused(PgRefusal::Unavailable(format!(
                    "the row of the lock \"{}\" on {} was deleted while this run took the lock; the next run creates it again",
                    self.lock.lock_name, self.lock.target
                ))));
            };
            if self.wait_out_lease(client, &row).await? {
                continue;
            }
            if let Some(why) = self.lock.fencing_refusal(row.generation) {
                unlock(client, self.lock.key).await;
                return Err(Stop::Refused(PgRefusal::Unavailable(why)));
            }
            let sent = Instant::now();
            match self.update_row(client, &row).await? {
                Some((generation, fence)) => return Ok(self.hold(generation, fence, sent, row)),
                // The row changed since it was read: read it again.
                None => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Waits out a lease in `row` that may still run (true: look at the row again), or refuses
    /// the lock when it outlasts the run's deadline.
    ///
    /// A lease that cannot be real was written by hand or by a hostile host, over the lease of
    /// whichever holder had the lock: that one may still be collecting for as long as its own
    /// lease, which a fleet shares. So it is waited out as this run's own lease from now (this
    /// run holds the advisory lock, so no lease is renewed meanwhile), once, and then the lock
    /// is taken over.
    async fn wait_out_lease(
        &mut self,
        client: &tokio_postgres::Client,
        row: &Row,
    ) -> Result<bool, Stop> {
        let backend = self.session.as_ref().map(|s| s.backend);
        let other = row.session != backend;
        let untrusted = row.lease == Lease::Untrusted && other && !self.waited_untrusted;
        if !((row.live() && other) || untrusted) {
            return Ok(false);
        }
        let remaining = if untrusted {
            self.lock.lease
        } else {
            row.remaining()
        };
        let wait = remaining + WAIT_MARGIN;
        // The advisory lock is this run's own now: the row names the one waited out.
        let holder = row.recorded_holder();
        if Instant::now() + wait > self.request.deadline {
            unlock(client, self.lock.key).await;
            return Err(Stop::Refused(PgRefusal::LeaseOutlastsDeadline {
                holder,
                remaining,
            }));
        }
        if untrusted {
            tracing::warn!(
                HOLDER_PID = holder.pid.unwrap_or(0),
                HOLDER_HOST = holder.shown_host(),
                "the lock {} is free, but the lease in its row cannot be real (declined above): its last holder, {holder}, may still be collecting for as long as a lease, so this run waits out its own lease ({}) and then takes the lock over",
                RunLock::describe(&self.lock),
                humantime::format_duration(round_ms(wait))
            );
            self.waited_untrusted = true;
        } else {
            tracing::info!(
                HOLDER_PID = holder.pid.unwrap_or(0),
                HOLDER_HOST = holder.shown_host(),
                "the lock {} is free, but the lease of its last holder, {holder}, runs {} more by the database's clock: that run may still be collecting, so this one waits it out",
                RunLock::describe(&self.lock),
                humantime::format_duration(round_ms(wait))
            );
        }
        self.previous.get_or_insert(holder);
        tokio::time::sleep(wait).await;
        Ok(true)
    }

    /// Writes this run into the row as its holder with the next generation; `None` when the
    /// row changed since `row` was read. Taken over: a lease that cannot be real once it was
    /// waited out ($6), and a ticket that failed the check is cleared ($8), so no later run
    /// meets it. The generation only increases: never past its largest value. The taker of
    /// every [`SLOT_PRUNE_EVERY`]th generation also deletes slot claims older than
    /// [`SLOT_RETENTION_DAYS`], in a statement sent with the take (no round trip of its own)
    /// whose loss in a crash of the database is harmless ([`Commit::Unflushed`]), and whose
    /// failure is ignored: a later taker prunes them.
    async fn update_row(
        &self,
        client: &tokio_postgres::Client,
        row: &Row,
    ) -> Result<Option<(i64, Option<Fence>)>, tokio_postgres::Error> {
        let lease = self.lock.lease.as_secs_f64();
        let longest = LEASE_RANGE.1.as_secs_f64();
        let slot: Option<SystemTime> = self.request.slot.map(Timestamp::system_time);
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let params: &Params = &[
            (&self.lock.lock_name, Type::TEXT),
            (&self.lock.host, Type::TEXT),
            (&pid, Type::INT4),
            (&lease, Type::FLOAT8),
            (&slot, Type::TIMESTAMPTZ),
            (&self.waited_untrusted, Type::BOOL),
            (&longest, Type::FLOAT8),
            (&row.ticket_declined, Type::BOOL),
        ];
        let take = client.query_typed_opt(
            "UPDATE report_collector_lock SET holder_host = $2, holder_pid = $3, \
                 since = clock_timestamp(), session = pg_backend_pid(), \
                 generation = generation + 1, lock_id = COALESCE(lock_id, gen_random_uuid()), \
                 lease_until = clock_timestamp() + make_interval(secs => $4), slot = $5, \
                 ticket = CASE WHEN $8 THEN NULL ELSE ticket END, \
                 ticket_requested = CASE WHEN $8 THEN NULL ELSE ticket_requested END, \
                 ticket_host = CASE WHEN $8 THEN NULL ELSE ticket_host END, \
                 ticket_pid = CASE WHEN $8 THEN NULL ELSE ticket_pid END, \
                 ticket_saving_generation = \
                   CASE WHEN $8 THEN NULL ELSE ticket_saving_generation END, \
                 ticket_saved_by_host = CASE WHEN $8 THEN NULL ELSE ticket_saved_by_host END \
                 WHERE name = $1 AND generation < 9223372036854775807 \
                   AND (lease_until IS NULL OR lease_until <= clock_timestamp() \
                   OR session = pg_backend_pid() \
                   OR ($6 AND lease_until > clock_timestamp() + make_interval(secs => $7))) \
                 RETURNING generation, lock_id::text, \
                   ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint",
            params,
        );
        let prune = self.prune_slots(client, row.generation.unwrap_or(0).saturating_add(1));
        // `biased`: sent in this order, the take first.
        let (updated, ()) = tokio::join!(biased; take, prune);
        let Some(row) = updated? else {
            return Ok(None);
        };
        let generation: i64 = row.try_get(0)?;
        let id: Option<String> = row.try_get(1)?;
        let timeline: i64 = row.try_get(2)?;
        Ok(Some((generation, self.fence_of(generation, id, timeline))))
    }

    /// The taker of the `generation`th generation, every [`SLOT_PRUNE_EVERY`]th, deletes old
    /// slot claims (see [`Self::update_row`]).
    async fn prune_slots(&self, client: &tokio_postgres::Client, generation: i64) {
        if generation % SLOT_PRUNE_EVERY != 0 {
            return;
        }
        let sql = Commit::Unflushed.sql(
            "DELETE FROM report_collector_slot WHERE name = $1 \
             AND slot < clock_timestamp() - make_interval(days => $2)",
        );
        let _ = client
            .execute_typed(
                &sql,
                &[
                    (&self.lock.lock_name, Type::TEXT),
                    (&SLOT_RETENTION_DAYS, Type::INT4),
                ],
            )
            .await;
    }

    /// The fence of a take: the lock's id from its row, and the token (the timeline the
    /// database was on when it counted the generation, then the generation). After a failover
    /// the promoted standby is on a higher timeline, so its tokens compare above every token
    /// the old primary handed out, even where it lost the old primary's last generations.
    /// `None` where the row's values cannot make one (the generation is above 0 once taken,
    /// the id a uuid by its column's type): the run then sends its requests without one.
    fn fence_of(&self, generation: i64, id: Option<String>, timeline: i64) -> Option<Fence> {
        let id = uuid::Uuid::try_parse(id.as_deref()?).ok()?;
        Some(Fence {
            lock: LockName::lossy(&self.lock.lock_name),
            id,
            token: Token::new(
                u64::try_from(timeline).ok()?,
                u64::try_from(generation).ok()?,
            ),
        })
    }

    /// The lock taken with `generation`: the lease renewed from now on by a task of its own.
    fn hold(
        &mut self,
        generation: i64,
        fence: Option<Fence>,
        sent: Instant,
        row: Row,
    ) -> Taken<HeldPostgres> {
        let session = self.session.take().expect("a session while contending");
        let lock = &self.lock;
        let shared = Arc::new(Shared {
            client: Arc::clone(&session.client),
            backend: session.backend,
            generation,
            fence,
            lock_name: lock.lock_name.clone(),
            host: lock.host.clone(),
            lease: lock.lease,
            margin: lock.margin(),
            keys: lock.keys(),
            validity: Validity::new(sent + lock.lease - lock.margin()),
            slot: Mutex::new(None),
        });
        let renewer = tokio::spawn(renew_every(Arc::clone(&shared)));
        Taken {
            guard: HeldPostgres {
                shared,
                renewer,
                session: Some(session),
                marked: AtomicBool::new(false),
            },
            left: row.left_ticket(),
            previous: self.previous.take(),
        }
    }

    fn failed(&self, e: &tokio_postgres::Error) -> PgRefusal {
        PgRefusal::Unavailable(format!(
            "the PostgreSQL server at {} failed a statement: {}",
            self.lock.target,
            describe(e)
        ))
    }
}

/// Lets go of the advisory lock this run took but will not use.
async fn unlock(client: &tokio_postgres::Client, key: i32) {
    let _ = client
        .query_typed(
            "SELECT pg_advisory_unlock($1::int4, $2::int4)",
            &[(&ADVISORY_CLASS, Type::INT4), (&key, Type::INT4)],
        )
        .await;
}

impl Contest for PgContest {
    type Guard = HeldPostgres;

    fn poll(&self) -> Duration {
        POLL
    }

    async fn try_take(
        &mut self,
        bound: Instant,
        patient: bool,
    ) -> Result<Option<Taken<HeldPostgres>>, Refusal> {
        loop {
            if let Some(why) = self.dropped.take() {
                let (session, first) = self
                    .lock
                    .reconnect(&why, bound)
                    .await
                    .map_err(PgRefusal::Unavailable)?;
                self.session = Some(session);
                self.first = first;
            }
            let e = match self.attempt().await {
                Ok(taken) => return Ok(taken),
                Err(Stop::Refused(refusal)) => return Err(refusal.into()),
                Err(Stop::Db(e)) => e,
            };
            let client = self.client();
            if !(connection_lost(&e, &client) && (patient || self.previous.is_some())) {
                return Err(self.failed(&e).into());
            }
            // The holder's own advisory lock went with the session: contend again from the
            // start.
            self.dropped = Some(describe(&e));
        }
    }

    fn holder(&self) -> Holder {
        self.row.holder()
    }

    fn judge(&self, holder: &Holder, slot: Option<Timestamp>) -> Judgement {
        let slot = slot.map(Timestamp::system_time);
        let earlier = matches!((self.row.slot, slot), (Some(theirs), Some(ours)) if theirs < ours);
        if !earlier {
            return Judgement::Spared(Box::new(PgRefusal::NotEarlier(holder.clone())));
        }
        match self.row.session {
            Some(s) if self.row.session_holds => Judgement::Endable(i64::from(s)),
            _ => Judgement::Going,
        }
    }

    async fn end(&mut self, holder: &Holder, id: i64, step: Step) -> Result<(), Refusal> {
        // Ending a session is final: its lease is waited out by taking the lock.
        if step == Step::Force {
            return Ok(());
        }
        let session = i32::try_from(id).unwrap_or(0);
        tracing::info!(
            MESSAGE_ID = report_common::message_id::HOLDER_REPLACED,
            HOLDER_PID = holder.pid.unwrap_or(0),
            HOLDER_HOST = holder.shown_host(),
            ENDED_BY = "session",
            "policy replace: ending the run holding the lock, {holder}, by ending its database session {session}; its lease is then waited out"
        );
        let client = self.client();
        terminate(&client, session)
            .await
            .map_err(|e| self.failed(&e).into())
    }
}

/// The PostgreSQL lock as a run and `status` see it: opened for a request into a
/// [`PgContest`], its holder and left ticket read from the row.
impl RunLock for PostgresLock {
    type Guard = HeldPostgres;
    type Contest = PgContest;

    async fn open(&self, request: &Request) -> Result<PgContest, Refusal> {
        let (session, first) = self.open().await.map_err(PgRefusal::Unavailable)?;
        Ok(PgContest::new(self.clone(), *request, session, first))
    }

    async fn holder(&self) -> io::Result<Option<Holder>> {
        let row = self.status_row().await?;
        Ok(row.held().then(|| row.holder()))
    }

    async fn left_ticket(&self) -> io::Result<Option<LeftTicket>> {
        let row = self.status_row().await?;
        Ok(if row.held() { None } else { row.left_ticket() })
    }

    async fn fleet_last_collection(&self) -> io::Result<Option<FleetCollection>> {
        let row = self.status_row().await?;
        Ok(row.last_at.map(|at| FleetCollection {
            at: Timestamp::from(at),
            host: row.last_host.unwrap_or_default(),
            report: row.last_report.unwrap_or_default(),
        }))
    }

    fn describe(&self) -> String {
        format!("\"{}\" (PostgreSQL at {})", self.lock_name, self.target)
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn shared(&self) -> bool {
        true
    }
}

/// What stood in the way of the PostgreSQL lock, beyond the policies' own refusals.
#[derive(Debug)]
pub enum PgRefusal {
    /// Under `replace`: the holder's slot is not earlier than this run's, so it is left to
    /// finish.
    NotEarlier(Holder),
    /// The lock's previous holder may still be running (its lease is live) and the run
    /// deadline would pass before the lease ends.
    LeaseOutlastsDeadline { holder: Holder, remaining: Duration },
    /// The database cannot be reached, refused this collector, or holds a row no run can
    /// take.
    Unavailable(String),
}

impl BackendRefusal for PgRefusal {
    fn is_skip(&self) -> bool {
        !matches!(self, PgRefusal::Unavailable(_))
    }

    fn unreachable(&self) -> bool {
        matches!(self, PgRefusal::Unavailable(_))
    }

    fn holder(&self) -> Option<&Holder> {
        match self {
            PgRefusal::NotEarlier(holder) | PgRefusal::LeaseOutlastsDeadline { holder, .. } => {
                Some(holder)
            }
            PgRefusal::Unavailable(_) => None,
        }
    }

    fn describe(&self, lock: &str, request: &Request, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgRefusal::NotEarlier(holder) => write!(
                f,
                "the lock {lock} is held by {holder}, whose slot is not earlier than this run's, so policy replace left it to finish"
            ),
            PgRefusal::LeaseOutlastsDeadline { holder, remaining } => write!(
                f,
                "the lock {lock} was last held by {holder}, whose lease runs {} more, past this run's deadline ({}); that run may still be collecting, so this one does not",
                humantime::format_duration(round_ms(*remaining)),
                humantime::format_duration(request.deadline_setting)
            ),
            PgRefusal::Unavailable(why) => write!(f, "cannot use the lock {lock}: {why}"),
        }
    }
}
