//! `report-collector status`: whether the lock is held (and by whom), the last run and the
//! reports kept. It learns about the lock from `/proc/locks` and the holder record without
//! ever taking the lock, so asking never makes a run skip.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use crate::config::Config;
use crate::lock::RunLock;
use crate::outcome::LastRun;
use crate::store;

#[derive(Debug, Serialize)]
pub struct Status {
    pub lock: LockStatus,
    pub last_run: Option<LastRun>,
    /// Set when the state file exists but cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run_error: Option<String>,
    pub reports: Reports,
}

#[derive(Debug, Serialize)]
pub struct LockStatus {
    pub path: PathBuf,
    pub policy: String,
    pub held: bool,
    pub pid: Option<u32>,
    pub since: Option<String>,
    pub ticket: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Reports {
    pub dir: PathBuf,
    pub kept: usize,
    pub keep: usize,
    pub newest: Option<String>,
}

/// `report-collector status [--json]`: prints what [`gather`] found.
pub fn print(config: &Config, lock: &impl RunLock, json: bool) -> ExitCode {
    let status = gather(config, lock);
    let text = if json {
        match serde_json::to_string_pretty(&status) {
            Ok(mut text) => {
                text.push('\n');
                text
            }
            Err(e) => {
                tracing::error!("cannot render the status as JSON: {e}");
                return ExitCode::from(report_common::exit::FAILURE);
            }
        }
    } else {
        status.render()
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

/// Looks at the lock, the state file and the report directory.
pub fn gather(config: &Config, lock: &impl RunLock) -> Status {
    let holder = lock.holder().ok().flatten();
    let (last_run, last_run_error) = match LastRun::load(&config.state_file) {
        Ok(last) => (last, None),
        Err(e) => (
            None,
            Some(format!("cannot read {}: {e}", config.state_file.display())),
        ),
    };
    let names = store::list(&config.report_dir).unwrap_or_default();
    Status {
        lock: LockStatus {
            path: config.lock_file.clone(),
            policy: config.policy.as_str().to_owned(),
            held: holder.is_some(),
            pid: holder.as_ref().and_then(|h| h.pid),
            since: holder.as_ref().and_then(|h| h.since.clone()),
            ticket: holder.as_ref().and_then(|h| h.ticket.clone()),
        },
        last_run,
        last_run_error,
        reports: Reports {
            dir: config.report_dir.clone(),
            kept: names.len(),
            keep: config.keep_reports,
            newest: names.last().cloned(),
        },
    }
}

impl Status {
    /// The text `status` prints without `--json`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let lock = &self.lock;
        if lock.held {
            let _ = writeln!(
                out,
                "lock:     held by pid {} since {}, ticket {} ({})",
                lock.pid
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "?".into()),
                lock.since.as_deref().unwrap_or("an unknown time"),
                lock.ticket.as_deref().unwrap_or("(none yet)"),
                lock.path.display()
            );
        } else {
            let _ = writeln!(out, "lock:     free ({})", lock.path.display());
        }
        let _ = writeln!(out, "policy:   {}", lock.policy);
        match (&self.last_run, &self.last_run_error) {
            (Some(run), _) => {
                let _ = writeln!(
                    out,
                    "last run: {} at {} (took {:.3}s, exit {}): {}",
                    run.outcome, run.started, run.duration_seconds, run.exit_code, run.message
                );
            }
            (None, Some(error)) => {
                let _ = writeln!(out, "last run: unknown ({error})");
            }
            (None, None) => {
                let _ = writeln!(out, "last run: none recorded yet");
            }
        }
        let r = &self.reports;
        let _ = writeln!(
            out,
            "reports:  {} kept of at most {} in {}{}",
            r.kept,
            r.keep,
            r.dir.display(),
            r.newest
                .as_deref()
                .map(|n| format!(", newest {n}"))
                .unwrap_or_default()
        );
        out
    }
}
