//! The PostgreSQL lock against a real server: a throw-away cluster shared by the tests of one
//! run, a database of its own per test with the role and schema created as the README tells an
//! operator to ([`Cluster`]), and the real collector binary as several "hosts" (each its own
//! `host-name`, state and report directory).
//!
//! Needs root (the cluster runs as user postgres, through runuser) and the PostgreSQL 15
//! binaries: the cluster tests are `#[ignore]`d with that reason, so a plain `cargo test`
//! lists them as left out; `make test` (as root) runs them with `--include-ignored`, and there
//! a missing prerequisite fails them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use report_common::message_id;

use crate::util::cluster::{Cluster, Fleet};
use crate::util::*;

/// Short, so the tests wait out leases in seconds.
pub(crate) const LEASE: Duration = Duration::from_secs(3);

/// The `SOURCE` field of a value declined from the lock's row.
const FROM_THE_ROW: &str = "SOURCE=\"the PostgreSQL lock's row\"";

/// A collector on "host" `host` of `fleet`: its own directory, sharing the lock `lock_name`.
pub(crate) fn host(
    fleet: &Fleet,
    server_url: &str,
    host: &str,
    lock_name: &str,
    extra: &[(&str, &str)],
) -> Setup {
    let mut keys = vec![
        ("lock-backend", "\"postgres\""),
        ("deadline", "\"40s\""),
        ("poll-interval", "\"100ms\""),
    ];
    keys.extend_from_slice(extra);
    let setup = Setup::new(server_url, &keys);
    let table = format!(
        "\n[postgres]\nconnect = {:?}\nhost-name = {host:?}\nlock-name = {lock_name:?}\nlease = \"{}s\"\ntls = \"disable\"\n",
        fleet.connect(),
        LEASE.as_secs()
    );
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(&table);
    std::fs::write(&setup.config, text).unwrap();
    setup
}

