//! The fence report-apis enforces, against a PostgreSQL holder paused past its lease: the real
//! collector as two "hosts" of one lock, a throw-away cluster ([`Cluster`]) and the real
//! report-apis on loopback, one server per scenario so that its own counters are the evidence.
//!
//! Host A is held up while it holds the lock: by strace at the entry of every write it makes to
//! a socket (the database's or the report server's), for [`HELD`], before the write goes out
//! (`-e inject=SYSCALL:delay_enter=..:when=N`, as `crash_points` injects KILL; a `signal=STOP`
//! injection lands only once the write is done, which is a pause while A waits for the answer,
//! and that the instants cover), and by `kill -STOP` at 20 instants spread over its run. While
//! it is stopped its lease runs out, host B takes the lock over and collects; then A goes on.
//! Each time, from the server's counters: never two tickets pending at once, no ticket
//! cancelled, every request A sent after B took over refused, and no ticket saved twice.
//! The same scenario with `[fence] enforce = false` (the control) must break one of these at
//! some point, so the checks are shown able to fail.
//!
//! Then a slow network instead of a pause: A's connections go through proxies that hold
//! what A sends. Its database stalls, so its lease runs out by its own clock and it stops, but
//! its ticket request, already on its way, reaches the server only after B has taken over.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use report_common::message_id;

use crate::postgres::{LEASE, host, reports};
use crate::util::cluster::{Cluster, Fleet};
use crate::util::*;

/// How long a report takes: long enough that B's ticket is still pending when A's held write
/// goes out.
const GENERATION: Duration = Duration::from_secs(4);
/// How long strace holds A at a write: past its lease and B's take-over and first request.
const HELD: Duration = Duration::from_secs(6);
/// Scenarios run at once, each with its own lock and server.
const AT_ONCE: usize = 4;

/// How host A is held up.
#[derive(Debug, Clone)]
enum Pause {
    /// strace holds it for [`HELD`] at the entry of its `nth` call of `syscall`.
    Syscall { syscall: String, nth: usize },
    /// `kill -STOP` this long after it started.
    After(Duration),
}

/// What one scenario left behind, read from the server and the two hosts.
#[derive(Debug)]
struct Evidence {
    at: String,
    /// The most tickets the server held pending at once.
    peak_pending: f64,
    cancelled: f64,
    /// Requests the server refused for a token below the lock's mark.
    refused_stale: f64,
    a: Finished,
    b: Finished,
    saved_twice: Vec<String>,
}

impl Evidence {
    /// What a user relies on, broken: empty when the fence held.
    fn violations(&self) -> Vec<String> {
        let mut broken = Vec::new();
        if self.peak_pending > 1.0 {
            broken.push(format!("{} tickets pending at once", self.peak_pending));
        }
        if self.cancelled > 0.0 {
            broken.push(format!("{} ticket(s) cancelled", self.cancelled));
        }
        if !self.saved_twice.is_empty() {
            broken.push(format!("saved twice: {:?}", self.saved_twice));
        }
        // B skips (75, the lock held) only when A was held while taking the lock, before its
        // lease was in the row: the lock is then A's, which stops by its own clock once it
        // goes on, its lease counted from before it was held.
        if !matches!(self.b.code, Some(0 | 75)) {
            broken.push(format!(
                "B exited {:?} (A {:?}): {}",
                self.b.code, self.a.code, self.b.stderr
            ));
        }
        // A refused by the server stops with 79: said as FENCED when it read the refusal, as
        // a lost lease when its own clock told it first (the refusal then went unread).
        let fenced = !lines_with_id(&self.a.stderr, message_id::FENCED).is_empty();
        if fenced && self.refused_stale == 0.0 {
            broken.push("A says FENCED, but the server refused nothing".to_owned());
        }
        if (fenced || self.refused_stale > 0.0) && self.a.code != Some(79) {
            broken.push(format!(
                "A was refused but exited {:?}: {}",
                self.a.code, self.a.stderr
            ));
        }
        broken
    }
}

