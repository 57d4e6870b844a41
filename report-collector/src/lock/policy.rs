//! The four policies for a lock a previous run still holds, by name: what the configuration,
//! the command line and the journal call them. A leaf: what each policy does is
//! [`super::by_policy`]'s, and PostgreSQL's own acquire loop's.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