/// Waits until the row `lock_name` names `host` as holder (with a ticket, if asked); until the
/// first run of `fleet` has made the tables, there is no row.
pub(crate) fn wait_for_row(fleet: &Fleet, lock_name: &str, host: &str, with_ticket: bool) {
    let start = Instant::now();
    loop {
        let tables =
            fleet.psql("SELECT to_regclass('report_collector.report_collector_lock') IS NOT NULL");
        let row = if tables == "t" {
            fleet.row(lock_name, "holder_host || '|' || COALESCE(ticket, '')")
        } else {
            String::new()
        };
        let mut parts = row.split('|');
        if parts.next() == Some(host)
            && (!with_ticket || parts.next().is_some_and(|t| !t.is_empty()))
        {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{host} never held {lock_name}: {row:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates the lock's tables in `fleet`, as the first run does, with a run of a lock of its own:
/// for a test that puts a row or a trigger in them before its hosts run.
fn create_the_tables(fleet: &Fleet, server_url: &str) {
    let first = host(fleet, server_url, "host-t", "tables", &[]).run(&["--trigger", "manual"]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
}

pub(crate) fn reports(setup: &Setup) -> Vec<String> {
    setup
        .report_files()
        .into_iter()
        .filter(|n| report_collector::store::is_report_name(n))
        .collect()
}

fn modified(dir: &Path, name: &str) -> SystemTime {
    std::fs::metadata(PathBuf::from(dir).join(name))
        .unwrap()
        .modified()
        .unwrap()
}

fn unix(at: &str) -> SystemTime {
    let secs: f64 = at.parse().unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs)
}

fn spawn_manual(setup: &Setup) -> Child {
    setup.spawn(&["--trigger", "manual"])
}

fn status_of(setup: &Setup) -> (Option<i32>, String) {
    let out = setup.command(&["status"]).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// First use: four hosts at once, no tables yet. Each run either collects or skips for the
/// lock; none fails creating the schema.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn hosts_starting_together_on_first_use_create_the_tables_once_and_none_fails() {
    let fleet = Cluster::shared().fleet("first-use");
    let fast = ApiServer::fast();
    let runs: Vec<(Setup, Child)> = (0..4)
        .map(|i| {
            let setup = host(&fleet, &fast.url, &format!("host-{i}"), "first-use", &[]);
            let child = spawn_manual(&setup);
            (setup, child)
        })
        .collect();
    let mut collected = 0;
    for (setup, child) in runs {
        let done = finish(child);
        assert!(
            matches!(done.code, Some(0 | 75)),
            "first use: {:?} {}",
            done.code,
            done.stderr
        );
        if done.code == Some(0) {
            collected += 1;
            assert_eq!(reports(&setup).len(), 1);
        }
    }
    assert!(collected >= 1, "no run collected on first use");
    assert_eq!(
        fleet.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'report_collector'"),
        "2"
    );
}

/// forbid: a run on host-b skips, naming host-a; status names it too.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn forbid_skips_naming_the_holders_host_and_status_names_it_too() {
    let fleet = Cluster::shared().fleet("forbid");
    let slow = ApiServer::slow(Duration::from_secs(3));
    let a = host(&fleet, &slow.url, "host-a", "forbid", &[]);
    let b = host(&fleet, &slow.url, "host-b", "forbid", &[]);
    let holder = spawn_manual(&a);
    wait_for_row(&fleet, "forbid", "host-a", true);
    let skipped = b.run(&["--trigger", "manual"]);
    assert_eq!(skipped.code, Some(75), "{}", skipped.stderr);
    assert!(
        skipped
            .stderr
            .contains(&format!("pid {} on host host-a", holder.id())),
        "{}",
        skipped.stderr
    );
    assert!(
        skipped.stderr.contains("HOLDER_HOST=\"host-a\""),
        "{}",
        skipped.stderr
    );
    let status = Command::new(env!("CARGO_BIN_EXE_report-collector"))
        .args(["--config", b.config.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!("held by pid {} on host host-a", holder.id())),
        "{text}"
    );
    let json = Command::new(env!("CARGO_BIN_EXE_report-collector"))
        .args(["--config", b.config.to_str().unwrap(), "status", "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["lock"]["host"], "host-a", "{json}");
    assert_eq!(json["lock"]["backend"], "postgres", "{json}");
    let first = finish(holder);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
}

/// wait: host-b waits for host-a's run and then collects; the fleet's last collection is in
/// the row, for status on any host.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn wait_collects_after_the_holder_and_any_hosts_status_shows_the_fleets_last_collection() {
    let fleet = Cluster::shared().fleet("wait");
    let slow = ApiServer::slow(Duration::from_secs(3));
    let a = host(&fleet, &slow.url, "host-a", "wait", &[]);
    let holder = spawn_manual(&a);
    wait_for_row(&fleet, "wait", "host-a", true);
    let waiting = host(
        &fleet,
        &slow.url,
        "host-b",
        "wait",
        &[("policy", "\"wait\"")],
    );
    let waited = waiting.run(&["--trigger", "manual"]);
    assert_eq!(waited.code, Some(0), "{}", waited.stderr);
    assert!(waited.stderr.contains("waiting up to"), "{}", waited.stderr);
    let first = finish(holder);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let status = Command::new(env!("CARGO_BIN_EXE_report-collector"))
        .args(["--config", a.config.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("fleet:    last collection"), "{text}");
    assert!(text.contains("by host host-b"), "{text}");
}

/// replace: a run of a later slot ends the holder through the database and waits out its
/// lease; the ended holder saves nothing and exits 79.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn replace_ends_the_holders_session_waits_out_its_lease_and_the_holder_exits_79() {
    let _timing = timing_guard();
    let fleet = Cluster::shared().fleet("replace");
    let fast = ApiServer::fast();
    let very_slow = ApiServer::slow(Duration::from_secs(30));
    let a = host(
        &fleet,
        &very_slow.url,
        "host-a",
        "replace",
        &[("schedule-period", "\"1s\"")],
    );
    let b = host(
        &fleet,
        &fast.url,
        "host-b",
        "replace",
        &[("schedule-period", "\"1s\""), ("policy", "\"replace\"")],
    );
    let holder = spawn_manual(&a);
    wait_for_row(&fleet, "replace", "host-a", true);
    std::thread::sleep(Duration::from_millis(1100));
    let started = Instant::now();
    let replaced = b.run(&["--trigger", "manual"]);
    assert_eq!(replaced.code, Some(0), "{}", replaced.stderr);
    let ending = lines_with_id(&replaced.stderr, message_id::HOLDER_REPLACED);
    assert!(
        ending.len() == 1
            && ending[0].contains("by ending its database session")
            && ending[0].contains("ENDED_BY=\"session\"")
            && ending[0].contains("HOLDER_HOST=\"host-a\""),
        "{}",
        replaced.stderr
    );
    assert!(
        started.elapsed() >= LEASE / 2,
        "the lease was not waited out: {:?}",
        started.elapsed()
    );
    eprintln!(
        "replace: the later slot's run collected {:.3}s after it started (lease {}s)",
        started.elapsed().as_secs_f64(),
        LEASE.as_secs()
    );
    let ended = finish(holder);
    assert_eq!(ended.code, Some(79), "{}", ended.stderr);
    assert_eq!(
        lines_with_id(&ended.stderr, message_id::LEASE_LOST).len(),
        1,
        "exit 79 is a kind of its own: {}",
        ended.stderr
    );
    assert!(reports(&a).is_empty(), "{:?}", reports(&a));
    assert_eq!(reports(&b).len(), 1);
}

/// A paused holder whose session the server dropped: the advisory lock is free at once, but
/// the next holder waits out the lease by the database's clock, and the paused one, continued,
/// saves nothing and exits 79.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn a_paused_holder_whose_session_was_dropped_is_waited_out_to_its_lease_end_and_exits_79() {
    let fleet = Cluster::shared().fleet("paused");
    let fast = ApiServer::fast();
    let very_slow = ApiServer::slow(Duration::from_secs(30));
    let a = host(&fleet, &very_slow.url, "host-a", "paused", &[]);
    let b = host(&fleet, &fast.url, "host-b", "paused", &[]);
    let paused = spawn_manual(&a);
    wait_for_row(&fleet, "paused", "host-a", true);
    signal(&paused, Signal::SIGSTOP);
    let lease_until = unix(&fleet.row("paused", "extract(epoch from lease_until)"));
    // With a timeout, pg_terminate_backend returns once the session is gone (its advisory
    // lock with it), not as soon as it was signalled.
    fleet.psql(
        "SELECT pg_terminate_backend(session, 5000) FROM report_collector.report_collector_lock WHERE name = 'paused'",
    );
    let freed = SystemTime::now();
    let next = b.run(&["--trigger", "manual"]);
    assert_eq!(next.code, Some(0), "{}", next.stderr);
    assert!(next.stderr.contains("waits it out"), "{}", next.stderr);
    // The waiting run names the holder it waits out, not itself.
    assert!(
        next.stderr.contains(&format!(
            "its last holder, pid {} on host host-a",
            paused.id()
        )),
        "{}",
        next.stderr
    );
    let saved = reports(&b);
    assert_eq!(saved.len(), 1);
    let saved_at = modified(&b.reports, &saved[0]);
    assert!(
        saved_at > lease_until,
        "collected before the paused holder's lease ended"
    );
    eprintln!(
        "paused holder: its session ended {:.3}s before its lease end; the next host saved {:.3}s after the lease end",
        lease_until
            .duration_since(freed)
            .unwrap_or_default()
            .as_secs_f64(),
        saved_at.duration_since(lease_until).unwrap().as_secs_f64()
    );
    signal(&paused, Signal::SIGCONT);
    let continued = finish(paused);
    assert_eq!(continued.code, Some(79), "{}", continued.stderr);
    assert!(
        continued.stderr.contains("stopped without saving anything"),
        "{}",
        continued.stderr
    );
    assert!(reports(&a).is_empty());
}

/// A holder cut off (here: stopped) whose session the server keeps: once its lease has ended
/// by the database's clock, the next host ends that session itself and collects.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn a_stopped_holder_whose_session_lives_on_has_it_ended_by_the_next_host_after_its_lease() {
    let fleet = Cluster::shared().fleet("stale");
    let fast = ApiServer::fast();
    let very_slow = ApiServer::slow(Duration::from_secs(30));
    let a = host(&fleet, &very_slow.url, "host-a", "stale", &[]);
    let b = host(&fleet, &fast.url, "host-b", "stale", &[]);
    let stale = spawn_manual(&a);
    wait_for_row(&fleet, "stale", "host-a", true);
    signal(&stale, Signal::SIGSTOP);
    let session = fleet.row("stale", "session");
    std::thread::sleep(LEASE + Duration::from_millis(200));
    let next = b.run(&["--trigger", "manual"]);
    assert_eq!(next.code, Some(0), "{}", next.stderr);
    let ending = lines_with_id(&next.stderr, message_id::STALE_SESSION_ENDED);
    assert!(
        ending.len() == 1
            && ending[0].contains(&format!(
                "its database session {session} still holds the lock; ending that session"
            ))
            && ending[0].contains(&format!("SESSION={session}")),
        "{}",
        next.stderr
    );
    signal(&stale, Signal::SIGCONT);
    let continued = finish(stale);
    assert_eq!(continued.code, Some(79), "{}", continued.stderr);
    assert!(reports(&a).is_empty());
}

/// Never two collections at once: four hosts under `wait`, started together, collect one
/// after the other; the server never sees two of their tickets pending.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn hosts_under_wait_started_together_collect_one_after_the_other() {
    let fleet = Cluster::shared().fleet("overlap");
    let paced = ApiServer::slow(Duration::from_millis(300));
    let runs: Vec<(Setup, Child)> = (0..4)
        .map(|i| {
            let setup = host(
                &fleet,
                &paced.url,
                &format!("host-{i}"),
                "overlap",
                &[("policy", "\"wait\"")],
            );
            let child = spawn_manual(&setup);
            (setup, child)
        })
        .collect();
    for (_setup, child) in runs {
        let done = finish(child);
        assert_eq!(done.code, Some(0), "{}", done.stderr);
    }
    assert_eq!(metric(&paced.url, "report_apis_tickets_issued_total"), 4.0);
    assert_eq!(
        metric(&paced.url, "report_apis_tickets_pending_peak"),
        1.0,
        "two hosts collected at once"
    );
}

/// Each slot once across hosts: host-b's timer run of the slot host-a collected skips, naming
/// host-a; a run started by hand claims nothing.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn a_timer_run_of_a_slot_another_host_collected_skips_naming_it_and_a_run_by_hand_does_not() {
    let fleet = Cluster::shared().fleet("slots");
    let fast = ApiServer::fast();
    let a = host(
        &fleet,
        &fast.url,
        "host-a",
        "slots",
        &[("schedule-period", "\"1h\"")],
    );
    let b = host(
        &fleet,
        &fast.url,
        "host-b",
        "slots",
        &[("schedule-period", "\"1h\"")],
    );
    let first = a.run(&["--trigger", "timer"]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let second = b.run(&["--trigger", "timer"]);
    assert_eq!(second.code, Some(75), "{}", second.stderr);
    assert!(
        second.stderr.contains("already taken by host host-a"),
        "{}",
        second.stderr
    );
    let skipped = lines_with_id(&second.stderr, message_id::SKIPPED_SLOT_TAKEN);
    assert!(
        skipped.len() == 1
            && skipped[0].contains("SKIP=\"slot-taken\"")
            && skipped[0].contains("HOLDER_HOST=\"host-a\""),
        "{}",
        second.stderr
    );
    let by_hand = b.run(&["--trigger", "manual"]);
    assert_eq!(by_hand.code, Some(0), "{}", by_hand.stderr);
}

/// A ticket left by a holder killed on host-a is resumed on host-b, after its lease.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn a_ticket_left_by_a_holder_killed_on_one_host_is_resumed_on_another() {
    let fleet = Cluster::shared().fleet("resume");
    let generating = ApiServer::slow(Duration::from_secs(4));
    let a = host(&fleet, &generating.url, "host-a", "resume", &[]);
    let b = host(&fleet, &generating.url, "host-b", "resume", &[]);
    let killed = spawn_manual(&a);
    wait_for_row(&fleet, "resume", "host-a", true);
    let ticket = fleet.row("resume", "ticket");
    signal(&killed, Signal::SIGKILL);
    let _ = finish(killed);
    let started = Instant::now();
    let resumed = b.run(&["--trigger", "manual"]);
    eprintln!(
        "killed holder: the other host's run took {:.3}s (lease {}s, then the report's generation)",
        started.elapsed().as_secs_f64(),
        LEASE.as_secs()
    );
    assert_eq!(resumed.code, Some(0), "{}", resumed.stderr);
    assert!(
        resumed
            .stderr
            .contains(&format!("resuming ticket {ticket}")),
        "{}",
        resumed.stderr
    );
    assert!(reports(&b)[0].contains(&ticket), "{:?}", reports(&b));
    assert_eq!(fleet.row("resume", "COALESCE(ticket, '')"), "");
}

