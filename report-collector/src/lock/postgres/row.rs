//! The lock's row as another host wrote it, checked before anything uses it.
//!
//! Every column of `report_collector_lock` is written by whichever host has the database role,
//! by hand, or by a collector of another version: it is input, checked as a server's answer is.
//! [`RowValues`] is what the database gave (read with `try_get`, text columns already cut
//! short in SQL, so a 10 MB value never crosses the wire); [`decode`] turns it into the
//! [`Row`] the lock decides with, and names every value it declined. It does no I/O, so it is
//! unit-tested here and fuzzed (`fuzz/fuzz_targets/postgres_row.rs`).
//!
//! What is declined, and what takes its place:
//! - a ticket that is not a [`Ticket`] (a path, a query, a newline, 10 MB): no ticket left to
//!   resume; the run that takes the lock clears it from the row, so later runs do not meet it.
//! - a lease that cannot be real (`infinity`, year 9999: more than the longest `postgres.lease`
//!   from the database's clock): not trusted. It is neither waited out to its end (every run
//!   would skip for ever) nor believed over at once (the last holder may still be collecting):
//!   a run that finds the lock free waits out its own lease, then takes the lock over.
//! - a time outside what RFC 3339 writes (before 1970, after 9999, `infinity`): not on record.
//! - a host name or a report name longer than 255 characters or holding a control character:
//!   shown escaped and cut short, never as it is.
//!
//! The generation (the fencing token) is not checked here: what to do with one that cannot
//! increase is the taker's decision ([`super::PostgresLock`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use report_common::shown;
use report_common::ticket::{self, Ticket};

use crate::config::LEASE_RANGE;
use crate::declined::SHOWN;
use crate::lock::holder::{Holder, LeftTicket};
use crate::time::{LAST_TIME, Timestamp, format_time};

/// What VALUE_DECLINED's `SOURCE` says of a value read from the row.
pub const SOURCE: &str = "the PostgreSQL lock's row";
/// The longest host name or report name shown as it is, in characters: the holder record's
/// bound.
pub const NAME_MAX: usize = crate::declined::NAME_MAX;
/// How many characters of a host or report name are read (`left(column, 256)`, written out in
/// the slot statements): one more than [`NAME_MAX`], so that a longer one is seen to be longer.
pub const NAME_READ: usize = NAME_MAX + 1;
/// How many characters of the ticket are read: one more than any ticket may have, so a longer
/// one fails the check without more of it crossing the wire (`octet_length` gives its size).
pub const TICKET_READ: usize = ticket::MAX_LEN + 1;

/// The lock's row as the database gave it, before any check. Text columns are cut short in
/// SQL (names to [`NAME_READ`] characters, the ticket to [`TICKET_READ`]).
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub struct RowValues {
    /// `clock_timestamp()`: the database's clock, which leases are written and read by.
    pub now: SystemTime,
    pub holder_host: Option<String>,
    pub holder_pid: Option<i32>,
    pub since: Option<SystemTime>,
    pub session: Option<i32>,
    pub generation: Option<i64>,
    pub lease_until: Option<SystemTime>,
    /// `lease_until` as the database writes it (`infinity`, say), for the journal.
    pub lease_until_text: Option<String>,
    pub slot: Option<SystemTime>,
    pub ticket: Option<String>,
    /// `octet_length(ticket)`: the size of the whole ticket, of which `ticket` is the start.
    pub ticket_bytes: Option<i32>,
    pub ticket_requested: Option<SystemTime>,
    pub ticket_host: Option<String>,
    pub ticket_pid: Option<i32>,
    pub last_collected_at: Option<SystemTime>,
    pub last_collected_host: Option<String>,
    pub last_report: Option<String>,
    /// The session the row names holds the lock's advisory lock (`pg_locks`).
    pub session_holds: bool,
    /// Whichever session holds the advisory lock now.
    pub lock_pid: Option<i32>,
    /// Its `application_name` (`pg_stat_activity`, cut to [`NAME_READ`]).
    pub lock_application: Option<String>,
    pub saving_generation: Option<i64>,
    pub saved_by_host: Option<String>,
}

