//! Test fixtures: the real report-apis on loopback, tiny scripted servers for faults, and the
//! real collector binary run as child processes with a config in a temp directory; systemd's
//! side of the bus ([`systemd_standin`]) and a PostgreSQL cluster ([`cluster`]) live in
//! modules of their own.

pub mod cluster;
pub mod systemd_standin;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use report_collector::lock::Holder;
use report_collector::lock::flock::holder_at;

/// Upper bound on any wait in these tests, so a broken build fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Taken for its whole length by each test that asserts an elapsed time or starts a crowd of
/// processes, so such tests run one at a time: two of them at once on a small machine make each
/// other late. A test that failed while holding it leaves it poisoned; the next one takes it
/// all the same.
pub fn timing_guard() -> MutexGuard<'static, ()> {
    static TIMING: Mutex<()> = Mutex::new(());
    TIMING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Something served from a thread of its own until dropped: dropping sends `stop` and waits
/// for the thread to end.
pub struct ServedOnThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServedOnThread {
    pub fn new(stop: tokio::sync::oneshot::Sender<()>, thread: JoinHandle<()>) -> ServedOnThread {
        ServedOnThread {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ServedOnThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The real report-apis, served on 127.0.0.1:0 from a thread of its own.
pub struct ApiServer {
    pub url: String,
    _served: ServedOnThread,
    /// Where its fence keeps the marks: never the host's /var/lib/report-apis.
    _state: tempfile::TempDir,
}

impl ApiServer {
    pub fn start(mut config: report_apis::Config) -> ApiServer {
        config.shutdown.drain_timeout = Duration::from_millis(200);
        let state = tempfile::tempdir().unwrap();
        config.fence.state_file = state.path().join("fence.json");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                report_apis::run(listener, config, async move {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr: SocketAddr = addr_rx.recv_timeout(PATIENCE).unwrap();
        ApiServer {
            url: format!("http://{addr}"),
            _served: ServedOnThread::new(stop_tx, thread),
            _state: state,
        }
    }

    /// Reports ready at once.
    pub fn fast() -> ApiServer {
        let mut config = report_apis::Config::default();
        config.heavy_load.period = Duration::ZERO;
        config.heavy_load.initially_on = false;
        config.report.generation_time = Duration::from_millis(1);
        ApiServer::start(config)
    }

    /// In heavy load for the whole test: every report stays "not ready".
    pub fn in_heavy_load() -> ApiServer {
        let mut config = report_apis::Config::default();
        config.heavy_load.period = Duration::from_secs(3600);
        config.heavy_load.initially_on = true;
        ApiServer::start(config)
    }

    /// Reports take `generation` to be ready.
    pub fn slow(generation: Duration) -> ApiServer {
        let mut config = report_apis::Config::default();
        config.heavy_load.period = Duration::ZERO;
        config.heavy_load.initially_on = false;
        config.report.generation_time = generation;
        config.report.slowdown = 0.0;
        ApiServer::start(config)
    }
}

/// A scripted HTTP/1.1 server for faults report-apis never shows (5xx, garbage, 404 tickets).
/// The handler maps a request path to (status, extra headers, body).
pub struct FakeServer {
    pub url: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    pub fn start(handler: impl Fn(&str) -> (u16, String) + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream
                            .set_read_timeout(Some(Duration::from_secs(2)))
                            .unwrap();
                        let mut request = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => request.extend_from_slice(&buf[..n]),
                            }
                        }
                        let text = String::from_utf8_lossy(&request);
                        let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                        let (status, body) = handler(&path);
                        let response = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeServer {
            url,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A report server that records every request's path, hands out `t<n>_0` tickets and answers
/// every fetch with a report at once.
pub fn recording_server() -> (FakeServer, Arc<Mutex<Vec<String>>>) {
    use std::sync::atomic::AtomicU32;
    let paths = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&paths);
    let tickets = AtomicU32::new(0);
    let server = FakeServer::start(move |path| {
        seen.lock().unwrap().push(path.to_owned());
        if path.starts_with("/request_report") {
            (
                200,
                format!("t{}_0", tickets.fetch_add(1, Ordering::SeqCst)),
            )
        } else {
            (200, "timestamp,data\n2026-01-01T00:00:00Z,42\n".to_owned())
        }
    });
    (server, paths)
}

/// A port on loopback with nothing listening.
pub fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A temp directory with a collector config in it.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub lock: PathBuf,
    pub reports: PathBuf,
    pub state: PathBuf,
    pub metrics: PathBuf,
}

impl Setup {
    /// A config pointing at `server_url` with short intervals; `extra` overrides keys
    /// (values written as TOML, e.g. `("deadline", "\"3s\"")`; `{dir}` is the temp dir).
    pub fn new(server_url: &str, extra: &[(&str, &str)]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("collector.lock");
        let reports = dir.path().join("reports");
        let state = dir.path().join("last-run.json");
        let metrics = dir.path().join("metrics/report-collector.prom");
        let mut keys: BTreeMap<&str, String> = BTreeMap::new();
        keys.insert("server-url", format!("{server_url:?}"));
        keys.insert("lock-file", format!("{:?}", lock.display().to_string()));
        keys.insert("report-dir", format!("{:?}", reports.display().to_string()));
        keys.insert("state-file", format!("{:?}", state.display().to_string()));
        keys.insert("poll-interval", "\"200ms\"".into());
        keys.insert("request-timeout", "\"2s\"".into());
        keys.insert("deadline", "\"60s\"".into());
        let dir_text = dir.path().display().to_string();
        for (k, v) in extra {
            keys.insert(k, v.replace("{dir}", &dir_text));
        }
        let text: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text).unwrap();
        Setup {
            dir,
            config,
            lock,
            reports,
            state,
            metrics,
        }
    }

    /// The collector binary with this config, a clean environment and piped output.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of(Path::new(env!("CARGO_BIN_EXE_report-collector")), args)
    }

    /// [`Setup::command`] with the collector binary at `binary` (another version's).
    pub fn command_of(&self, binary: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary);
        cmd.arg("--config").arg(&self.config).args(args);
        clean(&mut cmd);
        cmd
    }

    /// Like [`Setup::command`], with `journal` standing in for journald (see [`Journal`]).
    pub fn command_logging_to(&self, journal: &Journal, args: &[&str]) -> Command {
        let mut cmd = journal.wrapper();
        cmd.arg(env!("CARGO_BIN_EXE_report-collector"))
            .arg("--config")
            .arg(&self.config)
            .args(args);
        clean(&mut cmd);
        cmd
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).spawn().unwrap()
    }

