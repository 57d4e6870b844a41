//! The shared lock: collectors on several hosts keep apart through one PostgreSQL database.
//!
//! The lease in the lock's row is the truth; the session advisory lock is the fast path. An
//! advisory lock alone is not enough: the server frees it when it drops the holder's session,
//! which it does when the host is partitioned away only after keepalives give up (or at once,
//! when another host ends that session), while the holder itself, paused or cut off, may still
//! be collecting. So a holder also keeps a lease, renewed every lease/3 by one guarded
//! statement, and trusts it only until *the instant it sent the last confirmed renewal* plus
//! the lease minus a margin, on its own monotonic clock; past that it stops at once
//! ([`LockGuard::lease_lost`]). A new holder that got the advisory lock waits until the row's
//! lease has ended by the database's clock before it collects. Every holder takes a new
//! `generation` (a fencing token), and every write of the row names it.
//!
//! Tables (created on first use, under a transaction-scoped advisory lock, so several hosts
//! starting at once do not race): `report_collector_lock` (one row per `lock-name`) and
//! `report_collector_slot` (one row per slot collected, so each slot is collected once across
//! hosts). Their columns are checked once per connection ([`tables`]), and every value of the
//! lock's row before it is used ([`row`]): any host with the database role can write them.
//!
//! The generation only ever increases: it is what keeps an ended holder's late writes out. One
//! at its largest value (`i64::MAX`, which no fleet reaches by counting: at a thousand takes a
//! second that is 292 million years) was written by hand or by a hostile host; a run does not
//! start the count again, which would hand out tokens earlier holders had, but refuses the lock
//! (exit 69) with the statement that resets it once every collector sharing it is stopped, and
//! `status` says so too.
//!
//! Every run is a process with a connection of its own, so what the lock costs is paid per run
//! (`bench/report-collector/lock.sh` measures it): the connection's start, then a manual run's
//! 11 statements in 7 round trips (a timer run's 13 in 8). First, sent together:
//! `pg_backend_pid()`, the columns check ([`tables`]), `pg_try_advisory_lock` and the row (a
//! look that counts only once the columns were found to fit); then the take; the slot claim
//! (timer runs); the ticket; the renewal and the mark before the report is written; the ticket
//! finished; the release (with the slot's collection time, for timer runs) and the advisory
//! unlock, sent together. The lock's first use also makes the tables and the row, and one take
//! in [`SLOT_PRUNE_EVERY`] prunes old slot claims, sent with it. Statements go out unprepared
//! (`query_typed`: parse, bind and execute in one flight; `query` would prepare first, a round
//! trip more, and close after: a statement is run once per connection), and those that follow
//! one another whatever the answers are sent together (`tokio::join!` with `biased`, which
//! polls, and so sends, them in order): the server runs them in that order, each in its own
//! transaction. In a new session the server's own work dominates (its caches are cold), so
//! the statements read the catalog as little as they can.
//!
//! Only the writes that must outlive a crash of the database once confirmed wait for their WAL
//! flush ([`Commit::Durable`]): the take (a generation handed out must never be handed out
//! again), the renewals (no lease may end before its holder believes it does), the mark (the
//! commit point across hosts), the slot claim, and a ticket written back unmarked after a failed
//! save (else the mark would stand for a report never written). The others commit without
//! waiting ([`Commit::Unflushed`]): a crash of the database may lose them (those of about the
//! last three `wal_writer_delay`s, 600 ms by default), which leaves the row as a run that died
//! at that point leaves it, and that the lock already handles. The ticket written: the next
//! holder does not resume it (the server keeps its report until `ticket-ttl`; nobody fetches it
//! twice). The ticket finished: after a save the row still marks it as being saved by this
//! host, so the next holder takes it as collected; after a cancel, it is resumed and found
//! gone. The release (and the slot's collection time, which the mark already set): the lease
//! runs out by itself, and `status` shows the collection before. Old slot claims: pruned later.
//! The renewal right before the mark: the mark's flush is its flush. Such a crash also ends the
//! run's session, so the run stops (its next renewal or its mark fails) before anything builds
//! on the lost write; and any commit that waits for its flush, on any host, flushes the WAL
//! written before it, lost writes included.

pub mod contest;
pub mod password;
pub mod row;
pub mod tables;
pub mod tls;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use report_common::fence::Fence;
use report_common::shown;
use report_common::ticket::Ticket;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_postgres::config::Host;
use tokio_postgres::types::{ToSql, Type};

use self::row::{Declined, Row, RowValues};
use self::tables::Shape;
pub use self::tls::MAX_CA_FILE_SIZE;
use self::tls::tls_config;

use super::guard::{Collection, LeaseLost, LockGuard, SlotTaken};
use crate::config::{PostgresConfig, Tls};
use crate::time::{Timestamp, format_time, round_ms};

/// The first key of every advisory lock this program takes ('RC'), so that other programs'
/// advisory locks in the same database do not collide with ours.
pub const ADVISORY_CLASS: i32 = 0x5243;
/// The transaction-scoped advisory lock that serialises schema creation.
const SCHEMA_LOCK: i64 = 0x5243_0000_5343_4845;
/// How often a run that wants a busy lock looks again.
const POLL: Duration = Duration::from_millis(200);
/// Beyond the end of a live lease by the database's clock, before a new holder collects:
/// statements take time to travel.
const WAIT_MARGIN: Duration = Duration::from_millis(250);
/// Bound on `status` and on releasing: the database must not hold them up.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Slot claims older than this are deleted by a run that takes the lock, one take in
/// [`SLOT_PRUNE_EVERY`].
const SLOT_RETENTION_DAYS: i32 = 7;
/// The takes (by generation) whose taker also prunes old slot claims: a DELETE is a statement
/// a run's new session plans (about 0.3 ms), and on most takes it would find nothing or the
/// one claim that just turned old (a timer claims a slot a minute). Claims are kept at least
/// [`SLOT_RETENTION_DAYS`], and no run asks for a slot that old.
const SLOT_PRUNE_EVERY: i64 = 64;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS report_collector_lock (
    name text PRIMARY KEY,
    holder_host text,
    holder_pid integer,
    since timestamptz,
    session integer,
    generation bigint NOT NULL DEFAULT 0,
    lease_until timestamptz,
    slot timestamptz,
    ticket text,
    ticket_requested timestamptz,
    ticket_host text,
    ticket_pid integer,
    last_collected_at timestamptz,
    last_collected_host text,
    last_report text
);
CREATE TABLE IF NOT EXISTS report_collector_slot (
    name text NOT NULL,
    slot timestamptz NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    generation bigint NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    collected_at timestamptz,
    PRIMARY KEY (name, slot)
);
ALTER TABLE report_collector_lock ADD COLUMN IF NOT EXISTS ticket_saving_generation bigint;
ALTER TABLE report_collector_lock ADD COLUMN IF NOT EXISTS ticket_saved_by_host text;
ALTER TABLE report_collector_lock ADD COLUMN IF NOT EXISTS lock_id uuid;
";