/// A holder killed in its slot: a waiting host of the same slot takes the claim over and
/// collects the slot, resuming the ticket.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn a_waiting_host_takes_the_slot_over_from_a_holder_killed_in_it_resuming_its_ticket() {
    let fleet = Cluster::shared().fleet("takeover");
    let generating = ApiServer::slow(Duration::from_secs(4));
    let a = host(
        &fleet,
        &generating.url,
        "host-a",
        "takeover",
        &[("schedule-period", "\"1h\"")],
    );
    let b = host(
        &fleet,
        &generating.url,
        "host-b",
        "takeover",
        &[("schedule-period", "\"1h\""), ("policy", "\"wait\"")],
    );
    let killed = a.spawn(&["--trigger", "timer"]);
    wait_for_row(&fleet, "takeover", "host-a", true);
    let ticket = fleet.row("takeover", "ticket");
    signal(&killed, Signal::SIGKILL);
    let _ = finish(killed);
    let took = b.run(&["--trigger", "timer"]);
    assert_eq!(took.code, Some(0), "{}", took.stderr);
    let taken_over = lines_with_id(&took.stderr, message_id::SLOT_TAKEN_OVER);
    assert!(
        taken_over.len() == 1
            && taken_over[0].contains(
                "on host host-a, which stopped before saving its report: this run takes the slot over"
            ),
        "{}",
        took.stderr
    );
    assert!(
        took.stderr.contains(&format!("resuming ticket {ticket}")),
        "{}",
        took.stderr
    );
    assert_eq!(reports(&b).len(), 1);
    assert_eq!(
        fleet.psql(
            "SELECT host || '|' || (collected_at IS NOT NULL) FROM report_collector.report_collector_slot WHERE name = 'takeover'"
        ),
        "host-b|true"
    );
}

