//! `/request_report?offset=`: any text is an offset from 0 to `i64::MAX` or refused, and an
//! offset that reads is one the report's CSV rows can count up from without overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use report_apis::api::parse_offset;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(offset) = parse_offset(text) {
        assert!(i64::try_from(offset).is_ok(), "{text:?} read as {offset}");
        assert_eq!(parse_offset(&offset.to_string()), Some(offset));
    }
});
