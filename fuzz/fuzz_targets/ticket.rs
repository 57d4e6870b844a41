//! The ticket a client sends back to `/get_report/{ticket}`: any text either reads as
//! `<uuid>_<offset>` or is refused, and a ticket that reads formats back to one that reads the
//! same and is safe for a URL and a file name (what the collector checks before using it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use report_common::ticket;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((id, offset)) = ticket::parse(text) else {
        return;
    };
    // Negative offsets read but are never issued, so never formatted.
    let Ok(issued) = u64::try_from(offset) else {
        return;
    };
    let formatted = ticket::format(id, issued);
    assert_eq!(ticket::parse(&formatted), Ok((id, offset)), "{formatted:?}");
    assert!(ticket::is_safe(&formatted), "{formatted:?}");
    // The server hands out lowercase uuids and plain decimal offsets: such a ticket comes
    // back unchanged.
    let (_, digits) = text.split_once('_').unwrap_or_default();
    if text == text.to_ascii_lowercase() && digits == offset.to_string() {
        assert_eq!(formatted, text);
    }
});