/// A holder cut off right after it saved its report, before it could finish the ticket in the
/// row (the database takes the mark, then fails the finish for longer than the lease): it says
/// it collected, and the next holder, on another host, takes the ticket as collected by it
/// instead of fetching and saving it again.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn a_holder_cut_off_after_saving_has_its_ticket_taken_as_collected_not_saved_again() {
    let fleet = Cluster::shared().fleet("saved-once");
    let fast = ApiServer::fast();
    create_the_tables(&fleet, &fast.url);
    fleet.psql(
        "CREATE FUNCTION report_collector.cut_off() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_sleep(5); RAISE EXCEPTION 'cut off'; END $$; \
         CREATE TRIGGER cut_off BEFORE UPDATE ON report_collector.report_collector_lock \
         FOR EACH ROW WHEN (NEW.name = 'saved-once' AND OLD.ticket_saving_generation IS NOT NULL \
           AND NEW.ticket IS NULL) EXECUTE FUNCTION report_collector.cut_off()",
    );
    let a = host(&fleet, &fast.url, "host-a", "saved-once", &[]);
    let b = host(&fleet, &fast.url, "host-b", "saved-once", &[]);
    let cut = a.run(&["--trigger", "manual"]);
    assert_eq!(cut.code, Some(0), "{}", cut.stderr);
    assert!(
        cut.stderr
            .contains("but then lost the lease before finishing its ticket"),
        "{}",
        cut.stderr
    );
    assert!(
        !cut.stderr.contains("stopped without saving anything"),
        "{}",
        cut.stderr
    );
    let saved = reports(&a);
    assert_eq!(saved.len(), 1);
    let ticket = fleet.row("saved-once", "ticket");
    assert!(saved[0].contains(&ticket), "{saved:?} {ticket}");
    assert_eq!(fleet.row("saved-once", "ticket_saved_by_host"), "host-a");
    fleet.psql("DROP TRIGGER cut_off ON report_collector.report_collector_lock");
    let next = b.run(&["--trigger", "manual"]);
    assert_eq!(next.code, Some(0), "{}", next.stderr);
    assert!(
        next.stderr.contains(&format!(
            "ticket {ticket} was marked as being saved by host host-a"
        )) && next.stderr.contains("taken as collected by host host-a"),
        "{}",
        next.stderr
    );
    assert!(
        !next.stderr.contains(&format!("resuming ticket {ticket}")),
        "{}",
        next.stderr
    );
    assert!(
        reports(&b).iter().all(|r| !r.contains(&ticket)),
        "{:?}",
        reports(&b)
    );
    assert_eq!(fleet.row("saved-once", "COALESCE(ticket, '')"), "");
}