fn server(enforce: bool) -> ApiServer {
    let mut config = report_apis::Config::default();
    config.heavy_load.period = Duration::ZERO;
    config.heavy_load.initially_on = false;
    config.report.generation_time = GENERATION;
    config.report.slowdown = 0.0;
    config.fence.enforce = enforce;
    ApiServer::start(config)
}

fn hosts(fleet: &Fleet, url_a: &str, url_b: &str, lock: &str) -> (Setup, Setup) {
    let keys = [("poll-interval", "\"500ms\""), ("deadline", "\"30s\"")];
    (
        host(fleet, url_a, "host-a", lock, &keys),
        host(fleet, url_b, "host-b", lock, &keys),
    )
}

/// The collector's pid under `strace` (its child), or `child`'s own.
fn collector_pid(child: &Child, traced: bool) -> Option<i32> {
    let pid = i32::try_from(child.id()).unwrap();
    if !traced {
        return Some(pid);
    }
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children.split_whitespace().next()?.parse().ok()
}

/// The state letter of `/proc/PID/stat`.
fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Waits until `pid` stays stopped (strace's own stops at each call are brief) or `child`
/// ends: whether it was stopped.
fn wait_until_stopped(child: &mut Child, traced: bool) -> Option<i32> {
    let start = Instant::now();
    let mut stopped_since: Option<Instant> = None;
    while start.elapsed() < PATIENCE {
        if !running(child) {
            return None;
        }
        let pid = collector_pid(child, traced);
        match pid.and_then(state_of) {
            Some('T' | 't') => {
                let since = *stopped_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(300) {
                    return pid;
                }
            }
            _ => stopped_since = None,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("host A neither stopped nor ended");
}

/// One scenario: A paused as `pause` says, B takes over, A goes on. `None` when A's run ended
/// before the pause came.
fn scenario(fleet: &Fleet, lock: &str, pause: &Pause, enforce: bool) -> Option<Evidence> {
    let server = server(enforce);
    let (a, b) = hosts(fleet, &server.url, &server.url, lock);
    let args = ["--trigger", "manual"];
    let (mut child, traced) = match pause {
        Pause::Syscall { syscall, nth } => {
            let inject = format!(
                "inject={syscall}:delay_enter={}:when={nth}",
                HELD.as_micros()
            );
            let wrapper = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", &inject];
            let mut cmd = a.command_wrapped(&wrapper, &args);
            (cmd.stdout(Stdio::null()).spawn().unwrap(), true)
        }
        Pause::After(after) => {
            let child = a.command(&args).stdout(Stdio::null()).spawn().unwrap();
            std::thread::sleep(*after);
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
            }
            (child, false)
        }
    };
    let Some(pid) = wait_until_stopped(&mut child, traced) else {
        // The run got through before the point came; anything else (strace refusing its
        // arguments, say) is no run at all.
        let ended = finish(child);
        assert!(
            matches!(ended.code, Some(0 | 75)),
            "{pause:?}: host A ended without being held: {ended:?}"
        );
        return None;
    };
    // Past A's lease by the database's clock; B then waits out whatever is left of it.
    std::thread::sleep(LEASE + Duration::from_millis(200));
    let b_run = b.run(&args);
    // Held by strace, A may have gone on and ended already.
    let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
    let a_run = finish(child);
    let in_a: BTreeSet<String> = reports(&a).into_iter().collect();
    let saved_twice = reports(&b)
        .into_iter()
        .filter(|name| in_a.contains(name))
        .collect();
    Some(Evidence {
        at: format!("{pause:?}"),
        peak_pending: metric(&server.url, "report_apis_tickets_pending_peak"),
        cancelled: metric(&server.url, "report_apis_tickets_cancelled_total"),
        refused_stale: metric(
            &server.url,
            "report_apis_rejections_total{reason=\"fence-stale\"}",
        ),
        a: a_run,
        b: b_run,
        saved_twice,
    })
}

/// Every call host A makes on a socket in an undisturbed run: (system call, its ordinal among
/// that call's invocations in the collector's main thread, where the run's I/O happens), and
/// how long the run took.
fn socket_writes(fleet: &Fleet) -> (Vec<Pause>, Duration) {
    let server = server(true);
    let (a, _) = hosts(fleet, &server.url, &server.url, "fence-count");
    let log = a.dir.path().join("strace.log");
    let log_text = log.display().to_string();
    let wrapper = [
        "strace",
        "-f",
        "-qq",
        "-yy",
        "-o",
        &log_text,
        "-e",
        "trace=write,writev,sendto,sendmsg",
    ];
    let start = Instant::now();
    let run = finish(
        a.command_wrapped(&wrapper, &["--trigger", "manual"])
            .spawn()
            .unwrap(),
    );
    let took = start.elapsed();
    assert_code(&run, 0);
    let text = std::fs::read_to_string(&log).unwrap();
    let main = text.split_whitespace().next().unwrap().to_owned();
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    let mut points = Vec::new();
    for line in text.lines() {
        // `PID  call(...)`: strace pads the pid column, so a shorter pid has more spaces.
        let Some((pid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        if pid != main {
            continue;
        }
        let Some((syscall, rest)) = call.split_once('(') else {
            continue;
        };
        let nth = seen.entry(syscall.to_owned()).or_default();
        *nth += 1;
        if rest.contains("<TCP") || rest.contains("<UNIX-STREAM") {
            points.push(Pause::Syscall {
                syscall: syscall.to_owned(),
                nth: *nth,
            });
        }
    }
    (points, took)
}

/// Runs the scenarios, [`AT_ONCE`] at a time, each with a lock of its own.
fn run_all(fleet: &Fleet, points: &[Pause], enforce: bool, tag: &str) -> Vec<Evidence> {
    let found = Mutex::new(Vec::new());
    for (chunk_no, chunk) in points.chunks(AT_ONCE).enumerate() {
        std::thread::scope(|scope| {
            for (i, pause) in chunk.iter().enumerate() {
                let found = &found;
                scope.spawn(move || {
                    let lock = format!("fence-{tag}-{chunk_no}-{i}");
                    if let Some(evidence) = scenario(fleet, &lock, pause, enforce) {
                        found.lock().unwrap().push(evidence);
                    }
                });
            }
        });
    }
    found.into_inner().unwrap()
}

#[test]
#[ignore = "needs root, strace and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn a_holder_paused_past_its_lease_at_any_point_is_refused_by_the_server() {
    let _guard = timing_guard();
    prerequisite("strace", strace_works());
    let fleet = Cluster::shared().fleet("fence_pause");
    let (writes, took) = socket_writes(&fleet);
    assert!(
        writes.len() >= 5,
        "only {} socket writes seen: is strace tracing? {writes:?}",
        writes.len()
    );
    let mut points = writes.clone();
    points.extend((0..20).map(|i| Pause::After(took * i / 20)));

    let fenced = run_all(&fleet, &points, true, "on");
    let broken: Vec<String> = fenced
        .iter()
        .flat_map(|e| e.violations().into_iter().map(|v| format!("{}: {v}", e.at)))
        .collect();
    assert!(broken.is_empty(), "{broken:#?}");
    let refused = fenced.iter().filter(|e| e.refused_stale > 0.0).count();
    eprintln!(
        "fence: {} pause points ({} socket writes, 20 instants over {took:?}), {} reached, {refused} with a stale request refused",
        points.len(),
        writes.len(),
        fenced.len()
    );
    assert!(
        fenced.len() >= points.len() / 2 && refused >= 1,
        "{} of {} points reached, {refused} with a request refused: the scenarios must reach the point where a stale request is sent",
        fenced.len(),
        points.len()
    );

    // The control: the same pauses at the socket writes, enforcement off.
    let unfenced = run_all(&fleet, &writes, false, "off");
    let broken = unfenced
        .iter()
        .filter(|e| !e.violations().is_empty())
        .count();
    eprintln!(
        "control (enforce = false): {} points reached, {broken} broke a check",
        unfenced.len()
    );
    assert!(
        broken >= 1,
        "with enforcement off no pause broke anything, so these checks cannot fail: {unfenced:#?}"
    );
}

/// A stream a proxy forwards: TCP or a Unix socket.
trait Stream: Read + Write + Send + Sized + 'static {
    fn another(&self) -> std::io::Result<Self>;
}
impl Stream for TcpStream {
    fn another(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
}
impl Stream for UnixStream {
    fn another(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
}

/// Forwards what `client` sends to a connection `connect` makes, holding it while `hold` is
/// set and sending it on once it is cleared, even when the client has gone meanwhile (a slow
/// network delivers what was sent); answers go straight back.
fn forward<S: Stream>(
    mut client: S,
    connect: impl FnOnce() -> std::io::Result<S> + Send + 'static,
    hold: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut to: Option<S> = None;
        let mut connect = Some(connect);
        loop {
            let n = client.read(&mut buf).unwrap_or(0);
            while hold.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if n == 0 {
                return;
            }
            // Connected with the first bytes it delivers, so the far end sees no idle wait.
            if let Some(connect) = connect.take() {
                let (Ok(target), Ok(mut back)) = (connect(), client.another()) else {
                    return;
                };
                if let Ok(mut answers) = target.another() {
                    std::thread::spawn(move || std::io::copy(&mut answers, &mut back));
                }
                to = Some(target);
            }
            if to
                .as_mut()
                .is_none_or(|to| to.write_all(&buf[..n]).is_err())
            {
                return;
            }
        }
    });
}

/// A TCP proxy to the server at `target`; its URL.
fn tcp_proxy(target: &str, hold: &Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let target = target.trim_start_matches("http://").to_owned();
    let hold = Arc::clone(hold);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let target = target.clone();
            forward(client, move || TcpStream::connect(target), hold.clone());
        }
    });
    url
}

