//! The real `report-apis` binary: configuration errors, signals, logging of heavy-load toggles,
//! a configuration file that is a FIFO, a device or huge (at start and on reload), and FIFOs
//! where the reload's outcome is written.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use report_common::message_id;

use crate::util::client;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_report-apis");

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/report-apis.toml")
}

/// The binary as a manual run would start it (not under systemd), stderr captured.
pub(crate) struct Running {
    pub(crate) child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    pub(crate) fn start(args: &[&str]) -> Running {
        Self::start_with_env(args, &[])
    }

    pub(crate) fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Running {
        Self::start_command(Command::new(BIN).args(args), env)
    }

    /// `command` (the binary, or a shell that execs it) with the environment of a manual run.
    pub(crate) fn start_command(command: &mut Command, env: &[(&str, &str)]) -> Running {
        let mut child = command
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first stderr line containing `needle`, waiting at most 10 s.
    pub(crate) fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line containing {needle:?}; stderr so far:\n{}",
            self.seen.join("\n")
        );
    }

    pub(crate) fn address(&mut self) -> String {
        let line = self.wait_for("listening on http://");
        let rest = &line[line.find("http://").unwrap()..];
        rest.split_whitespace().next().unwrap().to_owned()
    }

    pub(crate) fn signal(&self, signal: Signal) {
        kill(
            Pid::from_raw(i32::try_from(self.child.id()).unwrap()),
            signal,
        )
        .unwrap();
    }

    /// Exit status, waiting at most 15 s; also drains the rest of stderr into `seen`.
    pub(crate) fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.seen.push(line);
                }
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "report-apis did not exit; stderr:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Moves the lines written so far into `seen`, without waiting.
    pub(crate) fn collect(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    pub(crate) fn stderr(&self) -> String {
        self.seen.join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stderr lines (a manual run's readable lines, fields after the text) with `id`.
pub(crate) fn lines_with_id<'a>(stderr: &'a str, id: &str) -> Vec<&'a str> {
    let field = format!("MESSAGE_ID=\"{id}\"");
    stderr.lines().filter(|l| l.contains(&field)).collect()
}

pub(crate) fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn bad_config_exits_78_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, line, key) in [
        (
            "listen = \"127.0.0.1:0\"\n[report]\nslowdwn = 2\n",
            3,
            "report.slowdwn",
        ),
        ("[heavy-load]\nperiod = \"soon\"\n", 2, "heavy-load.period"),
        ("[limits]\n\nmax-pending = -4\n", 3, "limits.max-pending"),
        (
            "[shutdown]\ndrain-timeout = 5\n",
            2,
            "shutdown.drain-timeout",
        ),
    ] {
        let path = write_config(&dir, text);
        let mut run = Running::start(&["--config", path.to_str().unwrap()]);
        let status = run.wait();
        let stderr = run.stderr();
        assert_eq!(status.code(), Some(78), "{text}\n{stderr}");
        let location = format!("{}:{line}:", path.display());
        assert!(stderr.contains(&location), "{location} not in {stderr}");
        assert!(
            stderr.contains(&format!("`{key}`")),
            "{key} not in {stderr}"
        );
        let rejected = lines_with_id(&stderr, message_id::APIS_CONFIG_REJECTED);
        assert!(
            rejected.len() == 1 && rejected[0].contains(&location),
            "one APIS_CONFIG_REJECTED line naming {location}: {stderr}"
        );
    }
}

#[test]
fn explicit_missing_config_exits_78() {
    let mut run = Running::start(&["--config", "/nonexistent/report-apis.toml"]);
    assert_eq!(run.wait().code(), Some(78));
    let stderr = run.stderr();
    assert!(stderr.contains("/nonexistent/report-apis.toml"), "{stderr}");
    assert!(stderr.contains("--config"), "says what to do: {stderr}");
}

