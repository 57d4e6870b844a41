//! Who holds the run lock: the record a holder writes about itself, and what a reader makes of
//! it once checked against what the lock itself says (the kernel, for the flock).
//!
//! The record belongs to the lock's interface, not to one backend: whichever lock a run holds,
//! a run that finds it busy can name the holder, the ticket it is collecting and since when.

use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::schedule::format_time;

/// What the holder writes about itself once it has the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    pub pid: u32,
    /// RFC 3339 UTC.
    pub since: String,
    /// The host the holder runs on.
    #[serde(default)]
    pub host: Option<String>,
    pub ticket: Option<String>,
    /// When the ticket was requested, RFC 3339 UTC with milliseconds (the next holder computes
    /// the ticket's age from it).
    #[serde(default)]
    pub ticket_requested: Option<String>,
}

impl HolderRecord {
    /// The record of this process, holding the lock from `since`, with no ticket yet.
    pub fn of_this_process(since: SystemTime) -> HolderRecord {
        HolderRecord {
            pid: std::process::id(),
            since: format_time(since),
            host: this_host(),
            ticket: None,
            ticket_requested: None,
        }
    }

    /// Notes the ticket this holder is collecting and when it asked for it.
    pub fn set_ticket(&mut self, ticket: &str, requested: SystemTime) {
        self.ticket = Some(ticket.to_owned());
        self.ticket_requested = Some(crate::schedule::format_time_ms(requested));
    }
}

/// This machine's host name, when it has a readable one.
pub fn this_host() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
}

/// Who holds the lock, as far as can be told without taking it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// What the lock itself says (the kernel, for the flock) when available, else the record.
    pub pid: Option<u32>,
    pub since: Option<String>,
    pub host: Option<String>,
    pub ticket: Option<String>,
    pub ticket_requested: Option<String>,
    /// True when the record's pid is the pid the lock itself shows holding it.
    pub confirmed: bool,
    /// Whether messages name the host: a lock shared by several hosts says which one.
    #[serde(skip)]
    pub show_host: bool,
}

impl Holder {
    /// A holder the lock names (`pid`), with what its record says if the record names it too.
    pub fn from_lock(pid: Option<u32>, record: Option<HolderRecord>) -> Holder {
        match (pid, record) {
            (Some(pid), Some(r)) if r.pid == pid => Holder {
                pid: Some(pid),
                since: Some(r.since),
                host: r.host,
                ticket: r.ticket,
                ticket_requested: r.ticket_requested,
                confirmed: true,
                show_host: false,
            },
            (pid, _) => Holder {
                pid,
                since: None,
                host: None,
                ticket: None,
                ticket_requested: None,
                confirmed: false,
                show_host: false,
            },
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}")?,
            None => write!(f, "an unknown process")?,
        }
        if self.show_host {
            write!(
                f,
                " on host {}",
                self.host.as_deref().unwrap_or("(unknown)")
            )?;
        }
        write!(
            f,
            " since {} with ticket {}",
            self.since.as_deref().unwrap_or("an unknown time"),
            self.ticket.as_deref().unwrap_or("(none yet)")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_believed_only_when_the_lock_names_the_same_pid() {
        let mut record = HolderRecord::of_this_process(SystemTime::UNIX_EPOCH);
        record.set_ticket("abc_0", SystemTime::UNIX_EPOCH);
        let me = std::process::id();

        let holder = Holder::from_lock(Some(me), Some(record.clone()));
        assert!(holder.confirmed);
        assert_eq!(holder.ticket.as_deref(), Some("abc_0"));
        assert_eq!(
            holder.ticket_requested.as_deref(),
            Some("1970-01-01T00:00:00.000Z")
        );
        assert_eq!(
            holder.to_string(),
            format!("pid {me} since 1970-01-01T00:00:00Z with ticket abc_0")
        );

        // A stale record (pids are reused) says nothing about the process holding the lock.
        let other = Holder::from_lock(Some(me + 1), Some(record));
        assert!(!other.confirmed);
        assert_eq!(other.ticket, None);
        assert_eq!(
            other.to_string(),
            format!(
                "pid {} since an unknown time with ticket (none yet)",
                me + 1
            )
        );
    }

    #[test]
    fn a_record_from_an_older_collector_still_reads() {
        let record: HolderRecord =
            serde_json::from_str(r#"{"pid":7,"since":"2026-01-01T00:00:00Z","ticket":null}"#)
                .unwrap();
        assert_eq!(record.host, None);
        assert_eq!(record.ticket_requested, None);
    }
}