/// A proxy of the cluster's socket, under the same port in a directory of its own: that
/// directory, for `host=` in `postgres.connect`.
fn unix_proxy(cluster: &Cluster, hold: &Arc<AtomicBool>) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("rc-pgproxy")
        .tempdir_in("/tmp")
        .unwrap();
    let name = format!(".s.PGSQL.{}", cluster.port);
    let listener = UnixListener::bind(dir.path().join(&name)).unwrap();
    let target = Path::new(&cluster.socket_dir()).join(&name);
    let hold = Arc::clone(hold);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let target = target.clone();
            forward(client, move || UnixStream::connect(target), hold.clone());
        }
    });
    dir
}

#[test]
#[ignore = "needs root and PostgreSQL 15: `make test` runs it (cargo test -- --include-ignored)"]
fn a_request_delivered_late_by_the_network_is_refused() {
    let _guard = timing_guard();
    let cluster = Cluster::shared();
    let fleet = cluster.fleet("fence_network");
    for enforce in [true, false] {
        let lock = format!("fence-network-{enforce}");
        let server = server(enforce);
        // What A sends the server is held from the start; its database, once it holds the lock.
        let http_hold = Arc::new(AtomicBool::new(true));
        let pg_hold = Arc::new(AtomicBool::new(false));
        let http = tcp_proxy(&server.url, &http_hold);
        let pg_dir = unix_proxy(cluster, &pg_hold);
        let (a, b) = hosts(&fleet, &http, &server.url, &lock);
        let text = std::fs::read_to_string(&a.config).unwrap().replace(
            &format!("host={} ", cluster.socket_dir()),
            &format!("host={} ", pg_dir.path().display()),
        );
        std::fs::write(&a.config, text).unwrap();

        let child = a.command(&["--trigger", "manual"]).spawn().unwrap();
        crate::postgres::wait_for_row(&fleet, &lock, "host-a", false);
        pg_hold.store(true, Ordering::SeqCst);
        // Its renewals stalled, A stops by its own clock; its requests are still on their way.
        let a_run = finish(child);
        assert_eq!(a_run.code, Some(79), "A lost its lease: {}", a_run.stderr);
        let b_run = b.run(&["--trigger", "manual"]);
        assert_code(&b_run, 0);
        http_hold.store(false, Ordering::SeqCst);
        pg_hold.store(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(500));
        let issued = metric(&server.url, "report_apis_tickets_issued_total");
        let refused = metric(
            &server.url,
            "report_apis_rejections_total{reason=\"fence-stale\"}",
        );
        if std::env::var_os("FENCE_DEBUG").is_some() {
            eprintln!(
                "A: {}\nB: {}\n{}",
                a_run.stderr,
                b_run.stderr,
                metrics_text(&server.url)
            );
        }
        if enforce {
            assert!(refused >= 1.0, "A's late requests are refused: {refused}");
            assert_eq!(issued, 1.0, "only B's ticket was issued");
            assert_eq!(metric(&server.url, "report_apis_tickets_pending_peak"), 1.0);
        } else {
            assert!(
                issued >= 2.0,
                "the control: A's late request got a ticket too: {issued}"
            );
        }
        assert!(reports(&a).is_empty(), "A saved nothing");
        assert_eq!(reports(&b).len(), 1);
    }
}