/// Whether a write's commit waits until its WAL is flushed to disk (see the module docs for
/// which do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// Confirmed once on disk: it outlives a crash of the database.
    Durable,
    /// Confirmed before its WAL is flushed: a crash of the database may lose it.
    Unflushed,
}

impl Commit {
    /// `write` (an UPDATE or a DELETE ending with its WHERE clause) as sent. Unflushed, it turns
    /// `synchronous_commit` off for its own transaction only, in the statement itself: a
    /// renewal sent meanwhile on the same session still waits for its flush.
    fn sql(self, write: &str) -> String {
        match self {
            Commit::Durable => write.to_owned(),
            Commit::Unflushed => format!(
                "WITH no_flush_wait AS MATERIALIZED \
                   (SELECT set_config('synchronous_commit', 'off', true)) \
                 {write} AND EXISTS (SELECT FROM no_flush_wait)"
            ),
        }
    }
}

/// A statement's parameters, each with its type: statements are sent unprepared
/// ([`Client::query_typed`]).
type Params<'a> = [(&'a (dyn ToSql + Sync), Type)];

/// Whether `session` holds this lock's advisory lock, by `pg_locks` ($2, $3: the keys). The
/// statements call the functions under the views `pg_locks` and `pg_stat_activity`
/// (`pg_lock_status()`, `pg_stat_get_activity(pid)`) themselves: the same rows, but a new
/// session, as every run's is, plans them in half the time, with no view to expand and no
/// catalog to join.
const HOLDS: &str = "EXISTS (SELECT 1 FROM pg_lock_status() k WHERE k.locktype = 'advisory' AND k.granted \
     AND k.classid::int8 = $2 AND k.objid::int8 = $3 AND k.objsubid = 2 AND k.pid = ";

/// The PostgreSQL backend: where the database is, and this host's part in the lock.
#[derive(Debug, Clone)]
pub struct PostgresLock {
    /// Whether a password file was read (none is, when neither `password-file` nor the
    /// systemd credential is there).
    password_file_read: bool,
    pg: tokio_postgres::Config,
    tls: Option<Arc<rustls::ClientConfig>>,
    lock_name: String,
    host: String,
    lease: Duration,
    connect_timeout: Duration,
    /// How messages name the server: `host:port` or the socket directory.
    target: String,
    key: i32,
    /// The columns whose declined values this process has said already: one journal line
    /// each, however often a waiting run reads the row.
    said: Arc<Mutex<Vec<&'static str>>>,
}

