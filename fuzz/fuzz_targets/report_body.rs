//! The collector's check of a response body before it is saved as a report: any bytes are
//! either a whole CSV report or refused for a reason, never a panic. A body that passes is text
//! ending in a newline with no NUL, and every cut of it short of a line's end is refused, as a
//! body cut short by the network must be. Fed in pieces, as the client checks a body while it
//! streams in, the check gives the answer it gives for the whole, wherever the pieces are cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use report_collector::report::{Validator, validate};

/// `data` fed in pieces of `size` bytes.
fn fed_in_pieces(data: &[u8], size: usize) -> Result<(), report_collector::report::Malformed> {
    let mut validator = Validator::new();
    for piece in data.chunks(size) {
        validator.feed(piece);
    }
    validator.finish()
}

fuzz_target!(|data: &[u8]| {
    let whole = validate(data);
    // A byte at a time, and in pieces of a size the input chooses (its first byte), so the
    // fuzzer finds the cuts that matter: inside a character, a `\r\n`, the header.
    let size = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for size in [1, size] {
        assert_eq!(
            fed_in_pieces(data, size),
            whole,
            "fed in pieces of {size} bytes, the answer differs from the whole's"
        );
    }
    if whole.is_err() {
        return;
    }
    assert!(data.ends_with(b"\n"), "accepted without a final newline");
    assert!(!data.contains(&0), "accepted a NUL byte");
    assert!(
        std::str::from_utf8(data).is_ok(),
        "accepted bytes that are not UTF-8"
    );
    // Every cut of a short body; of a long one, the last (every cut would make the target
    // quadratic in the input's length, and slow to fuzz).
    let cuts = if data.len() <= 256 { 1 } else { data.len() - 1 };
    for cut in cuts..data.len() {
        if data[cut - 1] != b'\n' {
            assert!(
                validate(&data[..cut]).is_err(),
                "accepted a body cut after {cut} of {} bytes",
                data.len()
            );
        }
    }
});
