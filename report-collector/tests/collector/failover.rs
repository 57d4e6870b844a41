//! The PostgreSQL lock across a failover of its database: a primary and a streaming standby
//! of it (`pg_basebackup -R`, [`Cluster::standby_of`]), the real report-apis on loopback (one
//! per test, its counters the evidence) and the real collector as two "hosts" of one lock.
//!
//! Host A, on the primary, takes the lock and asks for a ticket on a slow server; the primary
//! is then killed (`pg_ctl stop -m immediate`, as a crash of its machine) while A holds the
//! lock, and the standby promoted (`pg_ctl promote -w`). Right after the promotion host B,
//! whose `postgres.connect` names the promoted standby, runs: it waits out A's lease by the
//! database's clock as the replicated row has it, takes the lock with a new generation and
//! collects. A, whose database is gone, saves nothing and exits 79. Once with asynchronous
//! replication (where the standby may lack A's last writes) and once with synchronous
//! replication (`synchronous_standby_names = '*'`: commits that wait for their flush wait for
//! the standby too).
//!
//! What it rests on: a take's fencing token is (the timeline the database was on, the row's
//! generation). A promoted standby is on a new timeline (2), so every token it hands out
//! compares above every token the old primary (timeline 1) handed out, however many of the
//! old primary's last generations the standby lost. The evidence is the server's: the lock's
//! mark (`report_apis_fence_mark_epoch`, `_count`) after B, and a request sent by hand with
//! the old primary's token (A's own, and A's generation + 100), both refused with 409.
//!
//! A third case makes the standby lose A's last writes on purpose: the primary's WAL sender is
//! stopped from before A's take until the kill. B then takes A's very generation, on timeline
//! 2, at once (the row it sees has no lease), while A may still be polling: the server orders
//! the two tokens by their epoch alone.
//!
//! The lock's row is made by a first run before A's, and replicated: a fleet's lock exists
//! long before a failover. (A row whose creation itself the standby lost would get a new lock
//! id on the promoted standby, a lock the server has never seen.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use report_common::fence::{Fence, LockName, Token};
use report_common::message_id;

use crate::postgres::{LEASE, host, reports, wait_for_row};
use crate::util::cluster::{Cluster, Fleet};
use crate::util::*;

/// How long a report takes: long enough that A's ticket is still pending at the take-over.
const GENERATION: Duration = Duration::from_secs(3);
/// The standby's `application_name` (its `cluster_name`).
const STANDBY: &str = "standby";
/// The manual run every host makes.
const MANUAL: [&str; 2] = ["--trigger", "manual"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replication {
    Asynchronous,
    /// Asynchronous, with the primary's WAL sender stopped (SIGSTOP) from before A's take
    /// until the primary is killed: the standby lacks A's take and ticket, as a standby that
    /// lagged behind would.
    AsynchronousBehind,
    Synchronous,
}

impl Replication {
    fn name(self) -> &'static str {
        match self {
            Replication::Asynchronous => "async",
            Replication::AsynchronousBehind => "async-behind",
            Replication::Synchronous => "sync",
        }
    }
}

/// The lock's row as one server had it at one instant.
#[derive(Debug, Clone, PartialEq)]
struct RowSeen {
    holder: String,
    generation: u64,
    ticket: String,
    /// The lock id, without hyphens (as the fence writes it).
    lock_id: String,
    lease_until: SystemTime,
    /// What is left of the lease by that server's clock, in seconds (negative: ended).
    lease_left: f64,
}