impl PostgresLock {
    /// Reads the password file and the CA file `config` names; an error is a sentence for an
    /// operator (a configuration problem, exit 78). The only place the password is read: a
    /// run started as root calls this only once it has become the lock directory's owner
    /// (see `identity`).
    pub fn from_config(config: &PostgresConfig) -> Result<PostgresLock, String> {
        let mut pg: tokio_postgres::Config = config
            .connect
            .parse()
            .map_err(|e| format!("postgres.connect: {e}"))?;
        let password_file = password::password_file(config);
        if let Some(path) = &password_file {
            let password = password::read_password_file(path)
                .map_err(|m| format!("key `postgres.password-file`: {m}"))?;
            pg.password(password);
        }
        let host = config.host_name();
        pg.application_name(format!("report-collector {host}:{}", std::process::id()));
        let tcp = pg.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_)));
        // Failures of a partitioned peer are noticed by TCP within about the lease, not the
        // kernel's default of hours.
        let lease = config.lease;
        pg.connect_timeout(config.connect_timeout)
            .keepalives(true)
            .keepalives_idle(lease.div_f64(3.0).max(Duration::from_secs(1)))
            .keepalives_interval(lease.div_f64(9.0).max(Duration::from_secs(1)))
            .keepalives_retries(3)
            .tcp_user_timeout(lease);
        let tls = if tcp && config.tls == Tls::VerifyFull {
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
            let tls = tls_config(&config.tls_ca_file()).map_err(|m| {
                format!(
                    "key `postgres.tls-ca-file`: {m}; name a PEM file of the CA that signed the server's certificate, or install ca-certificates"
                )
            })?;
            Some(Arc::new(tls))
        } else {
            pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
            None
        };
        let target = describe_target(&pg);
        Ok(PostgresLock {
            password_file_read: password_file.is_some(),
            pg,
            tls,
            lock_name: config.lock_name.clone(),
            host,
            lease,
            connect_timeout: config.connect_timeout,
            target,
            key: lock_key(&config.lock_name),
            said: Arc::default(),
        })
    }

    /// What `check-config` could not check: a password file it did not see, because a run in
    /// the unit may well have one (the credential is shown to the service only).
    pub fn unchecked(&self) -> Vec<String> {
        if self.password_file_read {
            return Vec::new();
        }
        vec![format!(
            "no password file checked: postgres.password-file is unset and there is no $CREDENTIALS_DIRECTORY/{} here (LoadCredential= shows it to the service only); to check the file the unit loads, run CREDENTIALS_DIRECTORY=<its directory> report-collector check-config",
            password::CREDENTIAL_NAME
        )]
    }

    /// The host name this collector writes into the row.
    pub fn host(&self) -> &str {
        &self.host
    }

    fn margin(&self) -> Duration {
        self.lease / 5
    }

    /// Connects, makes sure the tables exist, of the columns this version uses, and takes a
    /// first look at the lock: the advisory lock tried, then the row read. The look goes out
    /// with the columns check, in one round trip, and counts only once the columns were found
    /// to fit: its row is decoded (and its values said) only then, and a run whose tables do
    /// not fit fails, which ends its session and so frees an advisory lock it got. The lock's
    /// row is made by the first run that finds none ([`PostgresLock::make_row`]).
    async fn open(&self) -> Result<(Session, Option<FirstLook>), String> {
        let (session, shape, got, row) = self.connect_and_look().await?;
        let row = self.prepare_tables(&session.client, shape, row).await?;
        // A look that failed is taken again by the contest (a row that failed, read again).
        let first = got.ok().map(|got| FirstLook {
            got,
            row: row.and_then(|row| {
                row.and_then(|r| r.map(|r| self.decode_row(&r)).transpose())
                    .ok()
            }),
        });
        Ok((session, first))
    }

    /// Connects and sends, in one round trip, the columns check and the first look (the
    /// advisory lock tried, then the row read), bounded by `connect-timeout`.
    async fn connect_and_look(
        &self,
    ) -> Result<(Session, ShapeAnswer, LockAnswer, RowAnswer), String> {
        let opened = async {
            let mut session = self.connect().await?;
            let client = Arc::clone(&session.client);
            // `biased`: polled, and so sent, in this order.
            let (backend, shape, got, row) = tokio::join!(
                biased;
                client.query_typed_one("SELECT pg_backend_pid()", &[]),
                columns(&client),
                try_advisory_lock(&client, self.key),
                self.fetch_row(&client),
            );
            session.backend = backend
                .and_then(|r| r.try_get(0))
                .map_err(|e| self.connect_failed(&e))?;
            Ok::<_, String>((session, shape, got, row))
        };
        tokio::time::timeout(self.connect_timeout + Duration::from_secs(1), opened)
            .await
            .map_err(|_| {
                format!(
                    "no answer from the PostgreSQL server at {} within connect-timeout ({}); check that it runs and that this host reaches it",
                    self.target,
                    humantime::format_duration(self.connect_timeout)
                )
            })?
    }

    /// Makes the tables when they lack columns (under a transaction-scoped advisory lock), then
    /// holds them to this version's shape; the first look's row, unless the tables were made
    /// after it was read (`None`: read it again).
    async fn prepare_tables(
        &self,
        client: &Client,
        shape: ShapeAnswer,
        row: RowAnswer,
    ) -> Result<Option<RowAnswer>, String> {
        let prepare = async {
            let mut shape = shape?;
            let mut row = Some(row);
            if shape.lacks_columns() {
                client
                    .batch_execute(&format!(
                        "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA} COMMIT;"
                    ))
                    .await?;
                shape = columns(client).await?;
                // Read before the tables were made: read again.
                row = None;
            }
            Ok::<_, tokio_postgres::Error>((shape, row))
        };
        match tokio::time::timeout(STATUS_TIMEOUT, prepare).await {
            Ok(Ok((Shape::Fits, row))) => Ok(row),
            Ok(Ok((Shape::Differs(mismatches), _))) => {
                Err(tables::describe(&self.target, &mismatches))
            }
            Ok(Ok((Shape::Absent, _))) => Err(format!(
                "the tables report_collector_lock and report_collector_slot on {} are not there after creating them: check this role's search_path",
                self.target
            )),
            Ok(Err(e)) => Err(format!(
                "cannot create or use the tables report_collector_lock and report_collector_slot on {}: {}; grant this role CREATE on the schema (see the README, \"Several hosts\") or create them as the owner",
                self.target,
                describe(&e)
            )),
            Err(_) => Err(format!(
                "the PostgreSQL server at {} did not answer within {} while preparing the lock's tables",
                self.target,
                humantime::format_duration(STATUS_TIMEOUT)
            )),
        }
    }

    fn connect_failed(&self, e: &tokio_postgres::Error) -> String {
        format!(
            "cannot connect to the PostgreSQL server at {} as user {}: {}; check that the server is up and reachable from this host, postgres.connect, pg_hba.conf and the password file",
            self.target,
            self.pg.get_user().unwrap_or("(unset)"),
            describe(e)
        )
    }

    /// Connects; the session's backend pid is learnt by [`PostgresLock::open`].
    async fn connect(&self) -> Result<Session, String> {
        let failed = |e: tokio_postgres::Error| self.connect_failed(&e);
        let (client, task) = match &self.tls {
            Some(tls) => {
                let make = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                let (client, connection) = self.pg.connect(make).await.map_err(failed)?;
                (client, tokio::spawn(drive(connection)))
            }
            None => {
                let (client, connection) = self
                    .pg
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(failed)?;
                (client, tokio::spawn(drive(connection)))
            }
        };
        Ok(Session {
            client: Arc::new(client),
            backend: 0,
            task,
        })
    }

    /// The lock's row, every value checked ([`row::decode`]); `None` when there is none. Each
    /// column's declined value is said once a process. Text is cut short in SQL, so a huge
    /// value never crosses the wire.
    async fn read_row(&self, client: &Client) -> Result<Option<Row>, tokio_postgres::Error> {
        match self.fetch_row(client).await? {
            Some(r) => self.decode_row(&r).map(Some),
            None => Ok(None),
        }
    }

    /// The lock's row as the database answers it, not yet decoded ([`PostgresLock::read_row`]).
    async fn fetch_row(
        &self,
        client: &Client,
    ) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        let sql = format!(
            "SELECT clock_timestamp(), left(holder_host, {name}), holder_pid, since, session, \
             generation, lease_until, left(lease_until::text, 64), slot, \
             left(ticket, {ticket}), octet_length(ticket), ticket_requested, \
             left(ticket_host, {name}), ticket_pid, last_collected_at, \
             left(last_collected_host, {name}), left(last_report, {name}), \
             COALESCE({HOLDS} l.session), false), \
             h.pid, \
             (SELECT left(a.application_name, {name}) FROM pg_stat_get_activity(h.pid) a \
               WHERE a.pid = h.pid), \
             ticket_saving_generation, left(ticket_saved_by_host, {name}) \
             FROM report_collector_lock l \
             LEFT JOIN (SELECT k.pid FROM pg_lock_status() k WHERE k.locktype = 'advisory' \
               AND k.granted AND k.classid::int8 = $2 AND k.objid::int8 = $3 AND k.objsubid = 2 \
               LIMIT 1) h ON true \
             WHERE name = $1",
            name = row::NAME_READ,
            ticket = row::TICKET_READ,
        );
        let (k1, k2) = self.keys();
        client
            .query_typed_opt(
                &sql,
                &[
                    (&self.lock_name, Type::TEXT),
                    (&k1, Type::INT8),
                    (&k2, Type::INT8),
                ],
            )
            .await
    }

    /// [`PostgresLock::fetch_row`]'s answer checked ([`row::decode`]).
    fn decode_row(&self, r: &tokio_postgres::Row) -> Result<Row, tokio_postgres::Error> {
        let values = RowValues {
            now: r.try_get(0)?,
            holder_host: r.try_get(1)?,
            holder_pid: r.try_get(2)?,
            since: r.try_get(3)?,
            session: r.try_get(4)?,
            generation: r.try_get(5)?,
            lease_until: r.try_get(6)?,
            lease_until_text: r.try_get(7)?,
            slot: r.try_get(8)?,
            ticket: r.try_get(9)?,
            ticket_bytes: r.try_get(10)?,
            ticket_requested: r.try_get(11)?,
            ticket_host: r.try_get(12)?,
            ticket_pid: r.try_get(13)?,
            last_collected_at: r.try_get(14)?,
            last_collected_host: r.try_get(15)?,
            last_report: r.try_get(16)?,
            session_holds: r.try_get(17)?,
            lock_pid: r.try_get(18)?,
            lock_application: r.try_get(19)?,
            saving_generation: r.try_get(20)?,
            saved_by_host: r.try_get(21)?,
        };
        let (row, declined) = row::decode(values);
        self.say(&declined);
        Ok(row)
    }

    /// Makes this lock's row, which a run finds missing on the lock's first use (or after an
    /// operator deleted it): free, generation 0. Only once the tables were found to fit.
    async fn make_row(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        client
            .execute_typed(
                "INSERT INTO report_collector_lock (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                &[(&self.lock_name, Type::TEXT)],
            )
            .await
            .map(drop)
    }

    /// One VALUE_DECLINED line for each declined value of a column not said before.
    fn say(&self, declined: &[Declined]) {
        let mut said = self
            .said
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for d in declined {
            if said.contains(&d.field) {
                continue;
            }
            said.push(d.field);
            d.say_of_lock(&self.lock_name);
        }
    }

    /// Connects again after the connection of a waiting run dropped (`why`), with a short
    /// back-off, until `bound`; past it the run fails as unable to reach the database.
    async fn reconnect(
        &self,
        why: &str,
        bound: Instant,
    ) -> Result<(Session, Option<FirstLook>), String> {
        tracing::info!(
            "the connection to the PostgreSQL server at {} dropped while this run waited for the lock ({why}); connecting again for up to {}",
            self.target,
            humantime::format_duration(round_ms(bound.saturating_duration_since(Instant::now())))
        );
        let mut backoff = Duration::from_millis(200);
        let mut last = why.to_owned();
        loop {
            let now = Instant::now();
            if now >= bound {
                return Err(format!(
                    "the connection dropped while this run waited for the lock, and no new one could be made within the wait's bound: {last}"
                ));
            }
            tokio::time::sleep(backoff.min(bound - now)).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            let left = bound.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.open()).await {
                Ok(Ok(opened)) => return Ok(opened),
                Ok(Err(e)) => last = e,
                Err(_) => last = "no answer in time".to_owned(),
            }
        }
    }

    fn keys(&self) -> (i64, i64) {
        (i64::from(ADVISORY_CLASS), i64::from(self.key))
    }

    /// Status' view of the row, bounded by [`STATUS_TIMEOUT`]. Tables of another shape, and a
    /// generation no run can take the lock with, are errors: runs fail on them (exit 69).
    async fn status_row(&self) -> io::Result<Row> {
        let read = async {
            let session = tokio::time::timeout(self.connect_timeout, self.connect())
                .await
                .map_err(|_| {
                    format!(
                        "no answer from the PostgreSQL server at {} within connect-timeout",
                        self.target
                    )
                })??;
            // Sent together (`biased`: in this order); the row is decoded only once the
            // columns were found to fit.
            let (shape, row) = tokio::join!(
                biased;
                columns(&session.client),
                self.fetch_row(&session.client),
            );
            let unreadable = |e: tokio_postgres::Error| {
                format!(
                    "cannot read the lock's row on {} ({})",
                    self.target,
                    describe(&e)
                )
            };
            match shape.map_err(unreadable)? {
                Shape::Fits => {}
                Shape::Absent => {
                    return Err(format!(
                        "the lock's tables are not on {} yet: no run has created them (a run creates them on first use)",
                        self.target
                    ));
                }
                Shape::Differs(mismatches) => {
                    return Err(tables::describe(&self.target, &mismatches));
                }
            }
            let row = row
                .and_then(|r| r.map(|r| self.decode_row(&r)).transpose())
                .map_err(unreadable)?;
            drop(session);
            match row {
                Some(row) => match self.fencing_refusal(row.generation) {
                    Some(why) => Err(why),
                    None => Ok(row),
                },
                None => Ok(Row::default()),
            }
        };
        match tokio::time::timeout(STATUS_TIMEOUT, read).await {
            Ok(Ok(row)) => Ok(row),
            Ok(Err(why)) => Err(io::Error::other(why)),
            Err(_) => Err(io::Error::other(format!(
                "the PostgreSQL server at {} did not answer within {}",
                self.target,
                humantime::format_duration(STATUS_TIMEOUT)
            ))),
        }
    }

    /// Why no run can take a new generation after `generation`, the row's: it is at its
    /// largest, or NULL. A fencing token must only increase, so the count is never started
    /// again here; the sentence says how an operator does it safely.
    fn fencing_refusal(&self, generation: Option<i64>) -> Option<String> {
        let what = match generation {
            Some(i64::MAX) => format!("its generation is at its largest value ({})", i64::MAX),
            Some(_) => return None,
            None => "its generation is NULL".to_owned(),
        };
        let name = self.lock_name.replace('\'', "''");
        Some(format!(
            "the row of the lock \"{}\" on {} cannot give a new holder a generation greater than every earlier one: {what}, which no collector writes (the generation is the fencing token that keeps an ended holder's writes out, and only increases); stop the collectors on every host sharing the lock (`systemctl stop report-collector.timer report-collector.service`), then reset it with `UPDATE report_collector_lock SET generation = 0, lock_id = NULL WHERE name = '{name}'`, and start them again (clearing `lock_id` makes report-apis keep a fresh mark for the new count)",
            self.lock_name, self.target
        ))
    }
}

