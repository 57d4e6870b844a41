//! The `Report-Fence` header a collector sends and report-apis reads before it looks at
//! anything else of a request: any bytes either read as a fence or are refused, never a
//! panic; a value longer than the bound is refused; and a fence that reads, written again as
//! the collector writes it, reads back as the same fence.
#![no_main]

use libfuzzer_sys::fuzz_target;
use report_common::fence::{Fence, MAX_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(fence) = Fence::parse(data) else {
        return;
    };
    assert!(data.len() <= MAX_HEADER_LEN, "{} bytes read", data.len());
    let written = fence.header_value();
    assert!(written.len() <= MAX_HEADER_LEN, "{written:?}");
    assert_eq!(Fence::parse(written.as_bytes()), Ok(fence), "{written:?}");
});
