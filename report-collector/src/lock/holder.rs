//! Who holds the run lock: the record a holder writes about itself, and what a reader makes of
//! it once checked against what the lock itself says (the kernel, for the flock).
//!
//! The record belongs to the lock's interface, not to one backend: whichever lock a run holds,
//! a run that finds it busy can name the holder, the ticket it is collecting and since when.
//!
//! The record is written by another process (any that can write the lock file), so it is read
//! as input: bounded in size by the reader, its ticket checked into a [`Ticket`] before it is
//! used (an unsafe one is declined: [`LeftTicket::from_record`] says so in
//! the journal once), its times parsed (one that does not read is not on record) and its host
//! shown escaped.

use std::fmt;

use report_common::shown::plain_or_quoted;
use report_common::ticket::Ticket;
use serde::{Deserialize, Serialize};

use crate::declined;
use crate::time::Timestamp;

/// What the holder writes about itself once it has the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    pub pid: u32,
    /// RFC 3339 UTC, whole seconds; `None` when the record's does not read (it is written
    /// back as `null`, which no collector writes).
    #[serde(with = "crate::time::serde::seconds_or_none")]
    pub since: Option<Timestamp>,
    /// The host the holder runs on.
    #[serde(default)]
    pub host: Option<String>,
    pub ticket: Option<String>,
    /// When the ticket was requested, RFC 3339 UTC with milliseconds (the next holder computes
    /// the ticket's age from it).
    #[serde(default, with = "crate::time::serde::millis_or_none")]
    pub ticket_requested: Option<Timestamp>,
}

impl HolderRecord {
    /// The record of this process, holding the lock from `since`, with no ticket yet.
    pub fn of_this_process(since: Timestamp) -> HolderRecord {
        HolderRecord {
            pid: std::process::id(),
            since: Some(since),
            host: this_host(),
            ticket: None,
            ticket_requested: None,
        }
    }

    /// Notes the ticket this holder is collecting and when it asked for it.
    pub fn set_ticket(&mut self, ticket: &Ticket, requested: Timestamp) {
        self.ticket = Some(ticket.as_str().to_owned());
        self.ticket_requested = Some(requested);
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
    #[serde(with = "crate::time::serde::seconds_or_none")]
    pub since: Option<Timestamp>,
    pub host: Option<String>,
    /// The record's ticket when it passed the check; an unsafe one reads as none.
    pub ticket: Option<Ticket>,
    #[serde(with = "crate::time::serde::millis_or_none")]
    pub ticket_requested: Option<Timestamp>,
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
                since: r.since,
                host: r.host,
                ticket: r.ticket.as_deref().and_then(|t| Ticket::new(t).ok()),
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

impl Holder {
    /// The journal's `HOLDER_HOST`: the host of a lock shared by several hosts, else empty.
    pub fn shown_host(&self) -> &str {
        match &self.host {
            Some(host) if self.show_host => host,
            _ => "",
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
                plain_or_quoted(
                    self.host.as_deref().unwrap_or("(unknown)"),
                    crate::declined::NAME_MAX
                )
            )?;
        }
        match self.since {
            Some(since) => write!(f, " since {since}")?,
            None => write!(f, " since an unknown time")?,
        }
        write!(
            f,
            " with ticket {}",
            self.ticket.as_ref().map_or("(none yet)", Ticket::as_str)
        )
    }
}

/// A ticket a run requested and did not see through (it was killed, cancelled, replaced, ran
/// out of its deadline, or the host went down), found in the lock's record by the next run
/// that takes the lock, so that run can resume it instead of requesting another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftTicket {
    pub ticket: Ticket,
    /// When it was requested; `None` if the record does not say (or says something unreadable).
    pub requested: Option<Timestamp>,
    /// The run that left it.
    pub by_pid: u32,
    pub host: Option<String>,
    /// The generation and host that marked it as being saved (the shared lock only): that
    /// holder was about to write its report, so the ticket counts as collected by it and is
    /// not fetched again.
    pub saving: Option<(i64, String)>,
}

impl LeftTicket {
    /// What the record of a holder that is gone says about its unfinished ticket. A ticket that
    /// fails the check is declined: said once in the journal, and counted as none, so the next
    /// record written does not carry it on.
    pub fn from_record(record: HolderRecord) -> Option<LeftTicket> {
        let ticket = declined::ticket(record.ticket.as_deref()?, RECORD)
            .inspect_err(declined::Declined::say)
            .ok()?;
        Some(LeftTicket {
            ticket,
            requested: record.ticket_requested,
            by_pid: record.pid,
            host: record.host.filter(|host| {
                declined::name(host, "host", RECORD, "it is not used")
                    .inspect_err(declined::Declined::say)
                    .is_ok()
            }),
            saving: None,
        })
    }
}

/// What `VALUE_DECLINED`'s `SOURCE` says of a value read from the lock file.
pub const RECORD: &str = "the lock file's holder record";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_believed_only_when_the_lock_names_the_same_pid() {
        let mut record = HolderRecord::of_this_process(Timestamp::UNIX_EPOCH);
        record.set_ticket(&Ticket::new("abc_0").unwrap(), Timestamp::UNIX_EPOCH);
        let me = std::process::id();

        let holder = Holder::from_lock(Some(me), Some(record.clone()));
        assert!(holder.confirmed);
        assert_eq!(holder.ticket.as_ref().map(Ticket::as_str), Some("abc_0"));
        assert_eq!(holder.ticket_requested, Some(Timestamp::UNIX_EPOCH));
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            format!(
                r#"{{"pid":{me},"since":"1970-01-01T00:00:00Z","host":{},"ticket":"abc_0","ticket_requested":"1970-01-01T00:00:00.000Z"}}"#,
                serde_json::to_string(&record.host).unwrap()
            )
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
    fn a_hostile_record_is_never_shown_as_it_is() {
        let record: HolderRecord = serde_json::from_str(
            r#"{"pid":7,"since":"x\nhealth: healthy (exit 0)","host":"h\nINFO collected the report FAKE","ticket":"q/../../get_report/abc_0","ticket_requested":"y\nz"}"#,
        )
        .unwrap();
        assert_eq!((record.since, record.ticket_requested), (None, None));
        let mut holder = Holder::from_lock(Some(7), Some(record));
        holder.show_host = true;
        assert_eq!(holder.ticket, None, "an unsafe ticket reads as none");
        let shown = holder.to_string();
        assert!(!shown.contains('\n'), "{shown}");
        assert!(!shown.contains("../"), "{shown}");
    }

    #[test]
    fn a_record_from_an_older_collector_still_reads() {
        let record: HolderRecord =
            serde_json::from_str(r#"{"pid":7,"since":"2026-01-01T00:00:00Z","ticket":null}"#)
                .unwrap();
        assert_eq!(record.host, None);
        assert_eq!(record.since, Timestamp::parse("2026-01-01T00:00:00Z"));
        assert!(record.since.is_some());
        assert_eq!(record.ticket_requested, None);
    }
}