impl RowValues {
    /// No row: what a lock never taken looks like.
    pub fn empty(now: SystemTime) -> RowValues {
        RowValues {
            now,
            holder_host: None,
            holder_pid: None,
            since: None,
            session: None,
            generation: None,
            lease_until: None,
            lease_until_text: None,
            slot: None,
            ticket: None,
            ticket_bytes: None,
            ticket_requested: None,
            ticket_host: None,
            ticket_pid: None,
            last_collected_at: None,
            last_collected_host: None,
            last_report: None,
            session_holds: false,
            lock_pid: None,
            lock_application: None,
            saving_generation: None,
            saved_by_host: None,
        }
    }
}

/// The lease in the row, by the database's clock.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lease {
    /// No lease (`lease_until` is NULL): the lock was released, or never taken.
    #[default]
    None,
    /// Runs this much longer; never more than the longest `postgres.lease`.
    Live(Duration),
    /// Ran out this long ago.
    Over(Duration),
    /// Ends later than any collector writes a lease to end: not trusted (see the module doc).
    Untrusted,
}

pub use crate::declined::Declined;

/// Checks every value of `values`; the row keeps what passed, and the second part names what
/// was declined, in column order. Never panics, whatever the values.
#[doc(hidden)]
pub fn decode(values: RowValues) -> (Row, Vec<Declined>) {
    let mut declined = Vec::new();
    let lease = lease(&values, &mut declined);
    let mut name = |field, value| checked_name(field, value, &mut declined);
    let host = name("holder_host", values.holder_host);
    let ticket_host = name("ticket_host", values.ticket_host);
    let last_host = name("last_collected_host", values.last_collected_host);
    let last_report = name("last_report", values.last_report);
    let saved_by_host = name("ticket_saved_by_host", values.saved_by_host);
    let mut time = |field, value| real_time(field, value, &mut declined);
    let since = time("since", values.since);
    let slot = time("slot", values.slot);
    let ticket_requested = time("ticket_requested", values.ticket_requested);
    let last_at = time("last_collected_at", values.last_collected_at);
    let (ticket, ticket_declined) =
        checked_ticket(values.ticket, values.ticket_bytes, &mut declined);
    // Named by the session's application_name, which any client sets: shown escaped.
    let lock_application = values
        .lock_application
        .map(|name| shown::plain_or_quoted(&name, NAME_MAX).into_owned());
    declined.sort_by_key(|d| COLUMN_ORDER.iter().position(|c| *c == d.field));
    let row = Row {
        host,
        pid: values.holder_pid,
        since,
        session: values.session,
        generation: values.generation,
        lease,
        slot,
        ticket,
        ticket_declined,
        ticket_requested,
        ticket_host,
        ticket_pid: values.ticket_pid,
        last_at,
        last_host,
        last_report,
        session_holds: values.session_holds,
        lock_pid: values.lock_pid,
        lock_application,
        saving_generation: values.saving_generation,
        saved_by_host,
    };
    (row, declined)
}

/// The row's ticket when it was read whole and is a [`Ticket`], else declined; the flag says it
/// was declined, so that the run that takes the lock clears it from the row.
fn checked_ticket(
    text: Option<String>,
    ticket_bytes: Option<i32>,
    declined: &mut Vec<Declined>,
) -> (Option<Ticket>, bool) {
    let Some(text) = text else {
        return (None, false);
    };
    let bytes = ticket_bytes
        .and_then(|b| usize::try_from(b).ok())
        .unwrap_or(0)
        .max(text.len());
    // A ticket read whole and safe; anything cut short was too long to be one.
    let whole = bytes == text.len();
    match crate::declined::ticket(&text, SOURCE)
        .ok()
        .filter(|_| whole)
    {
        Some(ticket) => (Some(ticket), false),
        None => {
            declined.push(crate::declined::not_a_ticket(
                SOURCE,
                shown_cut(&text, bytes),
            ));
            (None, true)
        }
    }
}

/// The columns in the order the table has them, so declined values are said in that order.
const COLUMN_ORDER: [&str; 11] = [
    "holder_host",
    "since",
    "lease_until",
    "slot",
    "ticket",
    "ticket_requested",
    "ticket_host",
    "last_collected_at",
    "last_collected_host",
    "last_report",
    "ticket_saved_by_host",
];