    /// Runs to the end (bounded by [`PATIENCE`]).
    pub fn run(&self, args: &[&str]) -> Finished {
        finish(self.spawn(args))
    }

    /// Names of everything in the report directory, temp files included.
    pub fn report_files(&self) -> Vec<String> {
        files_in(&self.reports)
    }

    pub fn holder(&self) -> Option<Holder> {
        holder_at(&self.lock).unwrap()
    }

    /// Waits until `pid` holds the lock (and, with `with_ticket`, has a ticket).
    pub fn wait_for_holder(&self, pid: u32, with_ticket: bool) -> Holder {
        let start = Instant::now();
        loop {
            if let Some(h) = self.holder()
                && h.pid == Some(pid)
                && h.confirmed
                && (!with_ticket || h.ticket.is_some())
            {
                return h;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "pid {pid} never held the lock {}",
                self.lock.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// A child that has exited, with everything it printed.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Fails the test unless `run` exited with `code`, showing what it printed.
pub fn assert_code(run: &Finished, code: i32) {
    assert_eq!(
        run.code,
        Some(code),
        "expected exit {code}; stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
}

/// Waits for `child` (bounded by [`PATIENCE`], then killed and the test failed).
pub fn finish(child: Child) -> Finished {
    finish_within(child, PATIENCE)
}

pub fn finish_within(mut child: Child, limit: Duration) -> Finished {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the collector did not exit within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    finished(child.wait_with_output().unwrap())
}

fn finished(out: Output) -> Finished {
    use std::os::unix::process::ExitStatusExt;
    Finished {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// All of report-apis' `/metrics` at `url` (the answer's head too), over a plain HTTP/1.0
/// request.
pub fn metrics_text(url: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// Whether strace can trace here (the crash-point and fence tests inject with it).
pub fn strace_works() -> Result<(), String> {
    match Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "true"])
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        Err(e) => Err(format!("cannot run strace: {e}")),
    }
}

/// One series of report-apis' `/metrics` at `url`.
pub fn metric(url: &str, name: &str) -> f64 {
    let text = metrics_text(url);
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Whether `child` is still running.
pub fn running(child: &mut Child) -> bool {
    child.try_wait().unwrap().is_none()
}

pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        sig,
    )
    .unwrap();
}

/// A clean environment (nothing from systemd, no proxies, default log level) and piped output.
fn clean(cmd: &mut Command) {
    cmd.env_remove("JOURNAL_STREAM")
        .env_remove("TRIGGER_UNIT")
        .env_remove("TRIGGER_TIMER_REALTIME_USEC")
        .env_remove("RUST_LOG")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
}

/// The stderr lines (a manual run's readable lines, fields after the text) with `id`.
pub fn lines_with_id<'a>(stderr: &'a str, id: &str) -> Vec<&'a str> {
    let field = format!("MESSAGE_ID=\"{id}\"");
    stderr.lines().filter(|l| l.contains(&field)).collect()
}

/// A journald stand-in: a datagram socket that receives what the collector's journald layer
/// sends, in journald's native protocol. tracing-journald 0.3 always sends to
/// `/run/systemd/journal/socket` (it has no setting for the path), so the collector runs in a
/// mount namespace of its own (`unshare --mount`) whose `/run` is a fresh tmpfs with that
/// path linked to this socket. Nothing outside that namespace changes.
pub struct Journal {
    dir: tempfile::TempDir,
    socket: UnixDatagram,
}

/// One journal entry: field name -> value.
pub type Entry = BTreeMap<String, String>;

impl Journal {
    /// `Err` says why this machine cannot give a process a mount namespace of its own.
    pub fn start() -> Result<Journal, String> {
        let dir = tempfile::tempdir().unwrap();
        let socket = UnixDatagram::bind(dir.path().join("socket")).unwrap();
        socket.set_nonblocking(true).unwrap();
        let journal = Journal { dir, socket };
        let probe = journal.wrapper().arg("true").output();
        match probe {
            Ok(out) if out.status.success() => Ok(journal),
            Ok(out) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
            Err(e) => Err(format!("cannot run unshare: {e}")),
        }
    }

    /// `unshare` and a shell that puts the socket in place, then execs its arguments.
    fn wrapper(&self) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-ec"])
            .arg(
                "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal \
                 && ln -s \"$0\" /run/systemd/journal/socket && exec \"$@\"",
            )
            .arg(self.dir.path().join("socket"));
        cmd
    }

    /// Every entry received so far (the layer's empty probe datagram skipped).
    pub fn entries(&self) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(0) => continue,
                Ok(n) => entries.push(parse_native(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return entries,
                Err(e) => panic!("journal stand-in: {e}"),
            }
        }
    }
}