#[test]
fn a_port_in_use_is_a_clear_failure() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let config = shipped_config();
    let mut run = Running::start(&["--config", config.to_str().unwrap(), "--listen", &address]);
    assert_eq!(run.wait().code(), Some(1));
    let stderr = run.stderr();
    let failed = lines_with_id(&stderr, message_id::BIND_FAILED);
    assert!(
        failed.len() == 1
            && failed[0].contains(&format!("cannot listen on {address}"))
            && failed[0].contains(&format!("LISTEN={address}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_connections_and_exits_0() {
    let config = shipped_config();
    let mut run = Running::start(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let base = run.address();
    run.wait_for(&format!("configuration read from {}", config.display()));
    let client = client();
    // A keep-alive connection stays open in the client's pool across the signal.
    let ticket = client
        .get(format!("{base}/request_report"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(ticket.ends_with("_0"));
    let healthz = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(healthz.text().await.unwrap(), "ok");

    run.signal(Signal::SIGTERM);
    let status = tokio::task::block_in_place(|| run.wait());
    let stderr = run.stderr();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert_eq!(
        lines_with_id(&stderr, message_id::STOPPED).len(),
        1,
        "{stderr}"
    );
    assert!(
        !stderr.contains("still open"),
        "idle connections are closed, not waited out: {stderr}"
    );
    assert!(client.get(format!("{base}/healthz")).send().await.is_err());
}

#[test]
fn sigint_also_exits_0() {
    let mut run = Running::start(&["--listen", "127.0.0.1:0"]);
    run.address();
    run.signal(Signal::SIGINT);
    assert_eq!(run.wait().code(), Some(0), "{}", run.stderr());
    assert!(run.stderr().contains("SIGINT received"));
}

#[test]
fn heavy_load_toggles_are_logged_with_structured_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "[heavy-load]\nperiod = \"200ms\"\n");
    let mut run = Running::start(&[
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    run.address();
    let on = run.wait_for("heavy load on");
    assert!(on.contains("PENDING"), "structured fields: {on}");
    run.wait_for("heavy load off");
    run.signal(Signal::SIGTERM);
    assert_eq!(run.wait().code(), Some(0));
}

/// Datagrams the server sends to `NOTIFY_SOCKET`, as systemd would receive them.
struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    received: Vec<String>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let socket = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        NotifySocket {
            socket,
            received: Vec::new(),
        }
    }

    /// The next datagram containing `needle`, waiting at most 10 s per datagram.
    fn wait_for(&mut self, needle: &str) -> String {
        let mut buffer = [0u8; 4096];
        loop {
            let n = self.socket.recv(&mut buffer).unwrap_or_else(|err| {
                panic!(
                    "no {needle:?} from the server ({err}); got {:?}",
                    self.received
                )
            });
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            self.received.push(message.clone());
            if message.contains(needle) {
                return message;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_systemd_ready_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let mut notify = NotifySocket::bind(&socket_path);
    let mut run = Running::start_with_env(
        &["--listen", "127.0.0.1:0"],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let ready = tokio::task::block_in_place(|| notify.wait_for("READY=1"));
    assert!(
        ready.contains("STATUS=heavy load off; 0 pending"),
        "{ready}"
    );
    // READY=1 comes only once the socket is bound: the server answers at once.
    let base = run.address();
    let client = client();
    let ticket = client
        .get(format!("{base}/request_report"))
        .send()
        .await
        .unwrap();
    assert_eq!(ticket.status(), 200);
    let status = tokio::task::block_in_place(|| notify.wait_for("1 pending"));
    assert!(status.starts_with("STATUS=heavy load off;"), "{status}");
    // Pings at half the 2 s timeout (about 1 s apart; a ping at the full timeout would be 2 s
    // apart). The first ping may have waited in the socket, so the gap is taken between the
    // second and the third, each read as it arrives.
    tokio::task::block_in_place(|| notify.wait_for("WATCHDOG=1"));
    tokio::task::block_in_place(|| notify.wait_for("WATCHDOG=1"));
    let second = Instant::now();
    tokio::task::block_in_place(|| notify.wait_for("WATCHDOG=1"));
    let gap = second.elapsed();
    assert!(
        gap > Duration::from_millis(400) && gap < Duration::from_millis(1600),
        "WATCHDOG=1 came {gap:?} after the previous one, for a 2 s timeout"
    );

    run.signal(Signal::SIGTERM);
    tokio::task::block_in_place(|| notify.wait_for("STOPPING=1"));
    assert_eq!(tokio::task::block_in_place(|| run.wait()).code(), Some(0));
}

/// `report-apis ARGS` run to its end: exit code, stdout, stderr.
fn output(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUNTIME_DIRECTORY")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn check_config_prints_the_effective_configuration_and_exits_0() {
    let config = shipped_config();
    let (code, stdout, stderr) = output(
        &[
            "check-config",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9999",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("# report-apis: the configuration is valid"));
    let effective: report_apis::Config = toml::from_str(&stdout).unwrap();
    let wanted = report_apis::Config {
        listen: "127.0.0.1:9999".parse().unwrap(),
        ..report_apis::Config::default()
    };
    assert_eq!(effective, wanted, "{stdout}");
}

#[test]
fn check_config_names_file_line_and_key_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "[report]\ngeneration-time = \"1s\"\nslowdwn = 2\n");
    let (code, stdout, stderr) = output(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let wanted = format!("{}:3:1: key `report.slowdwn`: unknown key", path.display());
    assert!(stderr.contains(&wanted), "{wanted} not in {stderr}");
}

#[test]
fn command_line_mistakes_exit_64_and_help_0() {
    for args in [&["--bogus"][..], &["--listen", "nowhere"], &["frobnicate"]] {
        let (code, _, stderr) = output(args, &[]);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
    }
    let (code, help, _) = output(&["--help"], &[]);
    assert_eq!(code, Some(0));
    for documented in ["check-config", "reload", "  64 ", "  78 "] {
        assert!(help.contains(documented), "{documented} not in {help}");
    }
    assert_eq!(output(&["--version"], &[]).0, Some(0));
}

/// A server started as systemd starts it (a `RUNTIME_DIRECTORY` of its own), listening, for
/// the reload tests; `reload()` is `report-apis reload` as `ExecReload=` runs it.
struct Reloadable {
    _dir: tempfile::TempDir,
    runtime: tempfile::TempDir,
    path: PathBuf,
    run: Running,
}

impl Reloadable {
    fn start() -> Reloadable {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tempfile::tempdir().unwrap();
        let path = write_config(&dir, "listen = \"127.0.0.1:0\"\n");
        let mut run = Running::start_with_env(
            &["--config", path.to_str().unwrap()],
            &[("RUNTIME_DIRECTORY", runtime.path().to_str().unwrap())],
        );
        run.address();
        Reloadable {
            _dir: dir,
            runtime,
            path,
            run,
        }
    }

    fn reload(&self) -> (Option<i32>, String, String) {
        let pid = self.run.child.id().to_string();
        output(
            &[
                "--config",
                self.path.to_str().unwrap(),
                "reload",
                "--pid",
                &pid,
            ],
            &[("RUNTIME_DIRECTORY", self.runtime.path().to_str().unwrap())],
        )
    }
}

#[test]
fn reload_re_reads_the_file_and_refuses_an_invalid_one() {
    let mut server = Reloadable::start();
    let path = server.path.clone();
    let config = path.to_str().unwrap();

    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\n[limits]\nmax-pending = 5\n",
    )
    .unwrap();
    let (code, stdout, stderr) = server.reload();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("limits.max-pending = 5"), "{stdout}");
    let line = server
        .run
        .wait_for("reloaded: the new configuration is in force");
    assert!(line.contains(report_common::message_id::RELOADED), "{line}");

    // Refused by the check, before the server is signalled.
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\n[limits]\nmax-pendin = 5\n",
    )
    .unwrap();
    let (code, _, stderr) = server.reload();
    assert_eq!(code, Some(78), "{stderr}");
    let refused = lines_with_id(&stderr, message_id::RELOAD_REJECTED);
    assert!(
        refused.len() == 1
            && refused[0].contains(&format!("{config}:3:1: key `limits.max-pendin`"))
            && refused[0].contains("the configuration in force stays")
            && refused[0].contains(&format!("CONFIG_FILE=\"{config}\"")),
        "one RELOAD_REJECTED line naming the file, line and key: {stderr}"
    );

    // Refused by the server itself: the reload fails all the same.
    std::fs::write(&path, "listen = \"127.0.0.1:1\"\n").unwrap();
    let (code, _, stderr) = server.reload();
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("needs a restart"), "{stderr}");
    let line = server.run.wait_for("reload refused");
    assert!(
        line.contains(report_common::message_id::RELOAD_REJECTED)
            && line.contains(&format!("CONFIG_FILE=\"{config}\"")),
        "{line}"
    );

    server.run.signal(Signal::SIGTERM);
    assert_eq!(server.run.wait().code(), Some(0), "{}", server.run.stderr());
}

#[test]
fn reload_reports_its_outcome_past_fifos_planted_in_the_runtime_directory() {
    let mut server = Reloadable::start();
    let runtime = server.runtime.path().to_owned();
    // At the outcome file's name and at the name it was once written under first: a write
    // that opened either by its name would wait for a reader, and the reload never end.
    for name in ["reload", "reload.new"] {
        let fifo = runtime.join(name);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    }

    std::fs::write(
        &server.path,
        "listen = \"127.0.0.1:0\"\n[limits]\nmax-pending = 5\n",
    )
    .unwrap();
    let started = Instant::now();
    let (code, stdout, stderr) = server.reload();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("limits.max-pending = 5"), "{stdout}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let outcome = runtime.join("reload");
    assert!(std::fs::symlink_metadata(&outcome).unwrap().is_file());

    server.run.signal(Signal::SIGTERM);
    assert_eq!(server.run.wait().code(), Some(0), "{}", server.run.stderr());
}

/// `report-apis ARGS` run to its end, which must come within 10 s: a hang fails the test.
fn output_within_10s(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUNTIME_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "report-apis {args:?} did not exit within 10 s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// What another party may put where the configuration file should be.
#[derive(Debug, Clone, Copy)]
enum Unreadable {
    /// Its plain open waits for a writer.
    Fifo,
    /// `/dev/zero`'s numbers: endless.
    Device,
    /// 2 MiB, over the 1 MiB limit.
    Huge,
}

impl Unreadable {
    const ALL: [Unreadable; 3] = [Unreadable::Fifo, Unreadable::Device, Unreadable::Huge];

    /// How the refusal words it, after the path.
    fn said(self) -> &'static str {
        match self {
            Unreadable::Fifo => "is a FIFO, not a regular file",
            Unreadable::Device => "is a device, not a regular file",
            Unreadable::Huge => "is larger than 1 MiB",
        }
    }

    /// Puts it at `path`, in place of whatever is there.
    fn plant(self, path: &Path) {
        use nix::sys::stat::{Mode, SFlag, makedev, mknod};
        let _ = std::fs::remove_file(path);
        match self {
            Unreadable::Fifo => nix::unistd::mkfifo(path, Mode::S_IRWXU).unwrap(),
            Unreadable::Device => {
                mknod(path, SFlag::S_IFCHR, Mode::S_IRUSR, makedev(1, 5)).unwrap();
            }
            Unreadable::Huge => std::fs::write(path, "#".repeat(2 << 20)).unwrap(),
        }
    }
}

#[test]
fn check_config_and_a_start_refuse_a_fifo_a_device_or_a_huge_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    for unreadable in Unreadable::ALL {
        unreadable.plant(&path);
        let said = unreadable.said();
        let (code, stdout, stderr) =
            output_within_10s(&["check-config", "--config", path.to_str().unwrap()]);
        assert_eq!(code, Some(78), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        let wanted = format!("the configuration file {} {said}", path.display());
        assert!(stderr.contains(&wanted), "{wanted:?} not in {stderr}");
        assert!(
            stderr.contains("pass another path with --config"),
            "{stderr}"
        );
        // A start reads it the same way: refused before listening.
        let (code, _, stderr) = output_within_10s(&["--config", path.to_str().unwrap()]);
        assert_eq!(code, Some(78), "{stderr}");
        let refused = lines_with_id(&stderr, message_id::APIS_CONFIG_REJECTED);
        assert!(
            refused.len() == 1 && refused[0].contains(&wanted),
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_from_a_fifo_a_device_or_a_huge_file_is_refused_and_the_server_answers_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "listen = \"127.0.0.1:0\"\n");
    let config = path.to_str().unwrap().to_owned();
    let mut run = Running::start(&["--config", &config]);
    let base = run.address();
    let healthz = || async {
        let answer = client().get(format!("{base}/healthz")).send().await;
        answer.unwrap().text().await.unwrap()
    };
    for unreadable in Unreadable::ALL {
        unreadable.plant(&path);
        let said = unreadable.said();
        run.signal(Signal::SIGHUP);
        let line = tokio::task::block_in_place(|| run.wait_for(said));
        assert!(
            line.contains("reload refused, the configuration in force stays")
                && line.contains(&format!("the configuration file {config} {said}"))
                && line.contains(message_id::RELOAD_REJECTED)
                && line.contains(&format!("CONFIG_FILE=\"{config}\"")),
            "{line}"
        );
        assert_eq!(healthz().await, "ok", "{said}: the server answers on");
    }
    // Nothing is left stuck: a good file is read again.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\n[limits]\nmax-pending = 5\n",
    )
    .unwrap();
    run.signal(Signal::SIGHUP);
    tokio::task::block_in_place(|| run.wait_for("limits.max-pending = 5"));
    assert_eq!(healthz().await, "ok");

    let asked = Instant::now();
    run.signal(Signal::SIGTERM);
    let status = tokio::task::block_in_place(|| run.wait());
    assert_eq!(status.code(), Some(0), "{}", run.stderr());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?}",
        asked.elapsed()
    );
}