fn lease(values: &RowValues, declined: &mut Vec<Declined>) -> Lease {
    let Some(until) = values.lease_until else {
        return Lease::None;
    };
    // SystemTime arithmetic cannot overflow here: `duration_since` answers either way.
    match until.duration_since(values.now) {
        Ok(left) if left.is_zero() => Lease::Over(Duration::ZERO),
        Ok(left) if left <= LEASE_RANGE.1 => Lease::Live(left),
        Ok(_) => {
            let text = values
                .lease_until_text
                .clone()
                .unwrap_or_else(|| format_time(until));
            declined.push(Declined {
                        source: SOURCE,
                field: "lease_until",
                value: shown::quoted(&text, SHOWN),
                why: format!(
                    "a collector writes a lease of at most {} (the longest postgres.lease) from the database's clock, so this one cannot be real; it is not trusted: a run that finds the lock free waits out its own lease, then takes the lock over",
                    humantime::format_duration(LEASE_RANGE.1)
                ),
            });
            Lease::Untrusted
        }
        Err(ago) => Lease::Over(ago.duration()),
    }
}

/// A host or report name: as it is when it is at most [`NAME_MAX`] characters with nothing to
/// escape, else declined and replaced by its escaped, shortened form (only ever shown).
fn checked_name(
    field: &'static str,
    value: Option<String>,
    declined: &mut Vec<Declined>,
) -> Option<String> {
    let value = value?;
    match crate::declined::name(&value, field, SOURCE, "it is shown escaped and cut short") {
        Ok(()) => Some(value),
        Err(d) => {
            let escaped = d.value.clone();
            declined.push(d);
            Some(escaped)
        }
    }
}

/// A time within what RFC 3339 writes (1970 to 9999), else declined: not on record.
fn real_time(
    field: &'static str,
    value: Option<SystemTime>,
    declined: &mut Vec<Declined>,
) -> Option<SystemTime> {
    let value = value?;
    let real = value
        .duration_since(UNIX_EPOCH)
        .is_ok_and(|since| since <= LAST_TIME);
    if real {
        return Some(value);
    }
    let shown = match value.duration_since(UNIX_EPOCH) {
        Ok(after) => format!("{}s after 1970", after.as_secs()),
        Err(before) => format!("{}s before 1970", before.duration().as_secs()),
    };
    declined.push(Declined {
        source: SOURCE,
        field,
        value: shown::quoted(&shown, SHOWN),
        why: "not a time a collector writes (1970 to 9999); taken as not on record".to_owned(),
    });
    None
}

/// `text` as [`shown::quoted`] shows it, for a value of `bytes` bytes of which only `text`
/// (its start) was read.
fn shown_cut(text: &str, bytes: usize) -> String {
    if bytes <= text.len() {
        return shown::quoted(text, SHOWN);
    }
    let head: String = text.chars().take(SHOWN).collect();
    format!("{}... ({bytes} bytes)", shown::quoted(&head, SHOWN))
}

/// The lock's row as a reader sees it, every value checked ([`decode`]).
#[doc(hidden)]
#[derive(Debug, Default, Clone)]
pub struct Row {
    /// Escaped when it needed escaping, as every name below.
    pub(super) host: Option<String>,
    pub(super) pid: Option<i32>,
    pub(super) since: Option<SystemTime>,
    pub(super) session: Option<i32>,
    /// The fencing token of the last holder; `None` when NULL (or there is no row).
    pub(super) generation: Option<i64>,
    pub(super) lease: Lease,
    pub(super) slot: Option<SystemTime>,
    pub(super) ticket: Option<Ticket>,
    /// The row holds a ticket that failed the check: the run that takes the lock clears it.
    pub(super) ticket_declined: bool,
    pub(super) ticket_requested: Option<SystemTime>,
    pub(super) ticket_host: Option<String>,
    pub(super) ticket_pid: Option<i32>,
    pub(super) last_at: Option<SystemTime>,
    pub(super) last_host: Option<String>,
    pub(super) last_report: Option<String>,
    /// The session the row names holds the advisory lock.
    pub(super) session_holds: bool,
    /// Whichever session holds the advisory lock now.
    pub(super) lock_pid: Option<i32>,
    /// Its `application_name`: `report-collector HOST:PID` for a collector.
    pub(super) lock_application: Option<String>,
    /// The generation that marked the ticket as being saved, right before writing its report.
    pub(super) saving_generation: Option<i64>,
    /// The host of that generation.
    pub(super) saved_by_host: Option<String>,
}

