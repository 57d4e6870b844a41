//! What a body must be before it is saved as a report: the CSV header, then rows with as many
//! fields, every line ended by a newline, no NUL byte, UTF-8 text. An error page, a body cut
//! short and a body of garbage each fail here for a reason that names them.
//!
//! [`validate`] is a pure function of the bytes, so it can be fuzzed and tested without a
//! server; the client calls it on every body before it calls it a report.

use std::fmt;

use report_common::wire::CSV_HEADER;

/// Why a body is not a whole CSV report. Lines are counted from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// Nothing at all.
    Empty,
    /// The first line is not the report's header: an error page or something else entirely.
    NotCsv,
    /// The last line has no newline: the body stops mid-line, as a body cut short does.
    Truncated { line: usize },
    /// A row with another number of fields than the header.
    Fields {
        line: usize,
        found: usize,
        expected: usize,
    },
    /// A NUL byte: binary data, not text.
    Nul { line: usize },
    /// Bytes that are not UTF-8 text.
    NotUtf8 { line: usize },
}

impl Malformed {
    /// The word the run's error uses for this kind of body.
    pub fn kind(&self) -> &'static str {
        match self {
            Malformed::Empty | Malformed::NotCsv => "not a CSV report",
            Malformed::Truncated { .. } => "truncated",
            Malformed::Fields { .. } | Malformed::Nul { .. } | Malformed::NotUtf8 { .. } => {
                "malformed"
            }
        }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Empty => write!(f, "the body is empty"),
            Malformed::NotCsv => {
                write!(f, "the body does not start with the `{CSV_HEADER}` header")
            }
            Malformed::Truncated { line } => write!(
                f,
                "line {line} has no newline at its end, so the body stops mid-line"
            ),
            Malformed::Fields {
                line,
                found,
                expected,
            } => write!(
                f,
                "malformed at line {line}: {found} field(s) where the header has {expected}"
            ),
            Malformed::Nul { line } => write!(f, "malformed at line {line}: a NUL byte"),
            Malformed::NotUtf8 { line } => {
                write!(f, "malformed at line {line}: bytes that are not UTF-8 text")
            }
        }
    }
}

impl std::error::Error for Malformed {}

/// Checks that `body` is a whole CSV report. Lines may end in `\r\n`. A report with the header
/// and no rows is whole.
pub fn validate(body: &[u8]) -> Result<(), Malformed> {
    if body.is_empty() {
        return Err(Malformed::Empty);
    }
    let expected = CSV_HEADER.split(',').count();
    // Every line ends in '\n', so splitting leaves one empty piece after the last newline;
    // anything else there is a last line without its newline.
    let mut lines = body.split(|&b| b == b'\n').enumerate().peekable();
    while let Some((index, raw)) = lines.next() {
        let line = index.saturating_add(1);
        let is_last = lines.peek().is_none();
        if is_last {
            if raw.is_empty() {
                break;
            }
            // Cut short mid-line: say so before whatever else is wrong with the fragment, but
            // never call a body that is not a report at all merely truncated.
            if index > 0 {
                return Err(Malformed::Truncated { line });
            }
        }
        if raw.contains(&0) {
            return Err(Malformed::Nul { line });
        }
        let text = std::str::from_utf8(raw).map_err(|_| Malformed::NotUtf8 { line })?;
        let text = text.strip_suffix('\r').unwrap_or(text);
        if index == 0 {
            if text != CSV_HEADER {
                return Err(Malformed::NotCsv);
            }
            if is_last {
                return Err(Malformed::Truncated { line });
            }
            continue;
        }
        let found = text.split(',').count();
        if found != expected {
            return Err(Malformed::Fields {
                line,
                found,
                expected,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_reports_pass() {
        for body in [
            "timestamp,data\n0,data-0\n1,data-1\n",
            "timestamp,data\r\n0,data-0\r\n",
            "timestamp,data\n",
        ] {
            assert_eq!(validate(body.as_bytes()), Ok(()), "{body:?}");
        }
    }

    #[test]
    fn each_fault_is_named_with_its_line() {
        let cases: [(&[u8], Malformed); 10] = [
            (b"", Malformed::Empty),
            (
                b"<html><body>502 Bad Gateway</body></html>",
                Malformed::NotCsv,
            ),
            (b"<html>\n<body>oops</body>\n</html>\n", Malformed::NotCsv),
            (b"report is not ready", Malformed::NotCsv),
            (b"timestamp,data", Malformed::Truncated { line: 1 }),
            (
                b"timestamp,data\n0,data-0\n1,da",
                Malformed::Truncated { line: 3 },
            ),
            (
                b"timestamp,data\n0,data-0,extra\n",
                Malformed::Fields {
                    line: 2,
                    found: 3,
                    expected: 2,
                },
            ),
            (
                b"timestamp,data\n0,data-0\n\n1,data-1\n",
                Malformed::Fields {
                    line: 3,
                    found: 1,
                    expected: 2,
                },
            ),
            (b"timestamp,data\n0,da\0ta\n", Malformed::Nul { line: 2 }),
            (
                b"timestamp,data\n0,\xff\xfe\n",
                Malformed::NotUtf8 { line: 2 },
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                validate(body),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn every_cut_of_a_whole_report_but_at_a_line_end_is_refused() {
        // A cut right after a newline leaves a whole, shorter report: only the framing of the
        // answer (Content-Length or chunked) tells that one apart, so the client insists on it.
        let whole = b"timestamp,data\n0,data-0\n1,data-1\n";
        for end in 0..whole.len() {
            let at_line_end = end > 0 && whole[end - 1] == b'\n';
            assert_eq!(validate(&whole[..end]).is_ok(), at_line_end, "cut at {end}");
        }
        assert_eq!(validate(whole), Ok(()));
    }

    #[test]
    fn the_messages_say_what_the_body_is() {
        assert_eq!(Malformed::NotCsv.kind(), "not a CSV report");
        assert_eq!(Malformed::Truncated { line: 3 }.kind(), "truncated");
        let fields = Malformed::Fields {
            line: 7,
            found: 1,
            expected: 2,
        };
        assert!(fields.to_string().starts_with("malformed at line 7"));
    }
}