fn row_seen(fleet: &Fleet, lock: &str) -> RowSeen {
    let text = fleet.row(
        lock,
        "COALESCE(holder_host, '') || '|' || generation || '|' || COALESCE(ticket, '') || '|' \
         || replace(lock_id::text, '-', '') || '|' \
         || COALESCE(extract(epoch from lease_until)::text, '0') || '|' \
         || COALESCE(extract(epoch from lease_until - clock_timestamp())::text, '0')",
    );
    let parts: Vec<&str> = text.split('|').collect();
    assert_eq!(parts.len(), 6, "the row of {lock}: {text:?}");
    let lease_until: f64 = parts[4].parse().unwrap();
    RowSeen {
        holder: parts[0].to_owned(),
        generation: parts[1].parse().unwrap(),
        ticket: parts[2].to_owned(),
        lock_id: parts[3].to_owned(),
        lease_until: SystemTime::UNIX_EPOCH + Duration::from_secs_f64(lease_until),
        lease_left: parts[5].parse().unwrap(),
    }
}

/// The timeline as the take reads it: the first 8 hex digits of the current WAL file's name.
fn timeline(cluster: &Cluster) -> u64 {
    cluster
        .psql(
            "postgres",
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint",
        )
        .parse()
        .unwrap()
}

/// Polls `check` every 10 ms until it is true (bounded by [`PATIENCE`]).
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < PATIENCE, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A primary (with `synchronous_standby_names = '*'` on its command line for synchronous
/// replication), its standby streaming from it, and the fleet's database made on the primary
/// (the role and schema as [`Cluster::fleet`] makes them) once the standby follows: in the
/// synchronous case, a commit waits for the standby.
fn primary_and_standby(mode: Replication, db: &str) -> (Cluster, Cluster, Fleet) {
    let options = match mode {
        Replication::Asynchronous => "",
        // The WAL sender is killed on the way (see `kill`): the server must not start again.
        Replication::AsynchronousBehind => "-c restart_after_crash=off",
        Replication::Synchronous => "-c synchronous_standby_names='*'",
    };
    let primary = Cluster::start_with(options, |_| {});
    let standby = Cluster::standby_of(&primary, STANDBY, "");
    let sync_state = match mode {
        Replication::Synchronous => "sync",
        _ => "async",
    };
    let streaming = format!("streaming|{sync_state}");
    wait_until("the standby streams", || {
        primary.psql(
            "postgres",
            &format!(
                "SELECT state || '|' || sync_state FROM pg_stat_replication \
                 WHERE application_name = '{STANDBY}'"
            ),
        ) == streaming
    });
    primary.psql("postgres", "CREATE ROLE report_collector LOGIN");
    let fleet = primary.fleet(db);
    (primary, standby, fleet)
}

/// Waits until the standby has replayed everything the primary has written so far.
fn caught_up(primary: &Cluster, standby: &Cluster) {
    let lsn = primary.psql("postgres", "SELECT pg_current_wal_lsn()");
    wait_until("the standby replays the primary's WAL", || {
        standby.psql(
            "postgres",
            &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'"),
        ) == "t"
    });
}

/// One series, if the server has it.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// The lock's mark as the server has it: (epoch, count), if it has one.
fn mark(url: &str, lock: &str, lock_id: &str) -> Option<(f64, f64)> {
    let text = metrics_text(url);
    let labels = format!("{{lock=\"{lock}\",lock_id=\"{lock_id}\"}}");
    Some((
        series(&text, &format!("report_apis_fence_mark_epoch{labels}"))?,
        series(&text, &format!("report_apis_fence_mark_count{labels}"))?,
    ))
}

/// Sends one request by hand to the server at `url`, `GET path` with `fence`: its status.
fn fenced_request(url: &str, path: &str, fence: &Fence) -> u16 {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nReport-Fence: {}\r\n\r\n",
        fence.header_value()
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// The whole scenario for one kind of replication; asserts what holds for both and returns
/// what differs, for the test to assert and print.
struct Outcome {
    /// A's row on the primary right before the kill.
    old: RowSeen,
    /// The row on the standby after the kill, before the promotion.
    standby_before_promotion: RowSeen,
    /// The row on the promoted standby, before B ran.
    promoted: RowSeen,
    /// The row on the promoted standby after B.
    after: RowSeen,
    a: Finished,
    b: Finished,
    b_reports: Vec<String>,
    /// Ticket requests the server answered with the lock's pending ticket.
    returned: f64,
}

fn failover(mode: Replication) -> Outcome {
    let started = Instant::now();
    let lock = format!("failover-{}", mode.name());
    let (primary, standby, fleet) = primary_and_standby(mode, &lock);
    let on_standby = standby.fleet_of(&lock);
    let prepared = started.elapsed();

    // The lock's row, made by a first run (its report from a server of its own), replicated.
    let fast = ApiServer::fast();
    let first = host(&fleet, &fast.url, "host-0", &lock, &[]).run(&MANUAL);
    assert_code(&first, 0);
    caught_up(&primary, &standby);
    assert_eq!(timeline(&primary), 1);
    let replication = primary.psql(
        "postgres",
        "SELECT state || ' ' || sync_state FROM pg_stat_replication",
    );

    let server = ApiServer::slow(GENERATION);
    let a = host(&fleet, &server.url, "host-a", &lock, &[]);
    let sender: i32 = primary
        .psql("postgres", "SELECT pid FROM pg_stat_replication")
        .parse()
        .unwrap();
    if mode == Replication::AsynchronousBehind {
        kill(Pid::from_raw(sender), Signal::SIGSTOP).unwrap();
    }
    let a_child = a.spawn(&MANUAL);
    wait_for_row(&fleet, &lock, "host-a", true);
    let at_ticket = row_seen(&fleet, &lock);
    if mode == Replication::Synchronous {
        // The ticket's write does not wait for its flush (nor so for the standby); the next
        // renewal does, and is seen by others only once the standby has flushed it, with
        // everything written before it.
        wait_until("A renews its lease after writing its ticket", || {
            row_seen(&fleet, &lock).lease_until > at_ticket.lease_until
        });
    }
    // Asynchronous: killed as soon as the ticket shows, the standby's share read afterwards.
    let old = row_seen(&fleet, &lock);
    assert_eq!(old.holder, "host-a");
    if mode == Replication::AsynchronousBehind {
        // The stopped WAL sender would hold up the shutdown; killed once the shutdown is under
        // way, it sends nothing more.
        std::thread::scope(|scope| {
            let stopping = scope.spawn(|| primary.kill());
            std::thread::sleep(Duration::from_millis(200));
            kill(Pid::from_raw(sender), Signal::SIGKILL).unwrap();
            stopping.join().unwrap();
        });
    } else {
        primary.kill();
    }
    let killed = Instant::now();
    let standby_before_promotion = row_seen(&on_standby, &lock);
    let replayed = standby.psql(
        "postgres",
        "SELECT 'received ' || pg_last_wal_receive_lsn() || ' replayed ' || pg_last_wal_replay_lsn()",
    );
    standby.promote();
    let promoted_at = Instant::now();
    let promoted = row_seen(&on_standby, &lock);
    let slots = on_standby.psql(&format!(
        "SELECT count(*) FROM report_collector.report_collector_slot WHERE name = '{lock}'"
    ));
    assert_eq!(timeline(&standby), 2, "the promoted standby's timeline");
    let b = host(&on_standby, &server.url, "host-b", &lock, &[]);
    let mut b_child = b.spawn(&MANUAL);
    let b_spawned = promoted_at.elapsed();
    assert!(
        b_spawned < Duration::from_secs(1),
        "B started {b_spawned:?} after the promotion"
    );

    // The take-over as the server saw it: the lock's mark on timeline 2, raised by B's first
    // request after its take.
    // (Whether B has exited is looked at before the mark, so that the mark of a B that has
    // exited is always seen.)
    let b_marked = loop {
        let exited = !running(&mut b_child);
        if mark(&server.url, &lock, &old.lock_id).is_some_and(|(epoch, _)| epoch >= 2.0) {
            break promoted_at.elapsed();
        }
        assert!(!exited, "B exited before it reached the server");
        assert!(
            promoted_at.elapsed() < PATIENCE,
            "B never reached the server"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let b_run = finish(b_child);
    let b_done = promoted_at.elapsed();
    let a_run = finish(a_child);
    assert_code(&b_run, 0);

    // B waited out A's lease, as the promoted standby had it.
    let b_reports = reports(&b);
    assert_eq!(b_reports.len(), 1, "{b_reports:?}");
    let saved_at = std::fs::metadata(b.reports.join(&b_reports[0]))
        .unwrap()
        .modified()
        .unwrap();
    assert!(
        saved_at > promoted.lease_until,
        "B saved before A's lease ended"
    );
    assert!(promoted.lease_left <= LEASE.as_secs_f64(), "{promoted:?}");
    if promoted.lease_left > 0.0 {
        assert!(b_run.stderr.contains("waits it out"), "{}", b_run.stderr);
    }

    // A: its database gone, it lost its lease and saved nothing.
    assert_code(&a_run, 79);
    let a_lease_lost = lines_with_id(&a_run.stderr, message_id::LEASE_LOST).len();
    let a_fenced = lines_with_id(&a_run.stderr, message_id::FENCED).len();
    assert_eq!(a_lease_lost + a_fenced, 1, "{}", a_run.stderr);
    assert!(reports(&a).is_empty(), "{:?}", reports(&a));

    // B's generation, on timeline 2, as the server saw it.
    let after = row_seen(&on_standby, &lock);
    assert_eq!(after.lock_id, old.lock_id, "the lock keeps its id");
    assert_eq!(after.generation, promoted.generation + 1);
    let (epoch, count) = mark(&server.url, &lock, &old.lock_id).expect("the lock's mark");
    assert_eq!(epoch, 2.0, "the mark's epoch is B's timeline");
    assert_eq!(
        count, after.generation as f64,
        "the mark's count is B's generation"
    );
    let peak = metric(&server.url, "report_apis_tickets_pending_peak");
    assert!(peak <= 1.0, "{peak} tickets pending at once");

    // What a token of the old primary gets now: A's own, and one the old primary could have
    // handed out later still (its generation + 100), each refused.
    let stale = "report_apis_rejections_total{reason=\"fence-stale\"}";
    let refused_before = metric(&server.url, stale);
    let fence = |count| Fence {
        lock: LockName::new(&lock).unwrap(),
        id: uuid::Uuid::parse_str(&old.lock_id).unwrap(),
        token: Token::new(1, count),
    };
    let ticket_path = format!("/get_report/{}", old.ticket);
    let as_a = fenced_request(&server.url, &ticket_path, &fence(old.generation));
    let later = fenced_request(&server.url, "/request_report", &fence(old.generation + 100));
    assert_eq!((as_a, later), (409, 409), "the old primary's tokens");
    assert_eq!(metric(&server.url, stale) - refused_before, 2.0);
    let returned = metric(&server.url, "report_apis_fence_tickets_returned_total");

    eprintln!(
        "failover ({}): primary and standby ready in {:.3}s; replication: {replication}\n\
         \x20 A's row on the primary before the kill: {old:?}\n\
         \x20 on the standby after the kill, before promotion ({replayed}): generation {}, ticket {:?}\n\
         \x20 on the standby after promotion ({:.3}s after the kill): {promoted:?}; slot claims of the lock: {slots}\n\
         \x20 B saw A's last generation: {}, A's ticket: {}; A's lease had {:.3}s left by the standby's clock\n\
         \x20 B started {:.3}s after the promotion; the server's mark reached timeline 2 {:.3}s after it; B exited 0 {:.3}s after it\n\
         \x20 B took generation {} on timeline 2; the server's mark: {epoch}.{count}; tickets pending at most {peak}; \
         ticket requests answered with the pending ticket: {returned}\n\
         \x20 A exited 79 ({}); the old primary's tokens 1.{} and 1.{} got {as_a} and {later}\n\
         \x20 B's report: {:?}; the whole scenario took {:.3}s",
        mode.name(),
        prepared.as_secs_f64(),
        standby_before_promotion.generation,
        standby_before_promotion.ticket,
        promoted_at.duration_since(killed).as_secs_f64(),
        promoted.generation == old.generation,
        promoted.ticket == old.ticket,
        promoted.lease_left,
        b_spawned.as_secs_f64(),
        b_marked.as_secs_f64(),
        b_done.as_secs_f64(),
        after.generation,
        if a_fenced == 1 {
            "refused by the fence"
        } else {
            "its lease lost"
        },
        old.generation,
        old.generation + 100,
        b_reports,
        started.elapsed().as_secs_f64(),
    );
    Outcome {
        old,
        standby_before_promotion,
        promoted,
        after,
        a: a_run,
        b: b_run,
        b_reports,
        returned,
    }
}

/// Asynchronous replication: the standby may lack A's last writes. Whatever it has, B's token
/// is on timeline 2, above every token of the old primary, and one report is saved.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn after_an_asynchronous_failover_the_promoted_standbys_holder_outranks_the_old_primarys() {
    let _timing = timing_guard();
    let out = failover(Replication::Asynchronous);
    // The standby never has more than the primary had.
    assert!(out.promoted.generation <= out.old.generation);
    assert!(out.standby_before_promotion.generation <= out.old.generation);
    if out.promoted.ticket == out.old.ticket {
        assert!(
            out.b
                .stderr
                .contains(&format!("resuming ticket {}", out.old.ticket)),
            "{}",
            out.b.stderr
        );
    }
}

/// Asynchronous replication with the standby behind: it lacks A's take and ticket, so B
/// takes at once (the row shows no lease) the very generation A had, on timeline 2. Only the
/// epoch orders the two tokens: the server takes B's and refuses A's, hands B the lock's
/// pending ticket (A's) instead of a second one, and one report is saved.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn after_a_failover_to_a_standby_behind_the_same_generation_on_the_new_timeline_outranks_the_old() {
    let _timing = timing_guard();
    let out = failover(Replication::AsynchronousBehind);
    assert!(
        out.promoted.generation < out.old.generation,
        "the standby had A's take: {:?}",
        out.promoted
    );
    assert_eq!(out.promoted.ticket, "");
    assert_eq!(out.after.generation, out.old.generation, "B's count is A's");
    assert!(!out.b.stderr.contains("waits it out"), "{}", out.b.stderr);
    assert_eq!(out.returned, 1.0, "B was handed A's pending ticket");
    assert!(
        out.b_reports[0].contains(&out.old.ticket),
        "{:?}",
        out.b_reports
    );
    eprintln!(
        "failover (async-behind): A's run ended with {} FENCED line(s) and {} LEASE_LOST line(s)",
        lines_with_id(&out.a.stderr, message_id::FENCED).len(),
        lines_with_id(&out.a.stderr, message_id::LEASE_LOST).len()
    );
}

/// Synchronous replication: A's take, renewals and (once a renewal follows it) its ticket are
/// on the standby before the primary goes, so B resumes A's ticket.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn after_a_synchronous_failover_the_promoted_standbys_holder_resumes_the_old_primarys_ticket() {
    let _timing = timing_guard();
    let out = failover(Replication::Synchronous);
    assert_eq!(out.promoted.generation, out.old.generation);
    assert_eq!(out.promoted.ticket, out.old.ticket);
    assert!(
        out.b
            .stderr
            .contains(&format!("resuming ticket {}", out.old.ticket)),
        "{}",
        out.b.stderr
    );
    assert!(
        out.b_reports[0].contains(&out.old.ticket),
        "{:?}",
        out.b_reports
    );
}
