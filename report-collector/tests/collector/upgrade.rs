//! A rolling upgrade: one host on the previous version and one on this version share one
//! PostgreSQL lock, and the previous version's guarantees hold between them, either way round:
//! never two collections at once, a ticket a killed holder left is resumed by the other version,
//! and a timer's slot is collected once.
//!
//! The previous version is the collector built from the tree at [`PREVIOUS`], the last release
//! before the lock core (the schema and the row's guards are the same). `make test` builds it
//! once into the tests' target directory (`scripts/previous-collector.sh`, about 30 s on top of
//! the tests' own build) and names it in `REPORT_COLLECTOR_PREVIOUS`. Needs that binary, root and
//! PostgreSQL 15: a plain `cargo test` lists these tests as left out.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::postgres::{host, reports, wait_for_row};
use crate::util::cluster::{Cluster, Fleet};
use crate::util::*;

/// The commit the previous version is built from (scripts/previous-collector.sh names it too).
pub const PREVIOUS: &str = "e3333e3267f373c5f2853c6e5ca96695846b3b67";

/// The previous version's binary, checked once: named, there, and not this version's.
fn previous_binary() -> &'static Path {
    static CHECKED: OnceLock<PathBuf> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let binary = prerequisite(
            &format!("the previous version's collector (commit {PREVIOUS}), built by scripts/previous-collector.sh and named in REPORT_COLLECTOR_PREVIOUS"),
            std::env::var("REPORT_COLLECTOR_PREVIOUS").map_err(|e| e.to_string()).and_then(|path| {
                if Path::new(&path).is_file() {
                    Ok(PathBuf::from(path))
                } else {
                    Err(format!("{path} is not a file"))
                }
            }),
        );
        let this = std::fs::read(env!("CARGO_BIN_EXE_report-collector")).unwrap();
        assert!(
            std::fs::read(&binary).unwrap() != this,
            "{} is this version's collector, not the previous one",
            binary.display()
        );
        binary
    })
}

/// One collector binary: the previous version's or this one's.
#[derive(Debug, Clone)]
struct Version {
    name: &'static str,
    binary: PathBuf,
}

impl Version {
    fn previous() -> Version {
        Version {
            name: "previous",
            binary: previous_binary().to_owned(),
        }
    }

    fn this() -> Version {
        Version {
            name: "this",
            binary: PathBuf::from(env!("CARGO_BIN_EXE_report-collector")),
        }
    }

    /// Both, in the order `first_previous` says.
    fn both(first_previous: bool) -> [Version; 2] {
        if first_previous {
            [Version::previous(), Version::this()]
        } else {
            [Version::this(), Version::previous()]
        }
    }
}

/// A host of `fleet` running `version`, on the lock `lock_name`.
struct Host {
    version: Version,
    setup: Setup,
}

