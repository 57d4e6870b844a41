//! The PostgreSQL lock's row as another host may have written it, checked by
//! `report_collector::lock::postgres::row::decode`: any values decode, never a panic; a ticket
//! it yields (in the row, the holder, the left ticket) passes `ticket::is_safe`; a lease it
//! trusts runs at most the longest `postgres.lease`; every name and declined value it hands a
//! log line holds no control character and is short.
//!
//! The input is text, so that seeds are readable: one `column value` a line, columns named as
//! `RowValues` names them (`now` is the database's clock); `NULL` or a missing line is NULL.
//! Times are microseconds since 2000-01-01, as PostgreSQL sends them (`infinity` is
//! `9223372036854775807`); text takes `\n` and `\\` escapes.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use report_collector::config::LEASE_RANGE;
use report_collector::lock::postgres::row::{Lease, RowValues, decode};
use report_common::ticket;

/// The longest a name or a declined value may be in a log line, in bytes: 255 characters as
/// they are (4 bytes at most each), or 64 escaped (10 bytes at most each, `\u{10ffff}`) with
/// quotes and the length after a cut.
const SHOWN_MAX: usize = 255 * 4;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut values = RowValues::empty(time(852_076_800_000_000));
    for line in text.lines() {
        let (column, value) = line.split_once(' ').unwrap_or((line, ""));
        let value = (value != "NULL").then(|| unescape(value));
        let int = |v: &Option<String>| v.as_deref().and_then(|v| v.parse::<i64>().ok());
        let int32 = |v: &Option<String>| int(v).and_then(|v| i32::try_from(v).ok());
        let at = |v: &Option<String>| int(v).map(time);
        match column {
            "now" => values.now = at(&value).unwrap_or(values.now),
            "holder_host" => values.holder_host = value,
            "holder_pid" => values.holder_pid = int32(&value),
            "since" => values.since = at(&value),
            "session" => values.session = int32(&value),
            "generation" => values.generation = int(&value),
            "lease_until" => values.lease_until = at(&value),
            "lease_until_text" => values.lease_until_text = value,
            "slot" => values.slot = at(&value),
            "ticket" => values.ticket = value,
            "ticket_bytes" => values.ticket_bytes = int32(&value),
            "ticket_requested" => values.ticket_requested = at(&value),
            "ticket_host" => values.ticket_host = value,
            "ticket_pid" => values.ticket_pid = int32(&value),
            "last_collected_at" => values.last_collected_at = at(&value),
            "last_collected_host" => values.last_collected_host = value,
            "last_report" => values.last_report = value,
            "session_holds" => values.session_holds = value.as_deref() == Some("true"),
            "lock_pid" => values.lock_pid = int32(&value),
            "lock_application" => values.lock_application = value,
            "saving_generation" => values.saving_generation = int(&value),
            "saved_by_host" => values.saved_by_host = value,
            _ => {}
        }
    }
    let offered_ticket = values.ticket.is_some();
    let (row, declined) = decode(values);

    if let Some(ticket) = row.ticket() {
        assert!(ticket::is_safe(ticket.as_str()), "{ticket:?}");
    } else if offered_ticket {
        assert!(
            declined.iter().any(|d| d.field == "ticket"),
            "a ticket dropped without a word: {declined:?}"
        );
    }
    match row.lease() {
        Lease::Live(left) => assert!(
            !left.is_zero() && left <= LEASE_RANGE.1,
            "trusted a lease of {left:?}"
        ),
        Lease::Untrusted => assert!(
            declined.iter().any(|d| d.field == "lease_until"),
            "an untrusted lease without a word: {declined:?}"
        ),
        Lease::None | Lease::Over(_) => {}
    }
    let holder = row.holder();
    if let Some(ticket) = &holder.ticket {
        assert!(ticket::is_safe(ticket), "{ticket:?}");
    }
    let line = holder.to_string();
    assert!(!line.chars().any(char::is_control), "{line:?}");
    // Two names and a ticket at most.
    assert!(
        line.len() <= 3 * SHOWN_MAX,
        "{} bytes: {line:?}",
        line.len()
    );
    let mut shown: Vec<String> = holder.host.into_iter().collect();
    if let Some(left) = row.left_ticket() {
        assert!(ticket::is_safe(left.ticket.as_str()), "{:?}", left.ticket);
        shown.extend(left.host);
        shown.extend(left.saving.map(|(_, host)| host));
    }
    for d in &declined {
        shown.push(d.value.clone());
    }
    for text in shown {
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.len() <= SHOWN_MAX, "{} bytes: {text:?}", text.len());
    }
});

/// A time as PostgreSQL sends it: microseconds since 2000-01-01, read as postgres-types does.
fn time(micros: i64) -> SystemTime {
    let epoch = UNIX_EPOCH + Duration::from_secs(946_684_800);
    let offset = Duration::from_micros(micros.unsigned_abs());
    if micros < 0 {
        epoch - offset
    } else {
        epoch + offset
    }
}

/// `\n` and `\\` as a newline and a backslash, so an input line can hold any text.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}