/// The last fence note in the state file of `setup`.
fn fence_note(setup: &Setup) -> serde_json::Value {
    let text = std::fs::read_to_string(&setup.state).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["fence"].clone()
}

#[test]
fn a_flock_run_sends_its_fence_and_the_server_enforces_it() {
    let server = ApiServer::fast();
    let setup = Setup::new(&server.url, &[]);
    for run in 1..=2 {
        assert_code(&setup.run(&[]), 0);
        assert_eq!(metric(&server.url, "report_apis_fence_locks"), 1.0);
        // The token file's count, as the server holds it: one more each run.
        let token: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(setup.lock.with_extension("lock.token"))
                .unwrap()
                .trim(),
        )
        .unwrap();
        assert_eq!(token["count"], run, "{token}");
        let text = metrics_text(&server.url);
        let count = text
            .lines()
            .find(|l| l.starts_with("report_apis_fence_mark_count{"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(count.ends_with(&format!(" {run}")), "{count}");
        assert_eq!(fence_note(&setup), "enforced");
    }
    let status = setup.command(&["status"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&status.stdout).contains("fence:"));
}

#[test]
fn a_server_that_does_not_acknowledge_the_fence_is_said_once_and_in_status() {
    let (server, _paths) = recording_server();
    let setup = Setup::new(&server.url, &[]);
    let first = setup.run(&[]);
    assert_code(&first, 0);
    assert_eq!(
        lines_with_id(&first.stderr, message_id::FENCE_NOT_ACKNOWLEDGED).len(),
        1,
        "{}",
        first.stderr
    );
    let second = setup.run(&[]);
    assert_code(&second, 0);
    assert!(
        lines_with_id(&second.stderr, message_id::FENCE_NOT_ACKNOWLEDGED).is_empty(),
        "said once: {}",
        second.stderr
    );
    assert_eq!(fence_note(&setup), "not-acknowledged");
    let status = setup.command(&["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("fence:    not acknowledged"), "{text}");
    // An acknowledging server ends it.
    let enforcing = ApiServer::fast();
    let setup_text = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace(&server.url, &enforcing.url);
    std::fs::write(&setup.config, setup_text).unwrap();
    assert_code(&setup.run(&[]), 0);
    assert_eq!(fence_note(&setup), "enforced");
}

#[test]
fn a_run_whose_token_the_server_refuses_saves_nothing_and_exits_79() {
    let server = FakeServer::start(|path| {
        if path.starts_with("/request_report") {
            (
                409,
                "this request's token 1.1 is below the lock's mark 1.2".to_owned(),
            )
        } else {
            (200, "timestamp,data\n2026-01-01T00:00:00Z,42\n".to_owned())
        }
    });
    let setup = Setup::new(&server.url, &[]);
    let run = setup.run(&[]);
    assert_code(&run, 79);
    let lines = lines_with_id(&run.stderr, message_id::FENCED);
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(lines[0].contains("below the lock's mark"), "{}", lines[0]);
    assert!(reports(&setup).is_empty());
    assert_eq!(setup.holder(), None, "the lock is free again");
}