/// Slot claims older than 7 days are pruned by the taker of every 64th generation, never a
/// younger one.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn old_slot_claims_are_pruned_by_every_64th_taker_and_younger_ones_kept() {
    let fleet = Cluster::shared().fleet("pruned");
    let fast = ApiServer::fast();
    let a = host(&fleet, &fast.url, "host-a", "pruned", &[]);
    let first = a.run(&["--trigger", "manual"]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    fleet.psql(
        "INSERT INTO report_collector.report_collector_slot (name, slot, host, pid, generation) \
         VALUES ('pruned', now() - interval '8 days', 'host-x', 1, 1), \
                ('pruned', now() - interval '6 days', 'host-x', 1, 1); \
         UPDATE report_collector.report_collector_lock SET generation = 62 WHERE name = 'pruned'",
    );
    let claims = || {
        fleet.psql(
            "SELECT count(*) FROM report_collector.report_collector_slot WHERE name = 'pruned'",
        )
    };
    for (generation, left) in [("63", "2"), ("64", "1"), ("65", "1")] {
        let run = a.run(&["--trigger", "manual"]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert_eq!(fleet.row("pruned", "generation"), generation);
        assert_eq!(claims(), left, "after generation {generation}");
    }
}

// Every table and row is input another host wrote: tables of another shape fail the run and
// `status` with a sentence (exit 69, never a panic's abort), a value out of its range is
// declined with one journal line and taken over, and no value stops the fleet but the one
// documented case, a generation that cannot increase (exit 69, with the statement that resets
// it).

/// Tables of another shape: exit 69 naming the column, the type found and the one expected,
/// from a run and from status; never a panic.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn tables_of_another_shape_fail_the_run_and_status_with_exit_69_naming_the_column() {
    let fleet = Cluster::shared().fleet("shape");
    let fast = ApiServer::fast();
    let a = host(&fleet, &fast.url, "host-a", "shape", &[]);
    let first = a.run(&["--trigger", "manual"]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    for (column, found) in [
        ("holder_pid", "bigint"),
        ("generation", "integer"),
        ("ticket_requested", "text"),
        ("ticket", "character varying(5)"),
    ] {
        let alter = |ty: &str| {
            fleet.psql(&format!(
                "ALTER TABLE report_collector.report_collector_lock ALTER COLUMN {column} TYPE {ty} USING {column}::{ty}"
            ))
        };
        let expected = match column {
            "holder_pid" => "integer",
            "generation" => "bigint",
            "ticket_requested" => "timestamp with time zone",
            _ => "text",
        };
        alter(found);
        let named =
            format!("column report_collector_lock.{column} is {found}, not {expected} as expected");
        let run = a.run(&["--trigger", "manual"]);
        assert_eq!(run.code, Some(69), "{column} {found}: {}", run.stderr);
        assert!(run.stderr.contains(&named), "{}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        assert_eq!(
            lines_with_id(&run.stderr, message_id::DATABASE_UNAVAILABLE).len(),
            1,
            "{}",
            run.stderr
        );
        let (code, text) = status_of(&a);
        assert_eq!(code, Some(69), "{text}");
        assert!(text.contains(&named), "{text}");
        alter(expected);
        if column == "ticket" {
            eprintln!("another shape: {}", run.stderr.lines().last().unwrap_or(""));
        }
    }
    let fits = a.run(&["--trigger", "manual"]);
    assert_eq!(fits.code, Some(0), "{}", fits.stderr);
}

/// A lease that cannot be real: not waited for to its end, nor believed over at once. The
/// next run waits out its own lease, takes the lock over and collects; status shows the lock
/// free, not held for ever.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn a_lease_that_cannot_be_real_is_declined_waited_out_once_and_taken_over() {
    let _timing = timing_guard();
    let fleet = Cluster::shared().fleet("unreal-lease");
    let fast = ApiServer::fast();
    for (name, until) in [
        ("infinite-lease", "'infinity'"),
        ("year-9999", "'9999-01-01 00:00:00+00'"),
    ] {
        let a = host(&fleet, &fast.url, "host-a", name, &[]);
        let b = host(&fleet, &fast.url, "host-b", name, &[]);
        let first = a.run(&["--trigger", "manual"]);
        assert_eq!(first.code, Some(0), "{}", first.stderr);
        fleet.psql(&format!(
            "UPDATE report_collector.report_collector_lock SET holder_host = 'host-x', \
             holder_pid = 4242, session = 4242, since = now(), lease_until = {until} \
             WHERE name = '{name}'"
        ));
        let (_, text) = status_of(&a);
        assert!(text.contains("lock:     free"), "{name}: {text}");
        let started = Instant::now();
        let took = b.run(&["--trigger", "manual"]);
        let took_for = started.elapsed();
        assert_eq!(took.code, Some(0), "{name}: {}", took.stderr);
        assert!(took_for >= LEASE, "{name}: took over after {took_for:?}");
        let declined = lines_with_id(&took.stderr, message_id::VALUE_DECLINED);
        assert!(
            declined.len() == 1
                && declined[0].contains(FROM_THE_ROW)
                && declined[0].contains("FIELD=\"lease_until\""),
            "{name}: {}",
            took.stderr
        );
        assert!(
            took.stderr.contains("on host host-x"),
            "the take-over names the holder: {}",
            took.stderr
        );
        assert_eq!(reports(&b).len(), 1);
        assert_eq!(fleet.row(name, "COALESCE(lease_until::text, '')"), "");
        eprintln!(
            "{name}: taken over and collected {:.3}s after the run started (lease {}s)",
            took_for.as_secs_f64(),
            LEASE.as_secs()
        );
        let again = a.run(&["--trigger", "manual"]);
        assert_eq!(again.code, Some(0), "{}", again.stderr);
    }
}

