//! The report body: the CSV the original server produced, byte for byte.
//!
//! The original wrote it with Go's `encoding/csv`, which ends every line (the last one too)
//! with `\n`; clients that saved its reports must see the same bytes from us.

use report_common::wire::CSV_HEADER;

/// Number of data rows in every report.
pub const ROWS: u64 = 5;

/// The CSV for a ticket's offset: a `timestamp,data` header, then `offset+i,data-i` rows.
/// Offsets are at most `i64::MAX` (checked where tickets are parsed), so `offset + i` fits.
pub fn csv(offset: u64) -> String {
    use std::fmt::Write;
    let mut body = String::with_capacity(16 + 5 * 28);
    body.push_str(CSV_HEADER);
    body.push('\n');
    for i in 0..ROWS {
        // Writing to a String cannot fail.
        let _ = writeln!(body, "{},data-{i}", offset + i);
    }
    body
}

/// The `Content-Disposition` value naming the report file, as the original did.
pub fn content_disposition(offset: u64) -> String {
    format!("attachment; filename=\"{offset}.csv\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_original_byte_for_byte() {
        assert_eq!(
            csv(0),
            "timestamp,data\n0,data-0\n1,data-1\n2,data-2\n3,data-3\n4,data-4\n"
        );
        assert_eq!(content_disposition(42), "attachment; filename=\"42.csv\"");
    }

    #[test]
    fn largest_offset_does_not_overflow() {
        let max = i64::MAX as u64;
        assert!(csv(max).ends_with("9223372036854775811,data-4\n"));
    }
}
