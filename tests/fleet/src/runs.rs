//! One collector run on one host: `ip netns exec H unshare --pid --fork --mount-proc
//! report-collector --trigger timer run`, its stderr read line by line as it comes (the round
//! needs to know the holder while it collects), its exit status, and its real pid, the one
//! the faults signal from outside.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use crate::cleanup;
use crate::logline::{self, Line};
use crate::netns::Host;

/// Which lock the collectors share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The PostgreSQL backend: one lock for every host.
    Postgres,
    /// Each host's own flock: no lock is shared, so the checks must find overlaps (a test of
    /// the harness itself).
    Flock,
}

/// What the per-host configuration is made of.
#[derive(Debug, Clone)]
pub struct Settings {
    pub backend: Backend,
    pub period: Duration,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub deadline: Duration,
}

/// A host's files: its configuration, lock file, state and reports, as a real host keeps
/// them from run to run.
#[derive(Debug, Clone)]
pub struct HostFiles {
    pub config: PathBuf,
    pub report_dir: PathBuf,
}

fn d(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// The configuration of `host`'s collector.
pub fn config_text(host: &Host, dir: &Path, s: &Settings) -> String {
    let mut text = format!(
        "# Written by fleet-faults for host {name}.\n\
         server-url = \"http://{db}:{port}\"\n\
         policy = \"wait\"\n\
         lock-file = \"{dir}/collector.lock\"\n\
         report-dir = \"{dir}/reports\"\n\
         state-file = \"{dir}/last-run.json\"\n\
         keep-reports = 1000000\n\
         poll-interval = \"{poll}\"\n\
         request-timeout = \"3s\"\n\
         deadline = \"{deadline}\"\n\
         lock-wait = \"{deadline}\"\n\
         schedule-period = \"{period}\"\n",
        name = host.name,
        db = host.db_addr,
        port = crate::apis::PORT,
        dir = dir.display(),
        poll = d(s.poll_interval),
        deadline = d(s.deadline),
        period = d(s.period),
    );
    if s.backend == Backend::Postgres {
        text.push_str(&format!(
            "lock-backend = \"postgres\"\n\n\
             [postgres]\n\
             connect = \"host={db} port=5432 user=report_collector dbname=reports\"\n\
             tls = \"disable\"\n\
             lock-name = \"fleet\"\n\
             host-name = \"{name}\"\n\
             lease = \"{lease}\"\n\
             connect-timeout = \"2s\"\n",
            db = host.db_addr,
            name = host.name,
            lease = d(s.lease),
        ));
    }
    text
}

pub fn prepare(host: &Host, work: &Path, s: &Settings) -> anyhow::Result<HostFiles> {
    let dir = work.join(&host.name);
    let report_dir = dir.join("reports");
    std::fs::create_dir_all(&report_dir)
        .with_context(|| format!("cannot create {}", report_dir.display()))?;
    let config = dir.join("report-collector.toml");
    std::fs::write(&config, config_text(host, &dir, s))
        .with_context(|| format!("cannot write {}", config.display()))?;
    Ok(HostFiles { config, report_dir })
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// Still running at the round's bound: killed by the harness.
    TimedOut,
    NotStarted(String),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit {c}"),
            Exit::Signal(s) => write!(f, "signal {s}"),
            Exit::TimedOut => write!(f, "timed out"),
            Exit::NotStarted(why) => write!(f, "not started: {why}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunResult {
    pub host: usize,
    pub lines: Vec<Line>,
    pub exit: Exit,
    pub pid: Option<i32>,
}

/// The real pids of the runs going on, by host, for the faults.
pub type Pids = Arc<Mutex<Vec<Option<i32>>>>;

/// What one run needs.
#[derive(Debug, Clone)]
pub struct Spec {
    pub host: usize,
    pub ns: String,
    pub collector: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub start: Instant,
    pub bound: Duration,
}

/// Starts the run at `spec.start`, hands every parsed stderr line to `events` as it comes,
/// and returns once the run has exited (killed at `spec.bound` after its start).
pub async fn run(spec: Spec, events: UnboundedSender<(usize, Line)>, pids: Pids) -> RunResult {
    tokio::time::sleep_until(spec.start).await;
    let mut result = RunResult {
        host: spec.host,
        lines: Vec::new(),
        exit: Exit::NotStarted(String::new()),
        pid: None,
    };
    let mut log = match File::create(&spec.log) {
        Ok(f) => f,
        Err(e) => {
            result.exit = Exit::NotStarted(format!("cannot create {}: {e}", spec.log.display()));
            return result;
        }
    };
    let stdout = spec.log.with_extension("stdout");
    let stdout = match File::create(&stdout) {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::null(),
    };
    let spawned = Command::new("ip")
        .args(["netns", "exec", &spec.ns, "unshare", "--pid", "--fork"])
        .args(["--mount-proc", "--kill-child"])
        .arg(&spec.collector)
        .args(["--trigger", "timer", "run", "--config"])
        .arg(&spec.config)
        // Polls are logged at debug level; the libraries stay at info.
        .env("RUST_LOG", "info,report_collector=debug")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("TRIGGER_UNIT")
        .env_remove("TRIGGER_TIMER_REALTIME_USEC")
        .env_remove("INVOCATION_ID")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            result.exit = Exit::NotStarted(e.to_string());
            return result;
        }
    };
    let unshare = child.id().and_then(|p| i32::try_from(p).ok());
    if let Some(p) = unshare {
        cleanup::pid(p);
        result.pid = find_child(p, Duration::from_secs(3)).await;
    }
    if let Some(p) = result.pid {
        cleanup::pid(p);
        if let Ok(mut pids) = pids.lock() {
            pids[spec.host] = Some(p);
        }
    }
    let stderr = child.stderr.take();
    let until = spec.start + spec.bound;
    let mut unshare_complained = false;
    let read_all = async {
        if let Some(stderr) = stderr {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(raw)) = lines.next_line().await {
                let _ = writeln!(log, "{raw}");
                unshare_complained |= raw.starts_with("unshare: ");
                if let Some(line) = logline::parse(&raw) {
                    let _ = events.send((spec.host, line.clone()));
                    result.lines.push(line);
                }
            }
        }
        child.wait().await
    };
    let status = tokio::time::timeout_at(until, read_all).await;
    result.exit = match status {
        Ok(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt as _;
            match (status.code(), status.signal()) {
                // unshare passes a child's signal on by raising it again, which it cannot do
                // with SIGKILL: it says so and exits 1.
                (Some(1), _) if unshare_complained => Exit::Signal(9),
                (Some(c), _) => Exit::Code(c),
                (None, Some(s)) => Exit::Signal(s),
                _ => Exit::Code(-1),
            }
        }
        Ok(Err(e)) => Exit::NotStarted(format!("cannot wait: {e}")),
        Err(_) => {
            if let Some(p) = result.pid {
                kill_hard(p);
            }
            let _ = child.kill().await;
            Exit::TimedOut
        }
    };
    if let Ok(mut pids) = pids.lock() {
        pids[spec.host] = None;
    }
    for p in [unshare, result.pid].into_iter().flatten() {
        cleanup::forget_pid(p);
    }
    result
}

pub fn kill_hard(pid: i32) {
    use nix::sys::signal::{Signal, kill};
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGCONT);
    let _ = kill(pid, Signal::SIGKILL);
}

/// The child `unshare` forked: the collector, pid 1 of its namespace and this pid outside.
async fn find_child(parent: i32, within: Duration) -> Option<i32> {
    let until = Instant::now() + within;
    loop {
        if let Some(pid) = child_of(parent) {
            return Some(pid);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn child_of(parent: i32) -> Option<i32> {
    // /proc/PID/task/PID/children lists the children of unshare's only thread.
    let text = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}