/// A generation one short of its largest: the next holder takes the largest, the one after
/// refuses (exit 69), as status does, naming the statement that resets it; that statement,
/// run, lets the next run collect.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn a_generation_at_its_largest_is_exit_69_naming_the_statement_that_resets_it() {
    let fleet = Cluster::shared().fleet("generation-max");
    let fast = ApiServer::fast();
    let a = host(&fleet, &fast.url, "host-a", "generation-max", &[]);
    let first = a.run(&["--trigger", "manual"]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    fleet.psql(&format!(
        "UPDATE report_collector.report_collector_lock SET generation = {} WHERE name = 'generation-max'",
        i64::MAX - 1
    ));
    let last = a.run(&["--trigger", "manual"]);
    assert_eq!(last.code, Some(0), "{}", last.stderr);
    assert_eq!(
        fleet.row("generation-max", "generation"),
        i64::MAX.to_string()
    );
    let refused = a.run(&["--trigger", "manual"]);
    assert_eq!(refused.code, Some(69), "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("its generation is at its largest value (9223372036854775807)"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        lines_with_id(&refused.stderr, message_id::DATABASE_UNAVAILABLE).len(),
        1,
        "{}",
        refused.stderr
    );
    let (code, text) = status_of(&a);
    assert_eq!(code, Some(69), "{text}");
    assert!(text.contains("largest value"), "{text}");
    let reset = refused
        .stderr
        .split('`')
        .find(|part| {
            part.starts_with("UPDATE report_collector_lock SET generation = 0, lock_id = NULL")
        })
        .unwrap_or_else(|| panic!("no reset statement in {}", refused.stderr));
    fleet.psql(&format!("SET search_path = report_collector; {reset}"));
    let after = a.run(&["--trigger", "manual"]);
    assert_eq!(after.code, Some(0), "{}", after.stderr);
    assert_eq!(fleet.row("generation-max", "generation"), "1");
}

/// Puts `ticket` (an SQL expression) in the row of the lock `name`, as left by a run on
/// host-x.
fn plant_ticket(fleet: &Fleet, name: &str, ticket: &str) {
    fleet.psql(&format!(
        "INSERT INTO report_collector.report_collector_lock \
         (name, ticket, ticket_requested, ticket_host, ticket_pid) \
         VALUES ('{name}', {ticket}, now(), 'host-x', 4242)"
    ));
}

/// What must hold of `run`, host `b`'s run of the lock `name` whose row held the hostile
/// ticket `label`: it collected with a ticket of its own, never resumed the hostile one, said
/// nothing forged in a bounded log, wrote nothing outside its report directory, and the ticket
/// is gone from the row.
fn assert_collected_past_a_hostile_ticket(
    fleet: &Fleet,
    b: &Setup,
    name: &str,
    label: &str,
    run: &Finished,
) {
    assert!(!run.stderr.contains("resuming ticket"), "{}", run.stderr);
    assert!(run.stderr.len() < 64 << 10, "{} bytes", run.stderr.len());
    assert!(
        !run.stderr.contains("\nINFO collected the report FAKE"),
        "{}",
        run.stderr
    );
    assert_eq!(reports(b).len(), 1, "{label}: {:?}", reports(b));
    let outside: Vec<_> = all_files_under(b.dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("hostile") || !p.starts_with("reports"))
        .filter(|p| {
            !["config.toml", "last-run.json", "last-run.json.order"]
                .contains(&&*p.to_string_lossy())
        })
        .collect();
    assert!(outside.is_empty(), "{label}: {outside:?}");
    assert!(
        !b.dir.path().parent().unwrap().join("get_report").exists(),
        "{label}"
    );
    assert_eq!(fleet.row(name, "COALESCE(ticket, 'none')"), "none");
}

/// The server was asked for nothing but tickets and the reports of its own tickets.
fn assert_only_own_tickets_asked_for(paths: &Mutex<Vec<String>>) {
    let paths = paths.lock().unwrap();
    assert!(
        paths.iter().all(|p| p.starts_with("/request_report")
            || (p.starts_with("/get_report/t") && !p.contains("hostile"))),
        "{paths:?}"
    );
}