/// The lock's tables as the database has them ([`tables::COLUMNS_SQL`]).
async fn columns(client: &Client) -> Result<Shape, tokio_postgres::Error> {
    let rows = client.query_typed(tables::COLUMNS_SQL, &[]).await?;
    let found = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<Vec<(String, String, String)>, tokio_postgres::Error>>()?;
    Ok(tables::shape(&found))
}

/// The connection's I/O, driven until the server or the client closes it.
async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!("the connection to the lock's database ended: {e}");
    }
}

fn describe_target(pg: &tokio_postgres::Config) -> String {
    let ports = pg.get_ports();
    pg.get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// An error of the client, with the server's own words when it sent some.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

/// FNV-1a of the lock name, kept to 31 bits: stable across builds and hosts (unlike std's
/// hasher), and the same number wherever `pg_locks` shows it.
pub fn lock_key(name: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    i32::try_from(hash & 0x7fff_ffff).unwrap_or(0)
}

/// One connection to the database; the server frees the session's advisory lock when it ends.
#[derive(Debug)]
struct Session {
    client: Arc<Client>,
    /// `pg_backend_pid()` when connected: the session the row names.
    backend: i32,
    task: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether a failed statement means the connection itself is gone (the server restarted or
/// ended the session), not a statement the server refused.
fn connection_lost(e: &tokio_postgres::Error, client: &Client) -> bool {
    let class = e.code().map(|c| &c.code()[..2]);
    client.is_closed() || e.is_closed() || matches!(class, Some("08" | "57"))
}

/// `pg_try_advisory_lock` of this program's class and `key`: whether this session got it.
async fn try_advisory_lock(client: &Client, key: i32) -> Result<bool, tokio_postgres::Error> {
    client
        .query_typed_one(
            "SELECT pg_try_advisory_lock($1::int4, $2::int4)",
            &[(&ADVISORY_CLASS, Type::INT4), (&key, Type::INT4)],
        )
        .await?
        .try_get(0)
}

/// Says that `slot`, claimed by pid `pid` on `host` (written by another host: shown escaped),
/// which stopped before saving its report, is taken over by this run.
fn say_slot_taken_over(host: &str, pid: i32, slot: SystemTime) {
    let host = shown::plain_or_quoted(host, row::NAME_MAX);
    tracing::warn!(
        MESSAGE_ID = report_common::message_id::SLOT_TAKEN_OVER,
        HOLDER_HOST = &*host,
        HOLDER_PID = pid,
        SLOT = %format_time(slot),
        "slot {} was claimed by pid {pid} on host {host}, which stopped before saving its report: this run takes the slot over",
        format_time(slot)
    );
}

/// The answers of the first round trip: the columns check, the advisory lock tried, the row.
type ShapeAnswer = Result<Shape, tokio_postgres::Error>;
type LockAnswer = Result<bool, tokio_postgres::Error>;
type RowAnswer = Result<Option<tokio_postgres::Row>, tokio_postgres::Error>;

/// What [`PostgresLock::open`] saw of the lock, for the contest's first attempt.
#[derive(Debug)]
struct FirstLook {
    /// This session got the advisory lock.
    got: bool,
    /// The row, read after the advisory lock was tried (`Some(None)`: there is none yet);
    /// `None`: it could not be used, and is read again.
    row: Option<Option<Row>>,
}

/// Ends a database session by its backend pid; the server checks that this role may.
async fn terminate(client: &Client, backend: i32) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed("SELECT pg_terminate_backend($1)", &[(&backend, Type::INT4)])
        .await
        .map(drop)
}

/// What the guard and its renewing task share.
#[derive(Debug)]
struct Shared {
    client: Arc<Client>,
    backend: i32,
    generation: i64,
    fence: Option<Fence>,
    lock_name: String,
    host: String,
    lease: Duration,
    margin: Duration,
    keys: (i64, i64),
    validity: Validity,
    slot: Mutex<Option<SystemTime>>,
}

/// How long a holder may still act, on this process's monotonic clock: until the instant the
/// last confirmed renewal was *sent*, plus the lease, less the margin. Once that passes, or
/// the database says the lease is gone, it is lost for good: a renewal confirmed later does
/// not make the run the holder again, since another host may have waited the lease out
/// meanwhile.
#[derive(Debug)]
struct Validity {
    until: Mutex<Instant>,
    lost: Mutex<Option<String>>,
}

impl Validity {
    fn new(until: Instant) -> Validity {
        Validity {
            until: Mutex::new(until),
            lost: Mutex::new(None),
        }
    }

    fn until(&self) -> Instant {
        *self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lose(&self, why: String) {
        self.lost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(why);
    }

    /// `expired` words the loss when validity simply ran out.
    fn check(&self, expired: impl FnOnce() -> String) -> Result<(), LeaseLost> {
        let lost = self
            .lost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(why) = lost {
            return Err(LeaseLost { why });
        }
        if Instant::now() >= self.until() {
            let why = expired();
            self.lose(why.clone());
            return Err(LeaseLost { why });
        }
        Ok(())
    }

    /// A renewal sent at `sent` was confirmed: valid until `sent + span`, unless already lost.
    fn confirmed(&self, sent: Instant, span: Duration, expired: impl FnOnce() -> String) {
        if self.check(expired).is_ok() {
            let mut until = self
                .until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *until = (*until).max(sent + span);
        }
    }

    /// Completes once the lease is lost; `expired` as in [`Validity::check`].
    async fn lost(&self, expired: impl Fn() -> String) -> LeaseLost {
        loop {
            if let Err(lost) = self.check(&expired) {
                return lost;
            }
            // Woken at the end of validity, and between, to see a loss the database reported.
            let next = self
                .until()
                .min(Instant::now() + Duration::from_millis(100));
            tokio::time::sleep_until(next).await;
        }
    }
}

impl Shared {
    fn lose(&self, why: String) {
        self.validity.lose(why);
    }

    fn expired(&self) -> String {
        format!(
            "the lease of host {} on the lock \"{}\" was not confirmed for {} (lease {} less margin {}): this process was paused or cut off from the database, and another host may have taken the lock",
            self.host,
            self.lock_name,
            humantime::format_duration(self.lease - self.margin),
            humantime::format_duration(self.lease),
            humantime::format_duration(self.margin),
        )
    }

    fn check(&self) -> Result<(), LeaseLost> {
        self.validity.check(|| self.expired())
    }

    /// One renewal round trip; a confirmed one moves `valid_until` on. `commit`: durable, but
    /// for the renewal right before the mark, whose flush is the mark's (`HeldPostgres`'s
    /// [`LockGuard::commit`]).
    async fn renew(&self, commit: Commit) {
        if self.check().is_err() {
            return;
        }
        let sent = Instant::now();
        let update = format!(
            "UPDATE report_collector_lock SET lease_until = clock_timestamp() + make_interval(secs => $4) \
             WHERE name = $1 AND generation = $5 AND session = pg_backend_pid() \
             AND lease_until > clock_timestamp() \
             AND {HOLDS} pg_backend_pid())"
        );
        let sql = format!("{} RETURNING pg_backend_pid()", commit.sql(&update));
        let lease = self.lease.as_secs_f64();
        let answer = tokio::time::timeout(
            self.lease - self.margin,
            self.client.query_typed_opt(
                &sql,
                &[
                    (&self.lock_name, Type::TEXT),
                    (&self.keys.0, Type::INT8),
                    (&self.keys.1, Type::INT8),
                    (&lease, Type::FLOAT8),
                    (&self.generation, Type::INT8),
                ],
            ),
        )
        .await;
        match answer {
            Ok(Ok(Some(_))) => {
                self.validity
                    .confirmed(sent, self.lease - self.margin, || self.expired());
            }
            Ok(Ok(None)) => {
                let why = self.why_not_renewed().await;
                self.lose(why);
            }
            Ok(Err(e)) if self.client.is_closed() => self.lose(format!(
                "the database session of this run ended ({}): another host or an operator ended it, or the server went away",
                describe(&e)
            )),
            Ok(Err(e)) => {
                tracing::warn!("cannot renew the lease of the lock \"{}\": {}", self.lock_name, describe(&e));
            }
            Err(_) => tracing::warn!(
                "the database did not confirm the lease of the lock \"{}\" in time",
                self.lock_name
            ),
        }
    }

    /// The release's statements: the slot's collection time, the row no longer naming this
    /// run (and keeping the fleet's last collection), the advisory lock.
    async fn release_statements(
        &self,
        at: Option<SystemTime>,
        slot: Option<SystemTime>,
        report: Option<String>,
    ) -> Result<(), tokio_postgres::Error> {
        // Each committed without waiting for its flush (see the module docs). Sent together:
        // `biased` polls, and so sends, them in this order, and the advisory lock goes last,
        // once the row no longer names this run.
        let collected_slot = async {
            let (Some(at), Some(slot)) = (at, slot) else {
                return Ok(0);
            };
            let sql = Commit::Unflushed.sql(
                "UPDATE report_collector_slot SET collected_at = $4 \
                 WHERE name = $1 AND slot = $2 AND generation = $3",
            );
            let params: &Params = &[
                (&self.lock_name, Type::TEXT),
                (&slot, Type::TIMESTAMPTZ),
                (&self.generation, Type::INT8),
                (&at, Type::TIMESTAMPTZ),
            ];
            self.client.execute_typed(&sql, params).await
        };
        let row = async {
            let sql = Commit::Unflushed.sql(
                "UPDATE report_collector_lock SET holder_host = NULL, holder_pid = NULL, \
                 since = NULL, session = NULL, lease_until = NULL, slot = NULL, \
                 last_collected_at = COALESCE($3, last_collected_at), \
                 last_collected_host = CASE WHEN $3::timestamptz IS NULL THEN last_collected_host ELSE $4 END, \
                 last_report = COALESCE($5, last_report) \
                 WHERE name = $1 AND generation = $2 AND session = pg_backend_pid()",
            );
            let params: &Params = &[
                (&self.lock_name, Type::TEXT),
                (&self.generation, Type::INT8),
                (&at, Type::TIMESTAMPTZ),
                (&self.host, Type::TEXT),
                (&report, Type::TEXT),
            ];
            self.client.execute_typed(&sql, params).await
        };
        let unlock = async {
            let key = i32::try_from(self.keys.1).unwrap_or(0);
            self.client
                .query_typed(
                    "SELECT pg_advisory_unlock($1::int4, $2::int4)",
                    &[(&ADVISORY_CLASS, Type::INT4), (&key, Type::INT4)],
                )
                .await
        };
        let (slot, row, unlock) = tokio::join!(biased; collected_slot, row, unlock);
        slot?;
        row?;
        unlock.map(drop)
    }

    /// Who claimed `slot` before this run (and collected it, or is saving it).
    async fn slot_claimed_by(&self, slot: SystemTime) -> Result<SlotTaken, tokio_postgres::Error> {
        let by = self
            .client
            .query_typed_opt(
                "SELECT left(host, 256), pid FROM report_collector_slot \
                 WHERE name = $1 AND slot = $2",
                &[(&self.lock_name, Type::TEXT), (&slot, Type::TIMESTAMPTZ)],
            )
            .await?;
        Ok(match by {
            Some(r) => SlotTaken {
                host: r.try_get::<_, Option<String>>(0)?.map_or_else(
                    || "(unknown)".to_owned(),
                    |host| shown::plain_or_quoted(&host, row::NAME_MAX).into_owned(),
                ),
                pid: r
                    .try_get::<_, Option<i32>>(1)?
                    .and_then(|pid| u32::try_from(pid).ok())
                    .unwrap_or(0),
            },
            None => SlotTaken {
                host: "(unknown)".to_owned(),
                pid: 0,
            },
        })
    }

    /// Why the row refused a renewal: the session changed under the run (a pooler in
    /// transaction mode), or the lease is no longer this run's.
    async fn why_not_renewed(&self) -> String {
        match self
            .client
            .query_typed_one("SELECT pg_backend_pid()", &[])
            .await
            .and_then(|r| r.try_get::<_, i32>(0))
        {
            Ok(now) if now != self.backend => format!(
                "the database session changed under this run (backend {} became {now}): the connection goes through a pooler in transaction mode, which cannot keep a session's advisory lock; point postgres.connect at the server or at a PgBouncer pool with pool_mode = session",
                self.backend
            ),
            _ => format!(
                "the lock \"{}\" no longer gives this run (generation {}) a live lease: it ran out by the database's clock, or another host took the lock",
                self.lock_name, self.generation
            ),
        }
    }

    /// A guarded write of the row (`sql`, an UPDATE ending with its WHERE clause): only while
    /// this run is still the holder.
    async fn write(&self, commit: Commit, sql: &str, params: &Params<'_>) -> io::Result<()> {
        let sql = commit.sql(sql);
        let done = tokio::time::timeout(STATUS_TIMEOUT, self.client.execute_typed(&sql, params))
            .await
            .map_err(|_| io::Error::other("the database did not answer in time"))?
            .map_err(|e| io::Error::other(describe(&e)))?;
        if done == 0 {
            return Err(io::Error::other(
                "the lock's row no longer names this run (its lease was lost)",
            ));
        }
        Ok(())
    }
}

async fn renew_every(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(shared.lease / 3).await;
        shared.renew(Commit::Durable).await;
        if shared.check().is_err() {
            return;
        }
    }
}

/// The shared lock while this run holds it.
#[derive(Debug)]
pub struct HeldPostgres {
    shared: Arc<Shared>,
    renewer: JoinHandle<()>,
    session: Option<Session>,
    /// This run marked its ticket as being saved ([`HeldPostgres::mark_saving`]): a ticket
    /// written after that undoes the mark, and waits for its flush.
    marked: AtomicBool,
}

impl HeldPostgres {
    /// The fencing token this holder took.
    pub fn generation(&self) -> i64 {
        self.shared.generation
    }

    /// Marks, in one statement guarded by this holder's live lease, that it is about to write
    /// the report of `ticket`: the commit point of a collection across hosts. From then on no
    /// later holder fetches the ticket again (nor collects this run's slot), even if this run
    /// dies before it could finish the ticket.
    async fn mark_saving(&self, ticket: &Ticket) -> io::Result<()> {
        let s = &self.shared;
        let slot = *s
            .slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // One statement: the ticket is marked in the row, and the slot's claim counted as
        // collected, together or not at all, and only while the lease is live by the
        // database's clock. A later holder can take the lock only once this lease has run out,
        // so it sees the mark. A run that claimed no slot (started by hand) has no claim to
        // count, and its statement leaves the slots' table alone.
        let claim = if slot.is_some() {
            ", claim AS ( \
               UPDATE report_collector_slot SET collected_at = clock_timestamp() \
               WHERE name = $1 AND slot = $5 AND generation = $2 AND collected_at IS NULL \
                 AND EXISTS (SELECT 1 FROM mark) RETURNING 1)"
        } else {
            ""
        };
        let sql = format!(
            "WITH mark AS ( \
               UPDATE report_collector_lock SET ticket = $3, \
                 ticket_saving_generation = generation, ticket_saved_by_host = $4 \
               WHERE name = $1 AND generation = $2 AND session = pg_backend_pid() \
                 AND lease_until > clock_timestamp() RETURNING 1){claim} \
             SELECT count(*) FROM mark"
        );
        let marked = tokio::time::timeout(
            STATUS_TIMEOUT,
            s.client.query_typed_one(
                &sql,
                &[
                    (&s.lock_name, Type::TEXT),
                    (&s.generation, Type::INT8),
                    (&ticket.as_str(), Type::TEXT),
                    (&s.host, Type::TEXT),
                    (&slot, Type::TIMESTAMPTZ),
                ],
            ),
        )
        .await
        .map_err(|_| io::Error::other("the database did not answer in time"))?
        .and_then(|r| r.try_get::<_, i64>(0))
        .map_err(|e| io::Error::other(describe(&e)))?;
        if marked == 0 {
            return Err(io::Error::other(
                "the lock's row no longer gives this run a live lease",
            ));
        }
        self.marked.store(true, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for HeldPostgres {
    fn drop(&mut self) {
        // Dropped without `release` (a panic): the session's end frees the advisory lock, and
        // the lease runs out by itself.
        self.renewer.abort();
    }
}

impl LockGuard for HeldPostgres {
    async fn set_ticket(&self, ticket: &Ticket, requested: Timestamp) -> io::Result<()> {
        let requested = requested.system_time();
        let s = &self.shared;
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let commit = if self.marked.load(Ordering::Relaxed) {
            Commit::Durable
        } else {
            Commit::Unflushed
        };
        s.write(
            commit,
            "UPDATE report_collector_lock SET ticket = $3, ticket_requested = $4, \
             ticket_host = $5, ticket_pid = $6, \
             ticket_saving_generation = NULL, ticket_saved_by_host = NULL \
             WHERE name = $1 AND generation = $2 AND session = pg_backend_pid()",
            &[
                (&s.lock_name, Type::TEXT),
                (&s.generation, Type::INT8),
                (&ticket.as_str(), Type::TEXT),
                (&requested, Type::TIMESTAMPTZ),
                (&s.host, Type::TEXT),
                (&pid, Type::INT4),
            ],
        )
        .await
    }

    async fn finish_ticket(&self) -> io::Result<()> {
        let s = &self.shared;
        s.write(
            Commit::Unflushed,
            "UPDATE report_collector_lock SET ticket = NULL, ticket_requested = NULL, \
             ticket_host = NULL, ticket_pid = NULL, \
             ticket_saving_generation = NULL, ticket_saved_by_host = NULL \
             WHERE name = $1 AND generation = $2 AND session = pg_backend_pid()",
            &[(&s.lock_name, Type::TEXT), (&s.generation, Type::INT8)],
        )
        .await
    }

    async fn commit<T>(&self, ticket: &Ticket, save: impl FnOnce() -> T) -> Result<T, LeaseLost> {
        // Confirmed with a round trip first, and checked again right before the mark: a run
        // that was paused past its lease must not save what it fetched. This renewal does not
        // wait for its flush: all that relies on it is the mark, whose commit waits for the
        // flush of the WAL written before it, this renewal included. A crash of the database
        // that loses the renewal ends this run's session, so the mark fails and nothing is
        // saved; until then the lease it wrote is at most longer than the one on disk.
        self.shared.check()?;
        self.shared.renew(Commit::Unflushed).await;
        self.shared.check()?;
        self.mark_saving(ticket).await.map_err(|e| LeaseLost {
            why: format!(
                "the lock's row did not take the mark that this run saves ticket {ticket}: {e}"
            ),
        })?;
        Ok(save())
    }

    async fn claim_slot(&self, slot: Timestamp) -> io::Result<Result<(), SlotTaken>> {
        let slot = slot.system_time();
        let s = &self.shared;
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let claim = async {
            // A claim of an earlier generation that was neither collected nor marked as being
            // saved (the mark counts the claim as collected) was abandoned: this run holds the
            // lock and a live lease, so that holder has stopped, or will stop before it writes
            // anything. It is taken over, so the slot is still collected.
            let claimed = s
                .client
                .query_typed_opt(
                    "WITH before AS (SELECT host, pid FROM report_collector_slot \
                       WHERE name = $1 AND slot = $2) \
                     INSERT INTO report_collector_slot AS c (name, slot, host, pid, generation) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name, slot) DO UPDATE \
                     SET host = EXCLUDED.host, pid = EXCLUDED.pid, \
                       generation = EXCLUDED.generation, claimed_at = clock_timestamp() \
                     WHERE c.generation < EXCLUDED.generation AND c.collected_at IS NULL \
                     RETURNING left((SELECT host FROM before), 256), (SELECT pid FROM before)",
                    &[
                        (&s.lock_name, Type::TEXT),
                        (&slot, Type::TIMESTAMPTZ),
                        (&s.host, Type::TEXT),
                        (&pid, Type::INT4),
                        (&s.generation, Type::INT8),
                    ],
                )
                .await?;
            if let Some(r) = claimed {
                if let (Some(host), Some(pid)) = (
                    r.try_get::<_, Option<String>>(0)?,
                    r.try_get::<_, Option<i32>>(1)?,
                ) {
                    say_slot_taken_over(&host, pid, slot);
                }
                return Ok(Ok(()));
            }
            s.slot_claimed_by(slot).await.map(Err)
        };
        let result = tokio::time::timeout(STATUS_TIMEOUT, claim)
            .await
            .map_err(|_| io::Error::other("the database did not answer in time"))?
            .map_err(|e: tokio_postgres::Error| io::Error::other(describe(&e)))?;
        if result.is_ok() {
            *s.slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(slot);
        }
        Ok(result)
    }

    fn fence(&self) -> Option<Fence> {
        self.shared.fence.clone()
    }

    async fn lease_lost(&self) -> LeaseLost {
        self.shared.validity.lost(|| self.shared.expired()).await
    }

    async fn release(mut self, collected: Option<Collection<'_>>) {
        self.renewer.abort();
        let s = Arc::clone(&self.shared);
        let report = collected.as_ref().map(|c| {
            c.report
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let at = collected.as_ref().map(|c| c.at.system_time());
        let slot = *s
            .slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let release = s.release_statements(at, slot, report);
        match tokio::time::timeout(STATUS_TIMEOUT, release).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                "cannot release the lock \"{}\" cleanly: {}; its lease runs out by itself",
                s.lock_name,
                describe(&e)
            ),
            Err(_) => tracing::warn!(
                "the database did not answer the release of the lock \"{}\"; its lease runs out by itself",
                s.lock_name
            ),
        }
        drop(self.session.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::backend::RunLock as _;

    #[test]
    fn an_unflushed_write_turns_synchronous_commit_off_for_its_own_transaction_only() {
        let write = "UPDATE report_collector_lock SET ticket = NULL WHERE name = $1";
        assert_eq!(Commit::Durable.sql(write), write);
        let unflushed = Commit::Unflushed.sql(write);
        assert!(
            unflushed.starts_with("WITH no_flush_wait AS MATERIALIZED"),
            "{unflushed}"
        );
        // `true`: local to the transaction, which is the statement's own.
        assert!(
            unflushed.contains("set_config('synchronous_commit', 'off', true)"),
            "{unflushed}"
        );
        // Referenced, so evaluated, before a row is written.
        assert!(
            unflushed.ends_with(&format!("{write} AND EXISTS (SELECT FROM no_flush_wait)")),
            "{unflushed}"
        );
    }

    #[test]
    fn the_lock_key_is_stable_and_positive() {
        assert_eq!(lock_key("report-collector"), lock_key("report-collector"));
        assert_ne!(lock_key("report-collector"), lock_key("other-fleet"));
        for name in ["", "a", "report-collector", "ünïcode"] {
            assert!(lock_key(name) >= 0);
        }
    }

    fn expired() -> String {
        "expired".to_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn validity_runs_from_when_the_renewal_was_sent_and_once_lost_stays_lost() {
        let lease = Duration::from_secs(15);
        let span = lease - lease / 5;
        let start = Instant::now();
        let validity = Validity::new(start + span);
        tokio::time::advance(Duration::from_secs(5)).await;
        // A renewal sent at 5 s and confirmed 3 s later counts from 5 s, not 8 s.
        let sent = Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await;
        validity.confirmed(sent, span, expired);
        assert_eq!(validity.until(), sent + span);
        // The run stops exactly when that validity ends, not a lease after the confirmation.
        let lost = validity.lost(expired).await;
        assert_eq!(lost.why, "expired");
        assert_eq!(start.elapsed(), Duration::from_secs(5) + span);
        // A renewal confirmed now (a paused process, continued) does not revive it.
        validity.confirmed(Instant::now(), span, expired);
        assert!(validity.check(expired).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_loss_the_database_reports_stops_the_run_within_a_tick() {
        let validity = Validity::new(Instant::now() + Duration::from_secs(12));
        let start = Instant::now();
        let (lost, ()) = tokio::join!(validity.lost(expired), async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            validity.lose("session ended".to_owned());
        });
        assert_eq!(lost.why, "session ended");
        assert!(start.elapsed() <= Duration::from_millis(2100));
    }

    #[test]
    fn a_taker_not_yet_in_the_row_is_named_by_its_session() {
        let row = Row {
            host: Some("old-host".into()),
            pid: Some(7),
            session: Some(100),
            session_holds: false,
            lock_pid: Some(200),
            lock_application: Some("report-collector host-b:4242".into()),
            ..Row::default()
        };
        let holder = row.holder();
        assert_eq!(holder.host.as_deref(), Some("host-b"));
        assert_eq!(holder.pid, Some(4242));
        assert!(row.held());
        assert_eq!(
            holder.to_string(),
            "pid 4242 on host host-b since an unknown time with ticket (none yet)"
        );

        let free = Row {
            ticket: Ticket::new("left_0").ok(),
            ticket_pid: Some(9),
            ticket_host: Some("host-a".into()),
            ..Row::default()
        };
        assert!(!free.held());
        let left = free.left_ticket().unwrap();
        assert_eq!((left.by_pid, left.host.as_deref()), (9, Some("host-a")));
    }

    #[test]
    fn a_socket_host_is_named_by_its_socket_path() {
        let config = PostgresConfig {
            connect: "host=/tmp user=x dbname=y".to_owned(),
            tls: Tls::Disable,
            ..PostgresConfig::default()
        };
        let lock = PostgresLock::from_config(&config).unwrap();
        assert_eq!(lock.target, "/tmp/.s.PGSQL.5432");
        assert!(lock.describe().contains("report-collector"));
    }

    fn lock() -> PostgresLock {
        PostgresLock::from_config(&PostgresConfig {
            connect: "host=/tmp user=x dbname=y".to_owned(),
            tls: Tls::Disable,
            lock_name: "o'fleet".to_owned(),
            ..PostgresConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn the_ca_file_is_read_when_the_lock_is_made_and_a_bad_one_named_by_its_key() {
        let made = |ca: &std::path::Path| {
            PostgresLock::from_config(&PostgresConfig {
                connect: "host=db.example user=x dbname=y".to_owned(),
                tls_ca_file: Some(ca.to_owned()),
                ..PostgresConfig::default()
            })
        };
        let err = made(std::path::Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(err.starts_with("key `postgres.tls-ca-file`: "), "{err}");
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let err = made(&ca).unwrap_err();
        assert!(err.contains("holds no usable CA certificate"), "{err}");
        assert!(err.contains("install ca-certificates"), "{err}");
        // Sockets never use TLS: no CA file is read for them.
        PostgresLock::from_config(&PostgresConfig {
            connect: "host=/tmp user=x dbname=y".to_owned(),
            tls_ca_file: Some(ca.clone()),
            ..PostgresConfig::default()
        })
        .unwrap();
    }

    #[test]
    fn a_declined_value_is_one_line_a_column_with_the_catalog_s_fields() {
        let lock = lock();
        let huge = "x/".repeat(1 << 20);
        let (row, declined) = row::decode(RowValues {
            ticket: Some(huge[..row::TICKET_READ].to_owned()),
            ticket_bytes: Some(i32::try_from(huge.len()).unwrap()),
            ..RowValues::empty(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        });
        assert!(row.ticket_declined);
        let (captured, guard) = report_common::logging::capture::start();
        // A waiting run reads the row again and again: the value is said once.
        lock.say(&declined);
        lock.say(&declined);
        drop(guard);
        let line = crate::outcome::the_line(&captured, report_common::message_id::VALUE_DECLINED);
        assert_eq!(line["SOURCE"], "the PostgreSQL lock's row");
        assert_eq!(line["FIELD"], "ticket");
        assert_eq!(
            line["VALUE"],
            format!("\"{}\"... (2097152 bytes)", &huge[..64])
        );
        assert!(line["MESSAGE"].len() < 600, "{}", line["MESSAGE"]);
        assert!(!line["MESSAGE"].contains('\n'));
    }

    #[test]
    fn a_generation_that_cannot_increase_is_refused_with_the_statement_that_resets_it() {
        let lock = lock();
        assert_eq!(lock.fencing_refusal(Some(0)), None);
        assert_eq!(lock.fencing_refusal(Some(-5)), None);
        assert_eq!(lock.fencing_refusal(Some(i64::MAX - 1)), None);
        let why = lock.fencing_refusal(Some(i64::MAX)).unwrap();
        assert!(
            why.contains("its generation is at its largest value (9223372036854775807)"),
            "{why}"
        );
        assert!(
            why.contains(
                "`UPDATE report_collector_lock SET generation = 0, lock_id = NULL WHERE name = 'o''fleet'`"
            ),
            "{why}"
        );
        assert!(lock.fencing_refusal(None).unwrap().contains("NULL"));
    }
}
