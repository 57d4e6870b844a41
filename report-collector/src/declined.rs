//! A value read back from what another process or host can write (the lock file's holder
//! record, the PostgreSQL lock's row, the state file) that fails the check it passed where it
//! first entered: *declined*, never used in a URL, a file name or a line as it is, and said in
//! one journal line (`VALUE_DECLINED`) naming where it came from, the field, the value escaped
//! and cut short, and what is done instead. The one place that checks such a ticket or name
//! and words the line; every reader of such a value goes through it.

use report_common::message_id;
use report_common::shown;
use report_common::ticket::{self, Ticket};

/// The longest host or report name another process or host wrote that is taken and shown as
/// it is, in characters (a real host name is at most 64 bytes, `HOST_NAME_MAX`; DNS allows
/// 253).
pub const NAME_MAX: usize = 255;

/// How much of a declined value the journal line shows, in characters.
pub const SHOWN: usize = 64;

/// A value that failed its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declined {
    /// Where it was read: "the lock file's holder record", "the PostgreSQL lock's row", ...
    pub source: &'static str,
    /// The field or column.
    pub field: &'static str,
    /// The value, escaped and cut short ([`shown::quoted`]).
    pub value: String,
    /// What is wrong with it and what is done instead.
    pub why: String,
}

impl Declined {
    /// The journal line, with the fields the catalog entry names.
    pub fn say(&self) {
        self.log("");
    }

    /// [`Declined::say`] for a value of the lock `name` (several fleets may share a database).
    pub fn say_of_lock(&self, name: &str) {
        self.log(&format!(" (lock \"{}\")", shown::escaped(name)));
    }

    fn log(&self, context: &str) {
        tracing::warn!(
            MESSAGE_ID = message_id::VALUE_DECLINED,
            SOURCE = self.source,
            FIELD = self.field,
            VALUE = self.value.as_str(),
            "declined the {} read back from {}{context}, {}: {}",
            self.field,
            self.source,
            self.value,
            self.why
        );
    }
}

/// `text` as a [`Ticket`], or why not: it counts as no ticket left to resume.
pub fn ticket(text: &str, source: &'static str) -> Result<Ticket, Declined> {
    Ticket::new(text).map_err(|unsafe_ticket| not_a_ticket(source, unsafe_ticket.shown))
}

/// A ticket declined, `value` the text as shown ([`shown::quoted`]).
pub fn not_a_ticket(source: &'static str, value: String) -> Declined {
    Declined {
        source,
        field: "ticket",
        value,
        why: format!(
            "a ticket is 1 to {} characters of A-Z, a-z, 0-9, '-', '_' and '.', not starting with '.'; it counts as no ticket left to resume, and the run that takes the lock clears it",
            ticket::MAX_LEN
        ),
    }
}

/// `text` as it is when it can be a host or report name (at most [`NAME_MAX`] characters,
/// nothing [`shown`] would escape), or why not, with `instead` saying what is done with it.
pub fn name(
    text: &str,
    field: &'static str,
    source: &'static str,
    instead: &str,
) -> Result<(), Declined> {
    match shown::plain_or_quoted(text, NAME_MAX) {
        std::borrow::Cow::Borrowed(_) => Ok(()),
        std::borrow::Cow::Owned(_) => Err(Declined {
            source,
            field,
            value: shown::quoted(text, SHOWN),
            why: format!(
                "a name here is at most {NAME_MAX} characters with no control character; {instead}"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declined_value_is_one_line_with_the_catalog_s_fields() {
        let declined = ticket("q/../x\nINFO forged", "the state file").unwrap_err();
        let (captured, guard) = report_common::logging::capture::start();
        declined.say();
        drop(guard);
        let line = crate::outcome::the_line(&captured, message_id::VALUE_DECLINED);
        assert_eq!(line["SOURCE"], "the state file");
        assert_eq!(line["FIELD"], "ticket");
        assert_eq!(line["VALUE"], r#""q/../x\nINFO forged""#);
        assert!(!line["MESSAGE"].contains('\n'), "{}", line["MESSAGE"]);
        assert!(ticket("abc_0", "x").is_ok());
        assert!(name("web-1", "host", "x", "").is_ok());
        assert!(name(&"h".repeat(NAME_MAX + 1), "host", "x", "").is_err());
        assert!(name("h\u{202e}", "host", "x", "").is_err());
    }
}