/// A hostile ticket in the row: never resumed, never in a URL or a file name, said in one
/// bounded line, and cleared from the row by the run that takes the lock.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn a_hostile_ticket_in_the_row_is_declined_in_one_line_never_used_and_cleared() {
    let fleet = Cluster::shared().fleet("hostile-ticket");
    let (server, paths) = recording_server();
    create_the_tables(&fleet, &server.url);
    for (label, ticket) in [
        ("traversal", "'q/../../get_report/hostile_1'"),
        ("backslash", r"'q\..\..\get_report\hostile_2'"),
        ("query", "'hostile_3?x=1#frag'"),
        ("newline", r"E'hostile_4\nINFO collected the report FAKE'"),
    ] {
        let name = format!("hostile-{label}");
        plant_ticket(&fleet, &name, ticket);
        let b = host(&fleet, &server.url, "host-b", &name, &[]);
        let run = b.run(&["--trigger", "manual"]);
        assert_eq!(run.code, Some(0), "{label}: {}", run.stderr);
        let declined = lines_with_id(&run.stderr, message_id::VALUE_DECLINED);
        assert!(
            declined.len() == 1
                && declined[0].contains(FROM_THE_ROW)
                && declined[0].contains("FIELD=\"ticket\""),
            "{label}: {}",
            run.stderr
        );
        eprintln!(
            "{label}: exit {:?}, {} bytes of stderr",
            run.code,
            run.stderr.len()
        );
        assert_collected_past_a_hostile_ticket(&fleet, &b, &name, label, &run);
    }
    assert_only_own_tickets_asked_for(&paths);
}

/// A 10 MB ticket in the row: a run that collects nothing still clears it (the run that takes
/// the lock does), saying so in one bounded line, and the next run collects without saying it
/// again.
#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn a_huge_ticket_in_the_row_is_cleared_even_by_a_run_that_collects_nothing() {
    let fleet = Cluster::shared().fleet("huge-ticket");
    let (server, paths) = recording_server();
    create_the_tables(&fleet, &server.url);
    let (label, name) = ("huge", "hostile-huge");
    plant_ticket(&fleet, name, "repeat('a', 10485760)");
    let failing = host(
        &fleet,
        &dead_url(),
        "host-b",
        name,
        &[("deadline", "\"2s\"")],
    );
    let failed = failing.run(&["--trigger", "manual"]);
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    assert_eq!(
        lines_with_id(&failed.stderr, message_id::VALUE_DECLINED).len(),
        1,
        "{}",
        failed.stderr
    );
    assert!(
        failed.stderr.len() < 64 << 10,
        "{} bytes",
        failed.stderr.len()
    );
    assert_eq!(fleet.row(name, "COALESCE(ticket, 'none')"), "none");
    eprintln!(
        "a 10 MB ticket in the row: exit {:?}, {} bytes of stderr",
        failed.code,
        failed.stderr.len()
    );
    let b = host(&fleet, &server.url, "host-b", name, &[]);
    let run = b.run(&["--trigger", "manual"]);
    assert_eq!(run.code, Some(0), "{label}: {}", run.stderr);
    let declined = lines_with_id(&run.stderr, message_id::VALUE_DECLINED);
    assert!(declined.is_empty(), "said again: {}", run.stderr);
    assert_collected_past_a_hostile_ticket(&fleet, &b, name, label, &run);
    assert_only_own_tickets_asked_for(&paths);
}

#[test]
fn an_unreachable_database_fails_closed_with_exit_69() {
    let fast = ApiServer::fast();
    let setup = Setup::new(&fast.url, &[("lock-backend", "\"postgres\"")]);
    let dir = setup.dir.path().display().to_string();
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(&format!(
        "\n[postgres]\nconnect = \"host={dir} port=1 user=report_collector dbname=fleet\"\nconnect-timeout = \"1s\"\n"
    ));
    std::fs::write(&setup.config, text).unwrap();
    let run = setup.run(&["--trigger", "manual"]);
    assert_eq!(run.code, Some(69), "{}", run.stderr);
    assert_eq!(
        lines_with_id(&run.stderr, message_id::DATABASE_UNAVAILABLE).len(),
        1,
        "exit 69 is a kind of its own: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!(
            "cannot connect to the PostgreSQL server at {dir}/.s.PGSQL.1"
        )),
        "{}",
        run.stderr
    );
    assert!(reports(&setup).is_empty());
    let status = setup.command(&["status"]).output().unwrap();
    assert_eq!(status.status.code(), Some(69));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("cannot read the lock"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}

