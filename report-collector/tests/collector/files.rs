//! A hostile or careless file system, through the real binary: symbolic links, FIFOs and
//! unreadable files where the collector's files should be, a clock that moved back under the
//! report directory, a lock that outlived the process that took it, `status` run by a user
//! who may not read what it inspects, and a FIFO, a device or a huge file as the configuration
//! or the password file, and a run by root that may read the password only as the user it
//! becomes.

use std::io::BufRead as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::util::*;
use report_collector::lock::flock::token_file;
use report_collector::lock::proc_locks::holds_flock;
use report_collector::state::State;
use report_collector::store;
use report_common::message_id;

const CSV: &str = "timestamp,data\n2026-01-01T00:00:00Z,42\n";

#[test]
fn a_symlink_as_lock_file_is_refused_and_its_target_never_touched() {
    let server = fixed_report_server(CSV);
    let setup = Setup::new(&server.url, &[]);
    let victim = setup.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    symlink(&victim, &setup.lock).unwrap();
    let run = setup.run(&[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let expected = format!(
        "{} is a symbolic link, not a regular file",
        setup.lock.display()
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(run.stderr.contains("remove it"), "{}", run.stderr);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(setup.report_files().is_empty());

    // A dangling link: its target is never created.
    let nowhere = setup.dir.path().join("nowhere");
    std::fs::remove_file(&setup.lock).unwrap();
    symlink(&nowhere, &setup.lock).unwrap();
    let run = setup.run(&[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(!nowhere.exists());
}

/// The lock's token file beside the lock file: counted by each run, never deleted; one that is
/// not a token file, or cannot be used, fails the run before it asks the server anything,
/// shows what it holds escaped, is left as it is, and leaves the lock free; removed by hand, a
/// new id starts.
#[test]
fn the_token_file_counts_each_run_and_fails_the_run_when_hostile_or_unusable() {
    let (server, paths) = recording_server();
    let setup = Setup::new(&server.url, &[]);
    let token = token_file::path_beside(&setup.lock);
    let read = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&token).unwrap()).unwrap()
    };
    assert_code(&setup.run(&[]), 0);
    let first = read();
    assert_code(&setup.run(&[]), 0);
    let second = read();
    assert_eq!(first["lock"], second["lock"], "the lock's id is kept");
    assert_eq!(first["epoch"], second["epoch"], "one boot, one epoch");
    assert_eq!(
        second["count"].as_u64(),
        first["count"].as_u64().map(|c| c + 1)
    );

    // A hostile file: the run fails before any request, shows it escaped, leaves it as it is.
    let hostile = "{\"lock\":\"\u{1b}]0;pwned\u{7}\",\"boot\":\"\",\"epoch\":1,\"count\":1}";
    std::fs::write(&token, hostile).unwrap();
    paths.lock().unwrap().clear();
    let run = setup.run(&[]);
    assert_code(&run, 1);
    assert!(
        run.stderr.contains("is not a token file")
            && run.stderr.contains(&format!("remove {}", token.display())),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains('\u{1b}'), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&token).unwrap(), hostile);
    assert!(
        paths.lock().unwrap().is_empty(),
        "{:?}",
        paths.lock().unwrap()
    );
    assert_eq!(setup.holder(), None, "the lock is free again");

    // Removed by hand: a new id starts.
    std::fs::remove_file(&token).unwrap();
    assert_code(&setup.run(&[]), 0);
    let fresh = read();
    assert_ne!(fresh["lock"], first["lock"], "a new id starts");
    assert_eq!(
        (fresh["epoch"].as_u64(), fresh["count"].as_u64()),
        (Some(1), Some(1))
    );

    std::fs::remove_file(&token).unwrap();
    std::fs::create_dir(&token).unwrap();
    paths.lock().unwrap().clear();
    let run = setup.run(&[]);
    assert_code(&run, 1);
    assert!(
        run.stderr.contains(&format!(
            "{} is a directory, not a regular file",
            token.display()
        )),
        "{}",
        run.stderr
    );
    assert!(
        paths.lock().unwrap().is_empty(),
        "{:?}",
        paths.lock().unwrap()
    );
    assert_eq!(setup.holder(), None, "the lock is free again");
}

#[test]
fn a_fifo_as_lock_file_is_refused_without_blocking() {
    let server = fixed_report_server(CSV);
    let setup = Setup::new(&server.url, &[]);
    nix::unistd::mkfifo(&setup.lock, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let run = finish_within(setup.spawn(&[]), Duration::from_secs(10));
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("is a FIFO, not a regular file"),
        "{}",
        run.stderr
    );
    let status = finish_within(setup.spawn(&["status"]), Duration::from_secs(10));
    assert_eq!(status.code, Some(74), "{}", status.stdout);
    assert!(
        status.stdout.contains("lock:     unknown"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("it is a FIFO"), "{}", status.stdout);
}

#[test]
fn a_symlinked_state_or_metrics_file_is_refused_not_written_through() {
    let server = fixed_report_server(CSV);
    let setup = Setup::new(
        &server.url,
        &[("metrics-file", "\"{dir}/metrics/report-collector.prom\"")],
    );
    let victim = setup.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    symlink(&victim, &setup.state).unwrap();
    std::fs::create_dir_all(setup.metrics.parent().unwrap()).unwrap();
    symlink(&victim, &setup.metrics).unwrap();
    let run = setup.run(&[]);
    // The report is collected and saved; what cannot be recorded is said, with the path.
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    for (path, id) in [
        (&setup.state, message_id::STATE_FILE_PROBLEM),
        (&setup.metrics, message_id::METRICS_NOT_WRITTEN),
    ] {
        let named = lines_with_id(&run.stderr, id)
            .into_iter()
            .any(|l| l.contains(&path.display().to_string()) && l.contains("a symbolic link"));
        assert!(named, "{}: {}", path.display(), run.stderr);
        assert!(std::fs::symlink_metadata(path).unwrap().is_symlink());
    }
    // Access is not what failed: no setfacl advice.
    assert!(!run.stderr.contains("setfacl"), "{}", run.stderr);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(setup.report_files().len(), 1);
}

#[test]
fn symlinked_report_and_state_directories_keep_working() {
    let server = fixed_report_server(CSV);
    let other_disk = tempfile::tempdir().unwrap();
    let setup = Setup::new(
        &server.url,
        &[
            ("report-dir", "\"{dir}/linked-reports\""),
            ("state-file", "\"{dir}/linked-state/last-run.json\""),
        ],
    );
    let reports = other_disk.path().join("reports");
    let state = other_disk.path().join("state");
    std::fs::create_dir(&reports).unwrap();
    std::fs::create_dir(&state).unwrap();
    symlink(&reports, setup.dir.path().join("linked-reports")).unwrap();
    symlink(&state, setup.dir.path().join("linked-state")).unwrap();
    let run = setup.run(&[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(files_in(&reports).len(), 1);
    assert!(State::load(&state.join("last-run.json")).unwrap().is_some());
}

/// A report name `secs` from now, as the collector would have named it then.
fn report_at(dir: &Path, secs_from_now: u64, ticket: &str) -> std::path::PathBuf {
    let when = SystemTime::now() + Duration::from_secs(secs_from_now);
    let path = dir.join(store::file_name(
        report_collector::time::Timestamp::from(when),
        &report_common::ticket::Ticket::new(ticket).unwrap(),
    ));
    std::fs::write(&path, CSV).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(when)
        .unwrap();
    path
}

#[test]
fn after_the_clock_moved_back_retention_keeps_the_reports_just_collected() {
    let server = fixed_report_server(CSV);
    let setup = Setup::new(&server.url, &[("keep-reports", "2")]);
    std::fs::create_dir_all(&setup.reports).unwrap();
    // Saved while the clock ran a day ahead: names and mtimes in the future.
    let year = 365 * 24 * 3600;
    let future: Vec<_> = (0..3)
        .map(|i| report_at(&setup.reports, year + i * 60, &format!("future{i}_0")))
        .collect();
    for round in 1..=3 {
        let run = setup.run(&[]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let state = State::load(&setup.state).unwrap().unwrap();
        let last = state.last_collection.unwrap().report;
        assert!(
            last.exists(),
            "round {round}: the state file's report is kept"
        );
        assert_eq!(setup.report_files().len(), 2, "round {round}");
    }
    assert!(
        future.iter().all(|p| !p.exists()),
        "{:?}",
        setup.report_files()
    );
    let status = setup.run(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let state = State::load(&setup.state).unwrap().unwrap();
    let last = state.last_collection.unwrap().report;
    assert_eq!(
        json["reports"]["newest"].as_str(),
        last.file_name().unwrap().to_str(),
        "the newest is the last collected, whatever its name"
    );
}

/// A process that takes the lock and writes its record, then forks a child that inherits the
/// descriptor and exits: the lock lives on in the child, and /proc/locks goes on naming the
/// parent. Returns (parent pid, child).
fn lock_outliving_its_taker(lock: &Path) -> (u32, u32) {
    let script = r#"use Fcntl qw(:flock); use POSIX ();
open(my $fh, '+>>', $ARGV[0]) or die "open: $!";
flock($fh, LOCK_EX | LOCK_NB) or die "busy";
truncate($fh, 0); print $fh qq({"pid":$$,"since":"2024-01-01T00:00:00Z","ticket":null}\n);
$fh->flush;
my $child = fork(); die "fork: $!" unless defined $child;
if ($child == 0) { close(STDOUT); POSIX::setsid(); sleep 60; exit 0; }
print STDOUT "$$ $child\n"; exit 0;"#;
    let mut parent = Command::new("perl")
        .arg("-e")
        .arg(script)
        .arg(lock)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(parent.wait().unwrap().success());
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    (pids[0], pids[1])
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        None,
    )
    .is_ok()
}

#[test]
fn replace_signals_nothing_when_the_lock_outlived_the_process_that_took_it() {
    let server = fixed_report_server(CSV);
    let setup = Setup::new(&server.url, &[("replace-grace", "\"300ms\"")]);
    std::fs::write(&setup.lock, "").unwrap();
    let (parent, child) = lock_outliving_its_taker(&setup.lock);
    // The kernel still names the parent, the record too: what a reused pid would inherit.
    let holder = setup.holder().expect("the lock is held");
    assert_eq!(holder.pid, Some(parent));
    assert!(holder.confirmed);

    let meta = std::fs::metadata(&setup.lock).unwrap();
    assert!(
        holds_flock(child, meta.dev(), meta.ino()).unwrap(),
        "the real holder"
    );
    assert!(
        !holds_flock(parent, meta.dev(), meta.ino()).unwrap(),
        "gone"
    );
    let mut unrelated = Command::new("sleep").arg("60").spawn().unwrap();
    assert!(!holds_flock(unrelated.id(), meta.dev(), meta.ino()).unwrap());
    // Holding the same file open without the lock is not holding it.
    let open = std::fs::File::open(&setup.lock).unwrap();
    assert!(!holds_flock(std::process::id(), meta.dev(), meta.ino()).unwrap());
    drop(open);

    let run = setup.run(&["--policy", "replace"]);
    assert_eq!(run.code, Some(75), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("was not seen holding an open descriptor"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("signalled nothing"), "{}", run.stderr);
    assert!(alive(child), "the child holding the lock was not signalled");
    assert!(running(&mut unrelated));
    unrelated.kill().unwrap();
    let _ = unrelated.wait();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// `report-collector status` as the unprivileged user nobody.
fn status_as_nobody(setup: &Setup, args: &[&str]) -> Finished {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    finish_within(
        setup
            .command_wrapped(
                &[
                    "setpriv",
                    "--reuid=nobody",
                    "--regid=nogroup",
                    "--clear-groups",
                ],
                &all,
            )
            .spawn()
            .unwrap(),
        Duration::from_secs(10),
    )
}

/// That a process can be run as nobody here (setpriv, as root), or a failure saying why not.
fn run_as_nobody_works() {
    let probe = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "true",
        ])
        .output();
    prerequisite(
        "to run a process as nobody (setpriv, as root)",
        match probe {
            Ok(out) if out.status.success() => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

#[test]
#[ignore = "needs root: `make test` runs it (cargo test -- --include-ignored)"]
fn status_as_a_user_who_cannot_read_the_lock_file_never_says_free() {
    run_as_nobody_works();
    let busy = ApiServer::in_heavy_load();
    let setup = Setup::new(&busy.url, &[]);
    std::fs::set_permissions(setup.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let holder = setup.spawn(&[]);
    setup.wait_for_holder(holder.id(), true);
    std::fs::set_permissions(&setup.lock, std::fs::Permissions::from_mode(0o600)).unwrap();

    let out = status_as_nobody(&setup, &[]);
    assert_eq!(out.code, Some(77), "{}{}", out.stdout, out.stderr);
    let held = format!("lock:     held by pid {}", holder.id());
    assert!(out.stdout.contains(&held), "{}", out.stdout);
    assert!(out.stdout.contains("Permission denied"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&setup.lock.display().to_string()),
        "{}",
        out.stdout
    );
    let json = status_as_nobody(&setup, &["--json"]);
    assert_eq!(json.code, Some(77));
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(json["lock"]["held"], true);
    assert_eq!(json["lock"]["pid"], holder.id());
    assert_eq!(json["problems"][0]["exit_code"], 77);

    // Its directory not even searchable: nothing can be said of the lock, and it says so.
    let locked_dir = setup.dir.path();
    std::fs::set_permissions(locked_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&setup.lock, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = status_as_nobody(&setup, &["--json"]);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_ne!(json["lock"]["held"], false, "{}", out.stdout);

    signal(&holder, nix::sys::signal::Signal::SIGTERM);
    let _ = finish(holder);
}

/// What a hostile file system can put where a file should be.
#[derive(Debug, Clone, Copy)]
enum Planted {
    Symlink,
    Dangling,
    Fifo,
    Directory,
    Socket,
    Device,
}

impl Planted {
    const ALL: [Planted; 6] = [
        Planted::Symlink,
        Planted::Dangling,
        Planted::Fifo,
        Planted::Directory,
        Planted::Socket,
        Planted::Device,
    ];

    /// How the collector names it.
    fn words(self) -> &'static str {
        match self {
            Planted::Symlink | Planted::Dangling => "a symbolic link",
            Planted::Fifo => "a FIFO",
            Planted::Directory => "a directory",
            Planted::Socket => "a socket",
            Planted::Device => "a device",
        }
    }

    /// Puts it at `path`; `victim` is what a link points to, `nowhere` what a dangling one
    /// does. The socket's listener is returned to keep it open.
    fn plant(
        self,
        path: &Path,
        victim: &Path,
        nowhere: &Path,
    ) -> Option<std::os::unix::net::UnixListener> {
        use nix::sys::stat::{Mode, SFlag, makedev, mknod};
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        match self {
            Planted::Symlink => symlink(victim, path).unwrap(),
            Planted::Dangling => symlink(nowhere, path).unwrap(),
            Planted::Fifo => nix::unistd::mkfifo(path, Mode::S_IRWXU).unwrap(),
            Planted::Directory => std::fs::create_dir(path).unwrap(),
            Planted::Socket => return Some(std::os::unix::net::UnixListener::bind(path).unwrap()),
            // The null device's numbers: writing to it would lose the file silently.
            Planted::Device => {
                mknod(path, SFlag::S_IFCHR, Mode::S_IRWXU, makedev(1, 3)).unwrap();
            }
        }
        None
    }
}

#[test]
fn anything_but_a_regular_file_at_any_of_the_collectors_paths_is_refused_by_name() {
    let server = fixed_report_server(CSV);
    let mut probes = 0;
    for planted in Planted::ALL {
        for which in ["lock", "token", "state", "metrics", "metrics lock", "order"] {
            let setup = Setup::new(
                &server.url,
                &[("metrics-file", "\"{dir}/metrics/report-collector.prom\"")],
            );
            let path = match which {
                "lock" => setup.lock.clone(),
                "token" => token_file::path_beside(&setup.lock),
                "state" => setup.state.clone(),
                "metrics" => setup.metrics.clone(),
                "metrics lock" => report_collector::metrics::lock_path(&setup.metrics),
                _ => store::order_path(&setup.state),
            };
            let victim = setup.dir.path().join("victim");
            std::fs::write(&victim, "precious").unwrap();
            let nowhere = setup.dir.path().join("nowhere");
            let _socket = planted.plant(&path, &victim, &nowhere);
            let at = format!("{planted:?} as the {which} file");

            let run = finish_within(setup.spawn(&[]), Duration::from_secs(10));
            let expected = if matches!(which, "lock" | "token") {
                1
            } else {
                0
            };
            assert_eq!(run.code, Some(expected), "{at}: {}", run.stderr);
            let named = run.stderr.lines().any(|line| {
                line.contains(&path.display().to_string()) && line.contains(planted.words())
            });
            assert!(named, "{at}: {}", run.stderr);
            assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "{at}");
            assert!(
                !nowhere.exists(),
                "{at}: a dangling link's target is never created"
            );
            let still = std::fs::symlink_metadata(&path).unwrap();
            assert!(!still.is_file(), "{at}: left as it was, not replaced");

            let status = finish_within(setup.spawn(&["status"]), Duration::from_secs(10));
            if matches!(which, "lock" | "state") {
                assert_eq!(status.code, Some(74), "{at}: {}", status.stdout);
                assert!(
                    status.stdout.contains(&path.display().to_string()),
                    "{at}: {}",
                    status.stdout
                );
            }
            probes += 1;
        }
    }
    eprintln!("{probes} planted files refused by name");
}

/// The user nobody, for runs that must not be root (root reads and writes through any mode),
/// given files by root: a failure saying what is missing where either is not there.
fn nobody() -> nix::unistd::User {
    require_root("to give files to nobody");
    require_user("nobody")
}

/// Gives the test's directory to `user`: a run started by root then switches to that user
/// before it touches anything (see `identity`), as a run by hand on a packaged host does.
fn give_dir_to(setup: &Setup, user: &nix::unistd::User) {
    nix::unistd::chown(setup.dir.path(), Some(user.uid), Some(user.gid)).unwrap();
}

/// A state file the first release wrote after a collection.
const OLD_STATE: &str = r#"{"outcome": "collected", "exit_code": 0,
"started": "2024-01-01T12:00:00Z", "started_unix": 1704110400.0, "duration_seconds": 5.25,
"ticket": "abc_0", "holder_pid": null, "policy": "forbid", "slot": "2024-01-01T12:00:00Z",
"trigger": "report-collector.timer", "report": "/var/lib/report-collector/reports/20240101T120005Z_abc_0.csv",
"message": "collected", "pid": 4242}"#;

#[test]
#[ignore = "needs root: `make test` runs it (cargo test -- --include-ignored)"]
fn a_state_file_the_run_cannot_read_is_left_as_it_is_and_the_report_still_saved() {
    let nobody = nobody();
    let server = fixed_report_server(CSV);
    let setup = Setup::new(
        &server.url,
        &[("metrics-file", "\"{dir}/metrics/report-collector.prom\"")],
    );
    // Root's file, mode 600, in a directory of nobody's: the run (as nobody) cannot read it,
    // but could rename a new one over it.
    std::fs::write(&setup.state, OLD_STATE).unwrap();
    std::fs::set_permissions(&setup.state, std::fs::Permissions::from_mode(0o600)).unwrap();
    give_dir_to(&setup, &nobody);
    let metrics_dir = setup.metrics.parent().unwrap();
    std::fs::create_dir(metrics_dir).unwrap();
    nix::unistd::chown(metrics_dir, Some(nobody.uid), Some(nobody.gid)).unwrap();

    for round in 1..=2 {
        let run = setup.run(&[]);
        assert_eq!(run.code, Some(0), "round {round}: {}", run.stderr);
        assert_eq!(setup.report_files().len(), round, "{}", run.stderr);
        assert_eq!(
            std::fs::read_to_string(&setup.state).unwrap(),
            OLD_STATE,
            "round {round}: nothing in it lost"
        );
        let said = run.stderr.lines().any(|line| {
            line.contains(&setup.state.display().to_string())
                && line.contains("Permission denied")
                && line.contains("not on record")
                && line.contains("chown report-collector:report-collector")
        });
        assert!(said, "round {round}: {}", run.stderr);
    }
    // A skip meanwhile (the lock held) keeps the metrics' last success, which the state file
    // cannot give: the "absent" alert must not fire over an unreadable state file.
    let last_success = |text: &str| {
        text.lines()
            .find(|line| line.starts_with("report_collector_last_success_timestamp_seconds "))
            .map(str::to_owned)
    };
    let before = last_success(&std::fs::read_to_string(&setup.metrics).unwrap());
    assert!(before.is_some(), "the runs that collected wrote it");
    let held = std::fs::File::open(&setup.lock).unwrap();
    held.try_lock().unwrap();
    let run = setup.run(&[]);
    assert_code(&run, 75);
    drop(held);
    let after = std::fs::read_to_string(&setup.metrics).unwrap();
    assert!(
        after.contains("report_collector_last_run_outcome{outcome=\"skipped\"} 1\n"),
        "{after}"
    );
    assert_eq!(last_success(&after), before, "{after}");
    // Once it is the run's user's again, the next run reads it and keeps what it held.
    nix::unistd::chown(&setup.state, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let run = setup.run(&[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let state = State::load(&setup.state).unwrap().unwrap();
    assert_eq!(state.first_run.unix_seconds(), 1_704_110_400.0);
    assert_eq!(state.last_run.outcome, "collected");
}

#[test]
#[ignore = "needs root: `make test` runs it (cargo test -- --include-ignored)"]
fn a_metrics_directory_the_run_cannot_write_is_named_and_the_run_still_collects() {
    let server = fixed_report_server(CSV);
    let metrics_file = ("metrics-file", "\"{dir}/metrics/report-collector.prom\"");

    // A file where the directory should be: no user, root included, can write there.
    let setup = Setup::new(&server.url, &[metrics_file]);
    std::fs::write(setup.metrics.parent().unwrap(), "not a directory").unwrap();
    let mut cases = vec![("a file in place of the directory", setup)];
    // node_exporter's directory as Debian ships it: root's, mode 755; the run is another user.
    {
        let nobody = nobody();
        let setup = Setup::new(&server.url, &[metrics_file]);
        std::fs::create_dir(setup.metrics.parent().unwrap()).unwrap();
        give_dir_to(&setup, &nobody);
        cases.push(("a directory of root's, the run as nobody", setup));
    }
    for (case, setup) in cases {
        let run = setup.run(&[]);
        assert_eq!(run.code, Some(0), "{case}: {}", run.stderr);
        assert_eq!(setup.report_files().len(), 1, "{case}: {}", run.stderr);
        let state = State::load(&setup.state).unwrap().unwrap();
        assert_eq!(state.last_run.outcome, "collected", "{case}");
        assert!(!setup.metrics.exists(), "{case}");
        let named = run.stderr.lines().any(|line| {
            line.contains("WARN") && line.contains(&setup.metrics.display().to_string())
        });
        assert!(named, "{case}: {}", run.stderr);
    }
}

#[test]
#[ignore = "needs root: `make test` runs it (cargo test -- --include-ignored)"]
fn status_as_a_user_who_cannot_enter_the_state_directory_is_a_permission_problem() {
    run_as_nobody_works();
    let server = fixed_report_server(CSV);
    let setup = Setup::new(
        &server.url,
        &[
            ("state-file", "\"{dir}/state/last-run.json\""),
            ("lock-file", "\"{dir}/state/collector.lock\""),
            ("report-dir", "\"{dir}/state/reports\""),
        ],
    );
    let run = setup.run(&[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // The configuration readable by all; the state directory root's, mode 700.
    std::fs::set_permissions(setup.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&setup.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let state_dir = setup.dir.path().join("state");
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    let out = status_as_nobody(&setup, &["--json"]);
    assert_eq!(out.code, Some(77), "{}{}", out.stdout, out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["verdict"]["health"], "unknown", "never healthy");
    assert_eq!(json["verdict"]["exit_code"], 77);
    let reason = json["problems"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("Permission denied"), "{reason}");
    assert!(
        reason.contains(&state_dir.join("last-run.json").display().to_string()),
        "{reason}"
    );
    assert!(json["reports"]["kept"].is_null(), "{}", out.stdout);
    assert!(json["lock"]["held"].is_null(), "never a wrong free");
}

/// What can stand where the collector reads a file (its configuration, the password file):
/// each must be refused at once, naming the path and what it is.
fn unreadable_files(dir: &Path) -> Vec<(std::path::PathBuf, &'static str)> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, Mode::S_IRWXU).unwrap();
    // /dev/zero's numbers: an endless file, which a plain read grows into gigabytes.
    let zero = dir.join("zero");
    mknod(&zero, SFlag::S_IFCHR, Mode::S_IRUSR, makedev(1, 5)).unwrap();
    // 30 MB of what would otherwise be read and used: comments, or a password.
    let big = dir.join("big");
    std::fs::write(&big, "#".repeat(30 << 20)).unwrap();
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
    vec![
        (fifo, "is a FIFO, not a regular file"),
        (zero, "is a device, not a regular file"),
        (big, "is larger than"),
    ]
}

#[test]
fn a_configuration_file_that_is_a_fifo_a_device_or_too_large_is_refused_at_once() {
    let setup = Setup::new("http://127.0.0.1:1", &[]);
    for (path, said) in unreadable_files(setup.dir.path()) {
        std::fs::remove_file(&setup.config).unwrap();
        std::os::unix::fs::symlink(&path, &setup.config).unwrap();
        for args in [&["check-config"][..], &["run", "--trigger", "manual"]] {
            let out = finish_within(setup.spawn(args), Duration::from_secs(10));
            assert_code(&out, 78);
            let wanted = format!("the configuration file {} {said}", setup.config.display());
            assert!(out.stderr.contains(&wanted), "{args:?}: {}", out.stderr);
        }
    }
}

/// A configuration for the PostgreSQL lock whose server is nowhere, so that nothing is ever
/// connected to: what a run gets to is only the files it reads.
fn postgres_setup(password_file: &Path) -> Setup {
    let setup = Setup::new("http://127.0.0.1:1", &[("lock-backend", "\"postgres\"")]);
    let base = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        format!(
            "{base}\n[postgres]\nconnect = \"host=/run/nowhere user=rc dbname=rc\"\npassword-file = {:?}\n",
            password_file.display().to_string()
        ),
    )
    .unwrap();
    setup
}

#[test]
fn a_password_file_that_is_a_fifo_a_device_or_too_large_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for (path, said) in unreadable_files(dir.path()) {
        let setup = postgres_setup(&path);
        for args in [&["check-config"][..], &["run", "--trigger", "manual"]] {
            let out = finish_within(setup.spawn(args), Duration::from_secs(10));
            assert_code(&out, 78);
            let wanted = format!("the password file {} {said}", path.display());
            assert!(
                out.stderr.contains("key `postgres.password-file`") && out.stderr.contains(&wanted),
                "{args:?}: {}",
                out.stderr
            );
        }
    }
}

#[test]
#[ignore = "needs root: `make test` runs it (cargo test -- --include-ignored)"]
fn a_run_by_root_reads_the_password_only_as_the_user_it_switched_to() {
    let nobody = nobody();
    let secrets = tempfile::tempdir().unwrap();
    std::fs::set_permissions(secrets.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let password = secrets.path().join("postgres-password");
    std::fs::write(&password, "secret\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let setup = postgres_setup(&password);
    give_dir_to(&setup, &nobody);

    // Root's own check reads it: the file itself is fine.
    let check = finish_within(setup.spawn(&["check-config"]), Duration::from_secs(10));
    assert_code(&check, 0);
    // A run by root becomes nobody (the lock directory's owner) first, and nobody may not read
    // root's file: refused, naming the user, before any connection is tried.
    let run = finish_within(
        setup.spawn(&["run", "--trigger", "manual"]),
        Duration::from_secs(10),
    );
    assert_code(&run, 78);
    let switched = lines_with_id(&run.stderr, message_id::RAN_AS_OWNER);
    assert_eq!(switched.len(), 1, "{}", run.stderr);
    let refused = run.stderr.lines().any(|line| {
        line.contains(&format!(
            "cannot read the password file {}",
            password.display()
        )) && line.contains("Permission denied")
            && line.contains("the collector reads it as nobody")
    });
    assert!(refused, "{}", run.stderr);
    assert!(!run.stderr.contains("secret"), "{}", run.stderr);

    // Given to nobody, the run reads it and gets as far as the database (which is nowhere).
    nix::unistd::chown(&password, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let run = finish_within(
        setup.spawn(&["run", "--trigger", "manual"]),
        Duration::from_secs(20),
    );
    assert_code(&run, 69);
}