/// journald's native protocol: `NAME=value\n`, or `NAME\n` + little-endian u64 length +
/// value + `\n` for values that contain a newline.
fn parse_native(mut data: &[u8]) -> Entry {
    let mut entry = Entry::new();
    while !data.is_empty() {
        let end = data.iter().position(|&b| b == b'\n').expect("field ends");
        let line = &data[..end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            entry.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            data = &data[end + 1..];
        } else {
            let rest = &data[end + 1..];
            let len = usize::try_from(u64::from_le_bytes(rest[..8].try_into().unwrap())).unwrap();
            entry.insert(
                String::from_utf8_lossy(line).into_owned(),
                String::from_utf8_lossy(&rest[8..8 + len]).into_owned(),
            );
            data = &rest[8 + len + 1..];
        }
    }
    entry
}

/// A tmpfs mounted for one test (we run as root), unmounted when dropped.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// `Err` says why it could not be mounted.
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs {
            path: path.to_owned(),
        })
    }

    /// Writes a file until the file system is full.
    pub fn fill(&self) {
        let mut filler = std::fs::File::create(self.path.join("filler")).unwrap();
        let block = [0u8; 4096];
        loop {
            if let Err(e) = filler.write_all(&block) {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                return;
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Reads `child`'s stderr up to the end of the first line containing `needle` and returns what
/// it read; the rest stays in the pipe for [`finish`]. This is how a test knows the child got
/// somewhere, instead of sleeping "long enough" (a loaded machine makes any guess wrong).
pub fn stderr_until(child: &mut Child, needle: &str) -> String {
    let stderr = child.stderr.as_mut().expect("stderr is piped");
    let mut text = Vec::new();
    let mut line_start = 0;
    let mut byte = [0u8];
    loop {
        // One byte at a time, so nothing past the line is taken from the pipe.
        match stderr.read(&mut byte) {
            Ok(0) | Err(_) => panic!(
                "the collector ended its stderr before logging `{needle}`:\n{}",
                String::from_utf8_lossy(&text)
            ),
            Ok(_) => {
                text.push(byte[0]);
                if byte[0] == b'\n' {
                    if String::from_utf8_lossy(&text[line_start..]).contains(needle) {
                        return String::from_utf8_lossy(&text).into_owned();
                    }
                    line_start = text.len();
                }
            }
        }
    }
}

// Hostile file systems and crash points (tests/files.rs, tests/crash_points.rs).

impl Setup {
    /// The collector binary with this config, run by `wrapper` (its program and arguments
    /// before the binary: `strace ...`, `setpriv ...`), with the same clean environment.
    pub fn command_wrapped(&self, wrapper: &[&str], args: &[&str]) -> Command {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(env!("CARGO_BIN_EXE_report-collector"))
            .arg("--config")
            .arg(&self.config)
            .args(args);
        clean(&mut cmd);
        cmd
    }
}

/// A report server that hands out a new ticket per request and answers every report request
/// with `csv` at once.
pub fn fixed_report_server(csv: &'static str) -> FakeServer {
    let tickets = std::sync::atomic::AtomicU32::new(0);
    FakeServer::start(move |path| {
        if path.starts_with("/request_report") {
            (
                200,
                format!("t{}_0", tickets.fetch_add(1, Ordering::SeqCst)),
            )
        } else {
            (200, csv.to_owned())
        }
    })
}

/// Every file under `dir`, recursively, as paths relative to it.
pub fn all_files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().to_owned());
            }
        }
    }
    found.sort();
    found
}

