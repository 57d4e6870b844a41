//! Everything the harness starts or creates is registered here before it exists, and undone
//! by [`run`] however the harness ends: at the normal end, after a failure, on SIGINT or
//! SIGTERM (from `main`), and from the panic hook (the release profile aborts on panic, so no
//! destructor would run).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[derive(Debug, Default)]
struct Registry {
    pids: Vec<i32>,
    /// A cluster: pg_ctl's directory and the data directory.
    clusters: Vec<(PathBuf, PathBuf)>,
    namespaces: Vec<String>,
    dirs: Vec<PathBuf>,
    keep_dirs: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pids: Vec::new(),
    clusters: Vec::new(),
    namespaces: Vec::new(),
    dirs: Vec::new(),
    keep_dirs: false,
});

fn with<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    // A panic while the lock was held must not keep the clean-up from running.
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut registry)
}

pub fn pid(pid: i32) {
    with(|r| r.pids.push(pid));
}

pub fn forget_pid(pid: i32) {
    with(|r| r.pids.retain(|&p| p != pid));
}

pub fn cluster(bin: &Path, data: &Path) {
    with(|r| r.clusters.push((bin.to_owned(), data.to_owned())));
}

pub fn forget_cluster(data: &Path) {
    with(|r| r.clusters.retain(|(_, d)| d != data));
}

pub fn namespace(name: &str) {
    with(|r| r.namespaces.push(name.to_owned()));
}

pub fn dir(path: &Path, keep: bool) {
    with(|r| {
        r.dirs.push(path.to_owned());
        r.keep_dirs |= keep;
    });
}

/// SIGCONT then SIGKILL: a stopped process must be let go on to die at once.
fn kill_hard(pid: i32) {
    let pid = Pid::from_raw(pid);
    // Either may fail for a process already gone; nothing is left to do then.
    let _ = kill(pid, Signal::SIGCONT);
    let _ = kill(pid, Signal::SIGKILL);
}

fn quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The processes whose network namespace is `ns` (`ip netns pids`), strays included: a
/// collector whose `unshare` parent was killed first, a postmaster pg_ctl left.
fn pids_in(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Undoes everything registered, last first within each kind; idempotent.
pub fn run() {
    let registry = with(std::mem::take);
    for &pid in registry.pids.iter().rev() {
        kill_hard(pid);
    }
    for (bin, data) in registry.clusters.iter().rev() {
        let pg_ctl = bin.join("pg_ctl").display().to_string();
        let data = data.display().to_string();
        let stopped = quiet(
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                &pg_ctl,
                "-D",
                &data,
                "-m",
                "immediate",
                "-t",
                "10",
                "-w",
                "stop",
            ],
        );
        if !stopped {
            // The postmaster's pid is the first line of postmaster.pid.
            let pid = std::fs::read_to_string(Path::new(&data).join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()));
            if let Some(pid) = pid {
                kill_hard(pid);
            }
        }
    }
    for ns in registry.namespaces.iter().rev() {
        // Two passes: a process may fork between listing and killing.
        for _ in 0..2 {
            for pid in pids_in(ns) {
                kill_hard(pid);
            }
        }
        if Path::new("/run/netns").join(ns).exists() && !quiet("ip", &["netns", "del", ns]) {
            eprintln!("fleet-faults: cannot delete network namespace {ns}");
        }
    }
    for dir in registry.dirs.iter().rev() {
        if registry.keep_dirs {
            eprintln!("fleet-faults: evidence kept in {}", dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("fleet-faults: cannot remove {}: {e}", dir.display());
        }
    }
}
