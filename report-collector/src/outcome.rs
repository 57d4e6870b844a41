//! How a run ended (collected, skipped, failed, cancelled), and the one place that turns that
//! into a decision line in the journal and an exit code (the state file is `state.rs`).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use report_common::exit;

use crate::config::Policy;
use crate::schedule::format_time;

/// The signal that cancelled a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelSignal {
    Term,
    Int,
}

impl CancelSignal {
    pub fn name(self) -> &'static str {
        match self {
            CancelSignal::Term => "SIGTERM",
            CancelSignal::Int => "SIGINT",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Collected { report: PathBuf },
    Skipped { reason: String },
    Failed { error: String },
    Cancelled(CancelSignal),
}

impl Outcome {
    /// The value of the `OUTCOME` journal field and of the metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Collected { .. } => "collected",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Failed { .. } => "failed",
            Outcome::Cancelled(_) => "cancelled",
        }
    }

    /// The exit code (documented in `--help` and the README): 0 collected, 75 skipped, 1
    /// failed, 130/143 cancelled by SIGINT/SIGTERM.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Collected { .. } => exit::SUCCESS,
            Outcome::Skipped { .. } => exit::TEMPFAIL,
            Outcome::Failed { .. } => exit::FAILURE,
            Outcome::Cancelled(CancelSignal::Int) => exit::SIGINT,
            Outcome::Cancelled(CancelSignal::Term) => exit::SIGTERM,
        }
    }
}

/// Every outcome kind, in the order metrics list them.
pub const KINDS: [&str; 4] = ["collected", "skipped", "failed", "cancelled"];

/// A finished run with everything the journal, the state file and the metrics need.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: Outcome,
    pub policy: Policy,
    pub ticket: Option<String>,
    /// The other run that held the lock (skipped for it, waited for it, or replaced it).
    pub holder_pid: Option<u32>,
    pub slot: SystemTime,
    /// `manual` or the timer unit.
    pub trigger: String,
    pub started: SystemTime,
    pub duration: Duration,
}

impl RunReport {
    pub fn exit_code(&self) -> u8 {
        self.outcome.exit_code()
    }

    /// The human sentence of the decision line.
    pub fn message(&self) -> String {
        let took = format!("{:.3}s", self.duration.as_secs_f64());
        match &self.outcome {
            Outcome::Collected { report } => format!(
                "collected the report for ticket {} in {took}, saved as {}{}",
                self.ticket.as_deref().unwrap_or("?"),
                report.display(),
                match (self.policy, self.holder_pid) {
                    (Policy::Replace, Some(pid)) => format!(" (after ending pid {pid})"),
                    (Policy::Wait, Some(pid)) => format!(" (after waiting for pid {pid})"),
                    _ => String::new(),
                }
            ),
            Outcome::Skipped { reason } => format!("skipped this run: {reason}"),
            Outcome::Failed { error } => format!("run failed after {took}: {error}"),
            Outcome::Cancelled(signal) => format!(
                "run cancelled by {} after {took}{}; nothing partial was saved",
                signal.name(),
                self.ticket
                    .as_deref()
                    .map(|t| format!(" while collecting ticket {t}"))
                    .unwrap_or_default()
            ),
        }
    }

    /// Logs the decision line with the journal fields OUTCOME, TICKET, POLICY, HOLDER_PID,
    /// SLOT and DURATION (seconds, millisecond precision); fields that do not apply are empty.
    pub fn log(&self) {
        let outcome = self.outcome.kind();
        let ticket = self.ticket.as_deref().unwrap_or("");
        let policy = self.policy.as_str();
        let holder_pid = self.holder_pid.map(|p| p.to_string()).unwrap_or_default();
        let slot = format_time(self.slot);
        let duration = format!("{:.3}", self.duration.as_secs_f64());
        let trigger = self.trigger.as_str();
        let message = self.message();
        macro_rules! decision {
            ($level:ident) => {
                tracing::$level!(
                    OUTCOME = outcome,
                    TICKET = ticket,
                    POLICY = policy,
                    HOLDER_PID = %holder_pid,
                    SLOT = %slot,
                    DURATION = %duration,
                    TRIGGER = trigger,
                    "{message}"
                )
            };
        }
        match self.outcome {
            Outcome::Collected { .. } => decision!(info),
            Outcome::Skipped { .. } | Outcome::Cancelled(_) => decision!(warn),
            Outcome::Failed { .. } => decision!(error),
        }
    }
}

pub fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_its_exit_code() {
        let cases = [
            (Outcome::Collected { report: "r".into() }, 0, "collected"),
            (
                Outcome::Skipped {
                    reason: "busy".into(),
                },
                75,
                "skipped",
            ),
            (
                Outcome::Failed {
                    error: "down".into(),
                },
                1,
                "failed",
            ),
            (Outcome::Cancelled(CancelSignal::Int), 130, "cancelled"),
            (Outcome::Cancelled(CancelSignal::Term), 143, "cancelled"),
        ];
        for (outcome, code, kind) in cases {
            assert_eq!(outcome.exit_code(), code);
            assert_eq!(outcome.kind(), kind);
        }
    }
}