impl Row {
    /// Who holds the lock, or held it last, as far as the row and `pg_locks` say.
    pub fn holder(&self) -> Holder {
        if !self.session_holds && self.lock_pid.is_some() {
            // Taken, not yet written into the row (its taker is waiting out the previous
            // lease): the session's application_name says who.
            let (host, pid) = self
                .lock_application
                .as_deref()
                .and_then(|name| name.strip_prefix("report-collector "))
                .and_then(|who| who.rsplit_once(':'))
                .map_or((None, None), |(host, pid)| {
                    (Some(host.to_owned()), pid.parse().ok())
                });
            return Holder {
                pid,
                since: None,
                host,
                ticket: None,
                ticket_requested: None,
                confirmed: false,
                show_host: true,
            };
        }
        Holder {
            pid: self.pid.and_then(|p| u32::try_from(p).ok()),
            since: self.since.map(Timestamp::from),
            host: self.host.clone(),
            ticket: self.ticket.clone(),
            ticket_requested: self.ticket_requested.map(Timestamp::from),
            confirmed: self.session_holds && self.live(),
            show_host: true,
        }
    }

    /// The holder the row names, whoever holds the advisory lock now: once a waiting run has
    /// the advisory lock itself, the row still names the run whose lease it waits out.
    pub(super) fn recorded_holder(&self) -> Holder {
        Row {
            lock_pid: None,
            ..self.clone()
        }
        .holder()
    }

    pub(super) fn held(&self) -> bool {
        self.lock_pid.is_some() || (self.live() && self.session.is_some())
    }

    /// The ticket the last holder left unfinished, if the row holds one that passed the check.
    pub fn left_ticket(&self) -> Option<LeftTicket> {
        Some(LeftTicket {
            ticket: self.ticket.clone()?,
            requested: self.ticket_requested.map(Timestamp::from),
            by_pid: self
                .ticket_pid
                .or(self.pid)
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(0),
            host: self.ticket_host.clone().or_else(|| self.host.clone()),
            saving: self
                .saving_generation
                .map(|generation| (generation, self.saved_by_host.clone().unwrap_or_default())),
        })
    }

    /// The lease in the row, by the database's clock when the row was read.
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// The ticket in the row, if it passed the check.
    pub fn ticket(&self) -> Option<&Ticket> {
        self.ticket.as_ref()
    }

    /// The lease is still running, and can be real.
    pub(super) fn live(&self) -> bool {
        matches!(self.lease, Lease::Live(_))
    }

    /// The lease ran out, or there is none: a session still holding the lock holds it stale.
    /// An untrusted lease is neither.
    pub(super) fn lease_ended(&self) -> bool {
        matches!(self.lease, Lease::None | Lease::Over(_))
    }

