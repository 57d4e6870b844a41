//! The lock file's holder record, which any process that can write the lock file writes: read
//! as the next holder reads it. Whatever the bytes, a left ticket it yields passes the ticket
//! check (so it is one path component and one URL segment), its host holds no control
//! character, and a record over the bound is refused unread.
#![no_main]

use libfuzzer_sys::fuzz_target;
use report_collector::lock::LeftTicket;
use report_collector::lock::flock::parse_record;
use report_common::ticket;

fuzz_target!(|data: &[u8]| {
    let Ok(Some(record)) = parse_record(data) else {
        return;
    };
    assert!(
        data.len() <= 4096,
        "a record of {} bytes was read",
        data.len()
    );
    let Some(left) = LeftTicket::from_record(record) else {
        return;
    };
    assert!(ticket::is_safe(&left.ticket), "{:?}", left.ticket);
    if let Some(host) = &left.host {
        assert!(
            host.chars().count() <= 255 && !host.chars().any(char::is_control),
            "{host:?}"
        );
    }
});