/// Secrets: never in the configuration file, never in a file others may read.
#[test]
fn passwords_stay_out_of_the_config_and_out_of_readable_files() {
    use std::os::unix::fs::PermissionsExt as _;
    let setup = Setup::new("http://127.0.0.1:1", &[("lock-backend", "\"postgres\"")]);
    let base = std::fs::read_to_string(&setup.config).unwrap();
    let write = |table: &str| {
        std::fs::write(&setup.config, format!("{base}\n[postgres]\n{table}")).unwrap()
    };

    write("connect = \"host=/tmp user=u password=secret dbname=d\"\n");
    let out = setup.command(&["check-config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key `postgres.connect`") && err.contains("password"),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");

    let file = setup.dir.path().join("pw");
    std::fs::write(&file, "secret\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    write(&format!(
        "connect = \"host=/tmp user=u dbname=d\"\npassword-file = {:?}\n",
        file.display().to_string()
    ));
    let out = setup.command(&["check-config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = setup.command(&["check-config"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("secret"));
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME.pem`, `NAME.key`) that signs `server.pem` for DNS name `localhost` only.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

// TLS as `tls = "verify-full"` promises: the chain checked against `tls-ca-file`, and the
// server's name against the host in `connect`; a failure of either is exit 69.

/// The cluster of the `verify-full` tests, started by the first of them: over TCP on
/// 127.0.0.1 with a certificate a CA of the test's signed for `localhost` only, where the role
/// `rc` logs in to its database `rc` with a password (SCRAM), as in production.
fn tls_cluster() -> &'static Cluster {
    static TLS: OnceLock<Cluster> = OnceLock::new();
    TLS.get_or_init(|| {
        prerequisite(
            "openssl, to make certificates",
            Command::new("openssl").arg("version").output(),
        );
        let cluster = Cluster::start_with(
            "-c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={dir}/server.pem -c ssl_key_file={dir}/server.key",
            |dir| {
                make_ca(dir, "ca");
                make_ca(dir, "other-ca");
                openssl(
                    dir,
                    &[
                        "req",
                        "-newkey",
                        "rsa:2048",
                        "-nodes",
                        "-keyout",
                        "server.key",
                        "-out",
                        "server.csr",
                        "-subj",
                        "/CN=localhost",
                    ],
                );
                std::fs::write(
                    dir.join("server.ext"),
                    "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
                )
                .unwrap();
                openssl(
                    dir,
                    &[
                        "x509",
                        "-req",
                        "-in",
                        "server.csr",
                        "-CA",
                        "ca.pem",
                        "-CAkey",
                        "ca.key",
                        "-CAcreateserial",
                        "-days",
                        "2",
                        "-out",
                        "server.pem",
                        "-extfile",
                        "server.ext",
                    ],
                );
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(
                    dir.join("server.key"),
                    std::fs::Permissions::from_mode(0o600),
                )
                .unwrap();
            },
        );
        cluster.psql("postgres", "CREATE ROLE rc LOGIN PASSWORD 'pw-secret'");
        cluster.psql("postgres", "CREATE DATABASE rc OWNER rc");
        std::fs::write(
            format!("{}/pg_hba.conf", cluster.data()),
            "local all postgres trust\nhostssl rc rc 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        cluster.psql("postgres", "SELECT pg_reload_conf()");
        cluster
    })
}

/// A run against [`tls_cluster`] under `verify-full`, connecting to `host` with the CA `ca`
/// (`ca` or `other-ca`) and the password `password`.
fn run_verify_full(host: &str, ca: &str, password: &str) -> Finished {
    use std::os::unix::fs::PermissionsExt as _;
    let cluster = tls_cluster();
    let fast = ApiServer::fast();
    let dir = cluster.socket_dir();
    let port = cluster.port;
    let setup = Setup::new(&fast.url, &[("lock-backend", "\"postgres\"")]);
    let secret = setup.dir.path().join("password");
    std::fs::write(&secret, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(&format!(
        "\n[postgres]\nconnect = \"host={host} port={port} user=rc dbname=rc\"\ntls-ca-file = \"{dir}/{ca}.pem\"\nconnect-timeout = \"3s\"\npassword-file = {:?}\n",
        secret.display().to_string()
    ));
    std::fs::write(&setup.config, text).unwrap();
    setup.run(&["--trigger", "manual"])
}

#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn verify_full_connects_with_the_right_ca_host_name_and_password() {
    let verified = run_verify_full("localhost", "ca", "pw-secret");
    assert_eq!(verified.code, Some(0), "{}", verified.stderr);
}

#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn verify_full_with_a_wrong_password_is_exit_69() {
    let wrong_password = run_verify_full("localhost", "ca", "not-it");
    assert_eq!(wrong_password.code, Some(69), "{}", wrong_password.stderr);
    assert!(
        wrong_password
            .stderr
            .contains("password authentication failed"),
        "{}",
        wrong_password.stderr
    );
}

#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn verify_full_refuses_a_host_name_the_certificate_does_not_name_with_exit_69() {
    let wrong_name = run_verify_full("127.0.0.1", "ca", "pw-secret");
    assert_eq!(wrong_name.code, Some(69), "{}", wrong_name.stderr);
    assert!(
        wrong_name.stderr.contains("certificate"),
        "{}",
        wrong_name.stderr
    );
    eprintln!(
        "verify-full: name mismatch -> {}",
        wrong_name
            .stderr
            .lines()
            .find(|l| l.contains("certificate"))
            .unwrap_or("")
    );
}

#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn verify_full_refuses_a_certificate_another_ca_signed_with_exit_69() {
    let wrong_ca = run_verify_full("localhost", "other-ca", "pw-secret");
    assert_eq!(wrong_ca.code, Some(69), "{}", wrong_ca.stderr);
    assert!(
        wrong_ca.stderr.contains("certificate"),
        "{}",
        wrong_ca.stderr
    );
}
