//! What a body must be before it is saved as a report: the CSV header, then rows with as many
//! fields, every line ended by a newline, no NUL byte, UTF-8 text. An error page, a body cut
//! short and a body of garbage each fail here for a reason that names them.
//!
//! [`validate`] is a pure function of the bytes, so it can be fuzzed and tested without a
//! server. The client checks a body as it streams in, with a [`Validator`] fed each piece as it
//! arrives: a report is never held in memory whole, and the validator keeps no more than the
//! start of the first line and a character cut by a piece's end, so a run's memory does not
//! grow with the report. It gives for any split of a body what [`validate`] gives for the whole.

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
    let mut validator = Validator::new();
    validator.feed(body);
    validator.finish()
}

/// The fields of a row: as many as the header has.
fn expected_fields() -> usize {
    CSV_HEADER.split(',').count()
}

/// How much of the first line is kept to compare with the header: the header, a `\r`, and one
/// byte more, which tells a longer line from the header.
const FIRST_LINE_KEPT: usize = CSV_HEADER.len() + 2;

/// [`validate`], fed a body piece by piece as it arrives. Each line is judged when its newline
/// comes, in the order [`validate`] judges it: a NUL byte, then bytes that are not UTF-8, then
/// the header or the number of fields. The first fault is final, so [`Validator::fault`] may
/// stop a reader early; the last line is judged by [`Validator::finish`].
#[derive(Debug, Clone)]
pub struct Validator {
    /// The first fault of a line that ended; nothing later changes the answer.
    fault: Option<Malformed>,
    /// Whether any byte came.
    seen: bool,
    /// The line being read, counted from 1.
    line: usize,
    /// Whether it has a byte yet: a body that ends right after a newline is whole.
    started: bool,
    commas: usize,
    nul: bool,
    not_utf8: bool,
    /// A character the last piece ended in the middle of.
    cut: Cut,
    /// The start of the first line (see [`FIRST_LINE_KEPT`]).
    first: Vec<u8>,
}

impl Default for Validator {
    fn default() -> Self {
        Validator::new()
    }
}

impl Validator {
    pub fn new() -> Validator {
        Validator {
            fault: None,
            seen: false,
            line: 1,
            started: false,
            commas: 0,
            nul: false,
            not_utf8: false,
            cut: Cut::default(),
            first: Vec::with_capacity(FIRST_LINE_KEPT),
        }
    }

    /// The next piece of the body.
    pub fn feed(&mut self, piece: &[u8]) {
        if piece.is_empty() || self.fault.is_some() {
            return;
        }
        self.seen = true;
        let mut rest = piece;
        if self.line == 1 {
            // The header line goes line by line, which keeps its start.
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |at| at + 1);
            let (first, after) = rest.split_at(end);
            self.feed_lines(first);
            rest = after;
        }
        if rest.is_empty() || self.fault.is_some() {
            return;
        }
        let mut cut = self.cut;
        if !rest.contains(&0) && cut.take(rest) {
            // Text throughout, every character whole at each newline (a newline cannot be
            // inside one): the rows in it need only their fields counted. One pass over the
            // piece, not one per line, since rows are short.
            self.cut = Cut::default();
            self.count_fields(rest);
            self.cut = cut;
        } else {
            self.feed_lines(rest);
        }
    }

    /// The fault found so far in a line that ended, if any: the answer, whatever follows.
    pub fn fault(&self) -> Option<&Malformed> {
        self.fault.as_ref()
    }

    /// The answer for the whole body fed.
    pub fn finish(self) -> Result<(), Malformed> {
        if let Some(fault) = self.fault {
            return Err(fault);
        }
        if !self.seen {
            return Err(Malformed::Empty);
        }
        if !self.started {
            return Ok(());
        }
        // Cut short mid-line: say so before whatever else is wrong with the fragment, but
        // never call a body that is not a report at all merely truncated.
        if self.line > 1 {
            return Err(Malformed::Truncated { line: self.line });
        }
        self.check_text()?;
        self.check_header()?;
        Err(Malformed::Truncated { line: 1 })
    }

    /// `bytes`, judging each line as its newline comes.
    fn feed_lines(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.take(&bytes[..end]);
            if let Err(fault) = self.end_line() {
                self.fault = Some(fault);
                return;
            }
            bytes = &bytes[end + 1..];
        }
        self.take(bytes);
    }

    /// `text`, known to hold no NUL and to be UTF-8 wherever a line ends in it: the fields of
    /// each row, counted.
    fn count_fields(&mut self, text: &[u8]) {
        let mut started = self.started;
        let mut commas = self.commas;
        for &b in text {
            if b == b'\n' {
                self.started = started;
                self.commas = commas;
                if let Err(fault) = self.end_line() {
                    self.fault = Some(fault);
                    return;
                }
                started = false;
                commas = 0;
            } else {
                started = true;
                if b == b',' {
                    commas = commas.saturating_add(1);
                }
            }
        }
        self.started = started;
        self.commas = commas;
    }

    /// A part of the current line, without its newline.
    fn take(&mut self, part: &[u8]) {
        if part.is_empty() {
            return;
        }
        self.started = true;
        if self.line == 1 {
            let room = FIRST_LINE_KEPT - self.first.len();
            self.first.extend_from_slice(&part[..part.len().min(room)]);
        }
        self.nul |= part.contains(&0);
        let commas = part.iter().filter(|&&b| b == b',').count();
        self.commas = self.commas.saturating_add(commas);
        if !self.not_utf8 && !self.cut.take(part) {
            self.not_utf8 = true;
        }
    }

    /// Judges the line whose newline came, and starts the next.
    fn end_line(&mut self) -> Result<(), Malformed> {
        self.check_text()?;
        if self.line == 1 {
            self.check_header()?;
        } else {
            let found = self.commas.saturating_add(1);
            let expected = expected_fields();
            if found != expected {
                return Err(Malformed::Fields {
                    line: self.line,
                    found,
                    expected,
                });
            }
        }
        self.line = self.line.saturating_add(1);
        self.started = false;
        self.commas = 0;
        Ok(())
    }

    /// The current line is text: no NUL, and UTF-8 to its end.
    fn check_text(&self) -> Result<(), Malformed> {
        let line = self.line;
        if self.nul {
            return Err(Malformed::Nul { line });
        }
        // A character cut by the line's end is not UTF-8 either.
        if self.not_utf8 || self.cut.len > 0 {
            return Err(Malformed::NotUtf8 { line });
        }
        Ok(())
    }

    fn check_header(&self) -> Result<(), Malformed> {
        let first = self.first.strip_suffix(b"\r").unwrap_or(&self.first);
        if first != CSV_HEADER.as_bytes() {
            return Err(Malformed::NotCsv);
        }
        Ok(())
    }
}

