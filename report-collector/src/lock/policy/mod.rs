//! The four policies for a lock a previous run still holds: their names (what the
//! configuration, the command line and the journal call them) and what each does, written once
//! over [`Contest`](crate::lock::contest::Contest) for every backend ([`acquire`]). The only place `Policy`'s variants are matched, apart
//! from the parser that reads them.
//!
//! The one rule of `replace` that matters most: a holder is ended only right after the backend
//! judged it endable ([`Judgement::Endable`](crate::lock::contest::Judgement::Endable)): for the flock, the lock itself confirmed that
//! the pid in the record is the pid holding it and the process was seen holding it; across
//! hosts, its slot is earlier than this run's. Pids are reused, and a stale record must never
//! get an unrelated process killed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod acquire;

/// What to do when the previous run still holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Skip this run at once, naming the holder.
    #[default]
    Forbid,
    /// Wait for the lock up to `lock-wait`, then run; skip on timeout.
    Wait,
    /// End the holder (SIGTERM, then SIGKILL after `replace-grace`), then run.
    Replace,
    /// Take no lock at all: runs may overlap.
    Allow,
}

impl Policy {
    pub const ALL: [Policy; 4] = [Policy::Forbid, Policy::Wait, Policy::Replace, Policy::Allow];

    /// The name used in the config file, on the command line and in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Forbid => "forbid",
            Policy::Wait => "wait",
            Policy::Replace => "replace",
            Policy::Allow => "allow",
        }
    }

    /// Whether a timer start later than `starting-deadline` after its slot skips itself: only
    /// under `forbid` (a run that waits or replaces was started to run).
    pub fn skips_late_starts(self) -> bool {
        self == Policy::Forbid
    }

    /// Whether a run under this policy takes a lock at all.
    pub fn locks(self) -> bool {
        self != Policy::Allow
    }

    /// What the decision line adds about the holder `pid` a collecting run got past.
    pub fn after_holder(self, pid: u32) -> Option<String> {
        match self {
            Policy::Replace => Some(format!(" (after ending pid {pid})")),
            Policy::Wait => Some(format!(" (after waiting for pid {pid})")),
            Policy::Forbid | Policy::Allow => None,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown policy `{s}`: use one of forbid, wait, replace, allow"))
    }
}