    pub(super) fn remaining(&self) -> Duration {
        match self.lease {
            Lease::Live(left) => left,
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const NOW: u64 = 1_800_000_000;

    fn values() -> RowValues {
        RowValues::empty(at(NOW))
    }

    #[test]
    fn a_row_a_collector_wrote_reads_as_it_is() {
        let (row, declined) = decode(RowValues {
            holder_host: Some("host-a".into()),
            holder_pid: Some(42),
            since: Some(at(NOW - 5)),
            session: Some(1234),
            generation: Some(7),
            lease_until: Some(at(NOW + 10)),
            ticket: Some("123e4567-e89b-42d3-a456-426614174000_0".into()),
            ticket_bytes: Some(38),
            ticket_requested: Some(at(NOW - 4)),
            ticket_host: Some("host-a".into()),
            session_holds: true,
            ..values()
        });
        assert_eq!(declined, []);
        assert_eq!(row.lease, Lease::Live(Duration::from_secs(10)));
        assert_eq!(
            row.ticket.as_ref().map(Ticket::as_str),
            Some("123e4567-e89b-42d3-a456-426614174000_0")
        );
        assert!(!row.ticket_declined);
        assert_eq!(row.host.as_deref(), Some("host-a"));
        assert_eq!(row.since, Some(at(NOW - 5)));
    }

    #[test]
    fn a_lease_that_cannot_be_real_is_not_trusted() {
        // 'infinity' as postgres-types reads it: i64::MAX microseconds after 2000-01-01.
        let infinity = at(946_684_800) + Duration::from_micros(u64::try_from(i64::MAX).unwrap());
        for (until, text) in [
            (infinity, "infinity"),
            (at(253_370_764_800), "9999-01-01 00:00:00+00"),
            (at(NOW) + LEASE_RANGE.1 + Duration::from_secs(1), "soon"),
        ] {
            let (row, declined) = decode(RowValues {
                lease_until: Some(until),
                lease_until_text: Some(text.into()),
                session: Some(5),
                ..values()
            });
            assert_eq!(row.lease, Lease::Untrusted, "{text}");
            assert_eq!(declined.len(), 1, "{declined:?}");
            assert_eq!(declined[0].field, "lease_until");
            assert_eq!(declined[0].value, format!("{text:?}"));
        }
        // The longest lease a collector writes is trusted; one over is over.
        let (row, declined) = decode(RowValues {
            lease_until: Some(at(NOW) + LEASE_RANGE.1),
            ..values()
        });
        assert_eq!((row.lease, declined), (Lease::Live(LEASE_RANGE.1), vec![]));
        let minus_infinity = UNIX_EPOCH - Duration::from_secs(9_000_000_000_000);
        let (row, declined) = decode(RowValues {
            lease_until: Some(minus_infinity),
            ..values()
        });
        assert!(matches!(row.lease, Lease::Over(_)), "{:?}", row.lease);
        assert_eq!(declined, []);
    }

    #[test]
    fn hostile_tickets_are_declined_and_shown_escaped_and_short() {
        let huge = "a".repeat(10 << 20);
        for (read, bytes) in [
            (
                "q/../../get_report/123e4567-e89b-42d3-a456-426614174000_0",
                None,
            ),
            ("q\\..\\..\\get_report\\x", None),
            ("t?x=1#frag", None),
            ("t\nINFO collected the report FAKE", None),
            ("", None),
            (&huge[..TICKET_READ], Some(10 << 20)),
            // The size the database gave is short of what was read: the text is judged.
            ("t/x", Some(1)),
        ] {
            let (row, declined) = decode(RowValues {
                ticket: Some(read.to_owned()),
                ticket_bytes: bytes.or(Some(i32::try_from(read.len()).unwrap())),
                ticket_host: Some("host-x".into()),
                ticket_pid: Some(9),
                ..values()
            });
            assert_eq!(row.ticket, None, "{read:?}");
            assert!(row.ticket_declined);
            assert_eq!(row.left_ticket(), None);
            assert_eq!(declined.len(), 1, "{declined:?}");
            let value = &declined[0].value;
            assert!(value.chars().all(|c| !c.is_control()), "{value}");
            assert!(value.len() < 200, "{value}");
        }
        // Safe characters, but more of them than a ticket may have: the size says so.
        let (_, declined) = decode(RowValues {
            ticket: Some(huge[..TICKET_READ].to_owned()),
            ticket_bytes: Some(10 << 20),
            ..values()
        });
        assert!(
            declined[0].value.ends_with("... (10485760 bytes)"),
            "{declined:?}"
        );
        // A ticket cut short in SQL is never taken, even if its start is safe.
        let (row, _) = decode(RowValues {
            ticket: Some("abc_1".into()),
            ticket_bytes: Some(400),
            ..values()
        });
        assert_eq!(row.ticket, None);
    }

    #[test]
    fn names_are_shown_escaped_and_times_outside_rfc_3339_are_not_on_record() {
        let (row, declined) = decode(RowValues {
            holder_host: Some("evil\nhealth: healthy".into()),
            last_collected_host: Some("h".repeat(NAME_READ)),
            since: Some(UNIX_EPOCH - Duration::from_secs(1)),
            ticket_requested: Some(at(300_000_000_000)),
            ..values()
        });
        assert_eq!(row.host.as_deref(), Some(r#""evil\nhealth: healthy""#));
        assert!(
            row.last_host
                .as_deref()
                .unwrap()
                .ends_with("... (256 bytes)")
        );
        assert_eq!((row.since, row.ticket_requested), (None, None));
        let fields: Vec<_> = declined.iter().map(|d| d.field).collect();
        assert_eq!(
            fields,
            [
                "holder_host",
                "since",
                "ticket_requested",
                "last_collected_host"
            ]
        );
        let (row, declined) = decode(RowValues {
            holder_host: Some("h".repeat(NAME_MAX)),
            ..values()
        });
        assert_eq!(row.host.map(|h| h.len()), Some(NAME_MAX));
        assert_eq!(declined, []);
    }
}
