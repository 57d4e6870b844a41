//! One round: one slot, a run fired on every host within a second of it, one fault into the
//! holder while it collects, and the evidence once every run has exited.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::evidence::Span;
use crate::faults::{Fault, RoundPlan};
use crate::logline::{Kind, Line};
use crate::netns::{self, Net};
use crate::runs::{self, HostFiles, Pids, RunResult};
use crate::server_view::{Sampler, ServerRound};

/// What every round shares.
#[derive(Debug)]
pub struct Fleet {
    pub net: Net,
    pub cluster: Cluster,
    pub hosts: Vec<HostFiles>,
    pub collector: PathBuf,
    pub period: Duration,
    /// Any run still going this long after its start is killed.
    pub bound: Duration,
    pub work: PathBuf,
    /// Report files already seen, by host.
    pub seen: Mutex<Vec<BTreeSet<String>>>,
    /// report-apis' /metrics, sampled through the run.
    pub server: Sampler,
}

/// The fault as injected.
#[derive(Debug, Clone)]
pub struct Injected {
    pub fault: Fault,
    pub host: usize,
    pub at: SystemTime,
    /// SIGSTOP to SIGCONT.
    pub stopped: Option<Span>,
    /// What happened that the verdict should mention (sessions terminated, an error of the
    /// tool).
    pub note: String,
    /// Why the fault did not hit a holder still collecting (it had exited, or had no database
    /// session left to end): such a round shows nothing about take-overs.
    pub missed: Option<String>,
}

#[derive(Debug)]
pub struct RoundResult {
    pub index: usize,
    pub plan: RoundPlan,
    pub slot: SystemTime,
    pub runs: Vec<RunResult>,
    /// `None` when no run ever started collecting, so there was no holder to hit.
    pub injected: Option<Injected>,
    /// (host name, report file name) of the files this round added.
    pub new_files: Vec<(String, String)>,
    /// When each of those was written (its mtime), by host index: a save is an action of the
    /// run even when no line of the run says so.
    pub saved_at: Vec<(usize, SystemTime)>,
    pub db: serde_json::Value,
    /// What the server's /metrics showed through the round, and its counters at its end.
    pub server: ServerRound,
}

/// The start of the first slot that begins at least `margin` from now.
fn next_slot(now: SystemTime, period: Duration, margin: Duration) -> SystemTime {
    let period_ns = period.as_nanos().max(1);
    let at = (now + margin)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let slot = at.div_ceil(period_ns) * period_ns;
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(slot).unwrap_or(u64::MAX))
}

/// The monotonic instant of wall-clock time `at`.
fn instant_of(at: SystemTime) -> Instant {
    let now = SystemTime::now();
    match at.duration_since(now) {
        Ok(ahead) => Instant::now() + ahead,
        Err(_) => Instant::now(),
    }
}