impl Host {
    fn new(
        version: Version,
        fleet: &Fleet,
        server_url: &str,
        lock_name: &str,
        extra: &[(&str, &str)],
    ) -> Host {
        let name = format!("host-{}", version.name);
        Host {
            setup: host(fleet, server_url, &name, lock_name, extra),
            version,
        }
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.setup
            .command_of(&self.version.binary, args)
            .spawn()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> Finished {
        finish(self.spawn(args))
    }

    fn name(&self) -> String {
        format!("host-{}", self.version.name)
    }
}

/// The previous version runs with the configuration the tests write: a mismatch would make
/// every other test here fail for the wrong reason.
#[test]
#[ignore = "needs root, PostgreSQL 15 and the previous version's binary: `make test` builds it and runs it (cargo test -- --include-ignored)"]
fn the_previous_version_collects_on_its_own() {
    let fleet = Cluster::shared().fleet("upgrade-alone");
    let fast = ApiServer::fast();
    let previous = Host::new(Version::previous(), &fleet, &fast.url, "alone", &[]);
    let run = previous.run(&["--trigger", "manual"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(reports(&previous.setup).len(), 1);
}

/// Started together, again and again, either version first: exactly one collects and the other
/// skips for the lock, naming the collecting host as the holder, every round.
#[test]
#[ignore = "needs root, PostgreSQL 15 and the previous version's binary: `make test` builds it and runs it (cargo test -- --include-ignored)"]
fn hosts_of_both_versions_started_together_never_collect_at_once() {
    let _timing = timing_guard();
    let fleet = Cluster::shared().fleet("upgrade-crowd");
    // Long enough that the second start always finds the first one holding the lock.
    let slow = ApiServer::slow(Duration::from_secs(2));
    let hosts =
        Version::both(true).map(|version| Host::new(version, &fleet, &slow.url, "crowd", &[]));
    for round in 0..6 {
        let order: Vec<&Host> = if round % 2 == 0 {
            hosts.iter().collect()
        } else {
            hosts.iter().rev().collect()
        };
        let children: Vec<(String, Child)> = order
            .iter()
            .map(|h| (h.name(), h.spawn(&["--trigger", "manual"])))
            .collect();
        let mut runs: Vec<(i32, String, String)> = children
            .into_iter()
            .map(|(name, child)| {
                let run = finish(child);
                (run.code.unwrap_or(-1), name, run.stderr)
            })
            .collect();
        runs.sort();
        let [(collected, holder, _), (skipped, skipper, stderr)] = &runs[..] else {
            unreachable!()
        };
        assert!(
            *collected == 0 && *skipped == 75,
            "round {round}: want one collection and one skip: {runs:#?}"
        );
        assert!(
            stderr.contains(&format!(" on host {holder}")),
            "round {round}: {skipper} did not name {holder} as the holder: {stderr}"
        );
    }
    let collected: usize = hosts.iter().map(|h| reports(&h.setup).len()).sum();
    assert_eq!(collected, 6);
}

/// A holder killed on one version leaves its ticket; the other version resumes it after the
/// lease and saves its report once.
#[test]
#[ignore = "needs root, PostgreSQL 15 and the previous version's binary: `make test` builds it and runs it (cargo test -- --include-ignored)"]
fn a_ticket_left_by_a_killed_holder_of_either_version_is_resumed_by_the_other() {
    let fleet = Cluster::shared().fleet("upgrade-resume");
    let generating = ApiServer::slow(Duration::from_secs(4));
    for first_previous in [true, false] {
        let lock = format!("resume-{first_previous}");
        let [killed_version, next_version] = Version::both(first_previous);
        let killed_host = Host::new(killed_version, &fleet, &generating.url, &lock, &[]);
        let next = Host::new(next_version, &fleet, &generating.url, &lock, &[]);
        let killed = killed_host.spawn(&["--trigger", "manual"]);
        wait_for_row(&fleet, &lock, &killed_host.name(), true);
        let ticket = fleet.row(&lock, "ticket");
        signal(&killed, Signal::SIGKILL);
        let _ = finish(killed);
        let resumed = next.run(&["--trigger", "manual"]);
        let case = format!("{} killed, {} next", killed_host.name(), next.name());
        assert_eq!(resumed.code, Some(0), "{case}: {}", resumed.stderr);
        assert!(
            resumed
                .stderr
                .contains(&format!("resuming ticket {ticket}")),
            "{case}: {}",
            resumed.stderr
        );
        let saved = reports(&next.setup);
        assert!(
            saved.len() == 1 && saved[0].contains(&ticket),
            "{case}: {saved:?}"
        );
        assert!(reports(&killed_host.setup).is_empty(), "{case}");
        assert_eq!(fleet.row(&lock, "COALESCE(ticket, '')"), "", "{case}");
    }
}

/// A timer's slot collected by one version is skipped by the other's timer run, naming the
/// host that took it.
#[test]
#[ignore = "needs root, PostgreSQL 15 and the previous version's binary: `make test` builds it and runs it (cargo test -- --include-ignored)"]
fn a_slot_collected_by_either_version_is_skipped_by_the_other() {
    let fleet = Cluster::shared().fleet("upgrade-slots");
    let fast = ApiServer::fast();
    for first_previous in [true, false] {
        let lock = format!("slots-{first_previous}");
        let [first, second] = Version::both(first_previous).map(|v| {
            Host::new(
                v,
                &fleet,
                &fast.url,
                &lock,
                &[("schedule-period", "\"1h\"")],
            )
        });
        let took = first.run(&["--trigger", "timer"]);
        assert_eq!(took.code, Some(0), "{}: {}", first.name(), took.stderr);
        let skipped = second.run(&["--trigger", "timer"]);
        let case = format!("{} after {}", second.name(), first.name());
        assert_eq!(skipped.code, Some(75), "{case}: {}", skipped.stderr);
        assert!(
            skipped
                .stderr
                .contains(&format!("already taken by host {}", first.name())),
            "{case}: {}",
            skipped.stderr
        );
        assert!(reports(&second.setup).is_empty(), "{case}");
    }
}