/// The bytes of a character cut by the end of a piece, carried over to the next.
#[derive(Debug, Clone, Copy, Default)]
struct Cut {
    bytes: [u8; 4],
    len: usize,
}

impl Cut {
    /// Takes `part`, the text that follows the cut; false if it is not UTF-8. What `part`
    /// ends in the middle of is the new cut (none after text that is not UTF-8: its line is
    /// refused whatever follows).
    fn take(&mut self, mut part: &[u8]) -> bool {
        while self.len > 0 {
            let Some((&byte, after)) = part.split_first() else {
                return true;
            };
            part = after;
            self.bytes[self.len] = byte;
            self.len += 1;
            match std::str::from_utf8(&self.bytes[..self.len]) {
                Ok(_) => self.len = 0,
                // Still the start of a character, which is never more than 4 bytes.
                Err(e) if e.error_len().is_none() => {}
                Err(_) => {
                    self.len = 0;
                    return false;
                }
            }
        }
        match std::str::from_utf8(part) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                let cut = &part[e.valid_up_to()..];
                self.bytes[..cut.len()].copy_from_slice(cut);
                self.len = cut.len();
                true
            }
        }
    }
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

    /// The check of a whole body the [`Validator`] replaced, line by line over the whole: the
    /// reference it must agree with.
    fn reference(body: &[u8]) -> Result<(), Malformed> {
        if body.is_empty() {
            return Err(Malformed::Empty);
        }
        let expected = expected_fields();
        let mut lines = body.split(|&b| b == b'\n').enumerate().peekable();
        while let Some((index, raw)) = lines.next() {
            let line = index + 1;
            let is_last = lines.peek().is_none();
            if is_last {
                if raw.is_empty() {
                    break;
                }
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

    fn fed_in(pieces: &[&[u8]]) -> Result<(), Malformed> {
        let mut validator = Validator::new();
        for piece in pieces {
            validator.feed(piece);
        }
        validator.finish()
    }

    #[test]
    fn any_split_of_a_body_gets_the_answer_of_the_whole() {
        let bodies: [&[u8]; 17] = [
            b"",
            b"\n",
            b"timestamp,data\n0,data-0\n1,data-1\n",
            b"timestamp,data\r\n0,d\xc3\xa9j\xc3\xa0\r\n1,\xf0\x9f\xa6\x80\n",
            b"timestamp,data",
            b"timestamp,data\r",
            b"timestamp,data\r\r\n",
            b"timestamp,datax\n",
            b"timestamp,dat\n",
            b"\xf0\x9f\xa6timestamp,data\n",
            b"timestamp,data\n0,caf\xc3\n",
            b"timestamp,data\n0,\xc3\xa9,x\n0,a\0\n",
            b"timestamp,data\n0,\xff\0\n",
            b"<html>\0\n",
            b"timestamp,data\n0,data-0\n1,da\xc3",
            b"timestamp,data\n0,data-0\n\n",
            // A character cut, then found not to be one at its fourth byte, mid-line.
            b"timestamp,data\n0,\xf0\x9f\xa6a,b\n1,x\n",
        ];
        for body in bodies {
            let want = reference(body);
            let show = String::from_utf8_lossy(body);
            assert_eq!(validate(body), want, "{show:?}");
            for i in 0..=body.len() {
                assert_eq!(fed_in(&[&body[..i], &body[i..]]), want, "{show:?} at {i}");
                for j in i..=body.len() {
                    let pieces = [&body[..i], &body[i..j], &body[j..]];
                    assert_eq!(fed_in(&pieces), want, "{show:?} at {i} and {j}");
                }
            }
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            assert_eq!(fed_in(&bytes), want, "{show:?} a byte at a time");
        }
    }

    #[test]
    fn a_fault_is_known_as_soon_as_its_line_ends() {
        let mut validator = Validator::new();
        validator.feed(b"timestamp,data\n0,data-0\n0,x,y");
        assert_eq!(validator.fault(), None, "the line has not ended");
        validator.feed(b"\n1,data-1\n");
        let fields = Malformed::Fields {
            line: 3,
            found: 3,
            expected: 2,
        };
        assert_eq!(validator.fault(), Some(&fields));
        validator.feed(b"whatever follows");
        assert_eq!(validator.finish(), Err(fields));
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