pub async fn play(fleet: &Fleet, index: usize, plan: &RoundPlan) -> anyhow::Result<RoundResult> {
    let slot = next_slot(SystemTime::now(), fleet.period, Duration::from_millis(300));
    let dir = fleet.work.join(format!("round-{index:03}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Line)>();
    let pids: Pids = Arc::new(Mutex::new(vec![None; fleet.hosts.len()]));
    let mut tasks = Vec::new();
    for (i, files) in fleet.hosts.iter().enumerate() {
        // A timer fires a little after its slot, never before: the run must fall in it.
        let start = slot + Duration::from_millis(50) + plan.jitter[i];
        let spec = runs::Spec {
            host: i,
            ns: fleet.net.hosts[i].ns.clone(),
            collector: fleet.collector.clone(),
            config: files.config.clone(),
            log: dir.join(format!("{}.log", fleet.net.hosts[i].name)),
            start: instant_of(start),
            bound: fleet.bound,
        };
        tasks.push(tokio::spawn(runs::run(spec, tx.clone(), pids.clone())));
    }
    drop(tx);

    // The holder: the first run to say it has a ticket to collect.
    let holder = tokio::time::timeout(fleet.bound + Duration::from_secs(2), async {
        while let Some((host, line)) = rx.recv().await {
            if line.kind == Kind::Start {
                return Some(host);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    let injected = match holder {
        Some(host) => Some(inject(fleet, plan, host, &pids).await),
        None => None,
    };
    // Lines the fault did not need are in each run's result already.
    drop(rx);

    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.context("a run's task failed")?);
    }
    // Whatever the fault left must not reach the next round.
    for host in &fleet.net.hosts {
        let _ = netns::partition(host, false).await;
        let _ = netns::slow(&fleet.net, host, false).await;
    }
    let db = match fleet.cluster.snapshot().await {
        Ok(v) => v,
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    let _ = std::fs::write(
        dir.join("db.json"),
        serde_json::to_string_pretty(&db).unwrap_or_default(),
    );
    let (new_files, saved_at) = new_reports(fleet);
    let server = fleet.server.round_end().await;
    Ok(RoundResult {
        index,
        plan: plan.clone(),
        slot,
        runs: results,
        injected,
        new_files,
        saved_at,
        db,
        server,
    })
}

type NewReports = (Vec<(String, String)>, Vec<(usize, SystemTime)>);

fn new_reports(fleet: &Fleet) -> NewReports {
    let mut out = Vec::new();
    let mut saved_at = Vec::new();
    let mut seen = fleet.seen.lock().unwrap_or_else(|e| e.into_inner());
    for (i, files) in fleet.hosts.iter().enumerate() {
        let Ok(entries) = std::fs::read_dir(&files.report_dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if crate::evidence::ticket_of_report(&name).is_some() && seen[i].insert(name.clone()) {
                if let Ok(mtime) = entry.metadata().and_then(|m| m.modified()) {
                    saved_at.push((i, mtime));
                }
                out.push((fleet.net.hosts[i].name.clone(), name));
            }
        }
    }
    (out, saved_at)
}

fn signal(pid: i32, sig: Signal) -> String {
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) => String::new(),
        Err(e) => format!("{sig} to pid {pid} failed: {e}; "),
    }
}

/// Injects the round's fault into `host`, the holder, `plan.after` from now; returns once the
/// fault is over (a stop continued, a partition healed) or, for a slow link, in force.
async fn inject(fleet: &Fleet, plan: &RoundPlan, host: usize, pids: &Pids) -> Injected {
    tokio::time::sleep(plan.after).await;
    let pid = pids.lock().ok().and_then(|p| p[host]);
    let mut note = String::new();
    let mut missed = (plan.fault.targets_holder() && pid.is_none())
        .then(|| "the holder had already exited".to_owned());
    let h = &fleet.net.hosts[host];
    let mut at = SystemTime::now();
    let mut stopped = None;
    match plan.fault {
        Fault::None => {}
        Fault::Kill => {
            if let Some(pid) = pid {
                note.push_str(&signal(pid, Signal::SIGKILL));
            }
        }
        Fault::Stop => {
            if let Some(pid) = pid {
                note.push_str(&signal(pid, Signal::SIGSTOP));
                tokio::time::sleep(plan.hold).await;
                let cont = SystemTime::now();
                note.push_str(&signal(pid, Signal::SIGCONT));
                stopped = Some(Span { from: at, to: cont });
            }
        }
        Fault::Partition => {
            if let Err(e) = netns::partition(h, true).await {
                note.push_str(&format!("{e}; "));
            }
            // The fault begins once both rules are in force: each iptables call takes tens
            // to hundreds of milliseconds, during which the host still talks.
            at = SystemTime::now();
            tokio::time::sleep(plan.hold).await;
            if let Err(e) = netns::partition(h, false).await {
                note.push_str(&format!("{e}; "));
            }
        }
        Fault::DbRestart => {
            if let Err(e) = fleet.cluster.restart().await {
                note.push_str(&format!("{e}; "));
            }
        }
        Fault::Terminate => match fleet
            .cluster
            .terminate_from(&h.addr.to_string(), &h.name)
            .await
        {
            Ok(0) => {
                missed.get_or_insert_with(|| "the holder had no database session".to_owned());
            }
            Ok(n) => note.push_str(&format!("{n} session(s) terminated; ")),
            Err(e) => note.push_str(&format!("{e}; ")),
        },
        Fault::Slow => {
            if let Err(e) = netns::slow(&fleet.net, h, true).await {
                note.push_str(&format!("{e}; "));
            }
            at = SystemTime::now();
        }
    }
    Injected {
        fault: plan.fault,
        host,
        at,
        stopped,
        note: note.trim_end_matches("; ").to_owned(),
        missed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_start_on_the_next_slot_boundary_with_room_to_spare() {
        let t = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let ten = Duration::from_secs(10);
        let margin = Duration::from_millis(300);
        assert_eq!(next_slot(t(1_000), ten, margin), t(10_000));
        assert_eq!(next_slot(t(9_800), ten, margin), t(20_000));
        assert_eq!(next_slot(t(9_700), ten, margin), t(10_000));
    }
}