/// What a test needs, or a failure saying what is missing. A test that needs what a
/// developer's machine may not have (root, PostgreSQL 15, a mount namespace) is `#[ignore =
/// "why"]`, so a plain `cargo test` lists it with its reason; `make test` runs every test as
/// root with `--include-ignored`, and there a missing prerequisite fails it instead of passing
/// silently.
pub fn prerequisite<T, E: std::fmt::Display>(what: &str, found: Result<T, E>) -> T {
    found.unwrap_or_else(|why| {
        panic!("this test needs {what}, and cannot have it here: {why}; a plain `cargo test` leaves it out, `make test` runs it as root")
    })
}

/// Root, as a test that needs it requires ([`prerequisite`]); `why` says what for.
pub fn require_root(why: &str) {
    prerequisite(
        &format!("root ({why})"),
        if nix::unistd::Uid::effective().is_root() {
            Ok(())
        } else {
            Err("not root")
        },
    );
}

/// The system user `name`, as a test that needs it requires ([`prerequisite`]).
pub fn require_user(name: &str) -> nix::unistd::User {
    prerequisite(
        &format!("the user {name}"),
        nix::unistd::User::from_name(name)
            .map_err(|e| e.to_string())
            .and_then(|user| user.ok_or_else(|| "no such user".to_owned())),
    )
}
