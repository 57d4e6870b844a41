//! The ticket `/request_report` hands out and `/get_report/{ticket}` takes back:
//! `<uuid>_<offset>`, the uuid hyphenated, as the original server wrote it.
//!
//! report-apis reads a ticket with [`parse`], strictly. The collector holds a [`Ticket`]: text
//! checked once where it enters (the server's answer, the lock file's holder record, a
//! PostgreSQL row another host wrote, the state file) and used everywhere after, in a URL, a
//! file name, a journal line or `status` output, without being checked again. Text that fails
//! the check never becomes a `Ticket`; [`UnsafeTicket`] names it only escaped and cut short.

use std::fmt;

use uuid::Uuid;

/// The longest ticket a client takes. The server's own are 36 + 1 + at most 20 characters.
pub const MAX_LEN: usize = 200;

/// The ticket for the report starting at `offset`.
pub fn format(id: Uuid, offset: u64) -> String {
    format!("{}_{offset}", id.hyphenated())
}

/// Why a ticket cannot be read; the original server answered each with its own message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketError {
    /// Not `<uuid>_<offset>`, or the uuid is not in the hyphenated form.
    Id,
    /// The part after `_` is not an integer.
    Offset,
}

/// Reads a ticket as a client sent it. The offset may be negative here: that is well-formed,
/// but never issued, and the server answers it differently from a malformed one.
pub fn parse(ticket: &str) -> Result<(Uuid, i64), TicketError> {
    let mut parts = ticket.split('_');
    let (Some(id), Some(offset), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(TicketError::Id);
    };
    let offset = offset.parse::<i64>().map_err(|_| TicketError::Offset)?;
    // Only the hyphenated form the server hands out; the uuid crate would accept others.
    if id.len() != 36 {
        return Err(TicketError::Id);
    }
    let id = Uuid::try_parse(id).map_err(|_| TicketError::Id)?;
    Ok((id, offset))
}

/// Whether `text` is safe to take for a ticket: one short line of URL- and file-name-safe
/// characters, not starting with a dot. A client goes by this rather than [`parse`], so that a
/// server whose tickets look different but are harmless still works, while an error page or a
/// path never ends up in a URL or a file name.
pub fn is_safe(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !text.starts_with('.')
}

/// A ticket that passed [`is_safe`]: at most [`MAX_LEN`] bytes of `[A-Za-z0-9._-]`, not
/// starting with a dot, so it is one path component, one URL path segment and one plain word
/// in a log line. The only way to make one is [`Ticket::new`] (deserializing one checks too).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Ticket(String);

impl Ticket {
    /// Checks `text`; `Err` says what it was, escaped and cut short.
    pub fn new(text: &str) -> Result<Ticket, UnsafeTicket> {
        if is_safe(text) {
            Ok(Ticket(text.to_owned()))
        } else {
            Err(UnsafeTicket::of(text))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Read-only: a `&Ticket` is usable wherever text is read (a URL, a file name), and no
/// method of `str` can make it unsafe.
impl std::ops::Deref for Ticket {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Ticket {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Ticket {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl AsRef<str> for Ticket {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for Ticket {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Ticket, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ticket::new(&text).map_err(serde::de::Error::custom)
    }
}

/// Text offered as a ticket that is not safe to use as one. It keeps only what a log line may
/// show of it: its length and its first characters, escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{shown} ({len} bytes) is not a ticket this collector takes: it must be 1 to {MAX_LEN} characters of A-Z, a-z, 0-9, '-', '_' and '.', not starting with '.'"
)]
pub struct UnsafeTicket {
    /// The text, escaped and quoted ([`crate::shown::quoted`]).
    pub shown: String,
    /// Its length in bytes.
    pub len: usize,
}

impl UnsafeTicket {
    fn of(text: &str) -> UnsafeTicket {
        UnsafeTicket {
            shown: crate::shown::quoted(text, 64),
            len: text.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_formatted_ticket_parses_back_and_is_safe() {
        let id = Uuid::try_parse("123e4567-e89b-42d3-a456-426614174000").unwrap();
        let ticket = format(id, 42);
        assert_eq!(ticket, "123e4567-e89b-42d3-a456-426614174000_42");
        assert_eq!(parse(&ticket), Ok((id, 42)));
        assert!(is_safe(&ticket));
        assert!(is_safe(&format(id, i64::MAX as u64)));
    }

    #[test]
    fn tickets_are_safe_file_name_parts() {
        assert!(is_safe("8d2f7a9e-1c3b-4c2e-9a6f-0b1d2e3f4a5b_0"));
        assert!(!is_safe("../../etc/passwd"));
        assert!(!is_safe("<html>"));
        assert!(!is_safe(""));
    }

    #[test]
    fn hostile_tickets_never_become_tickets_and_are_shown_escaped() {
        let long = "a".repeat(MAX_LEN + 1);
        let huge = "b".repeat(10 << 20);
        for hostile in [
            "q/../../get_report/123e4567-e89b-42d3-a456-426614174000_0",
            "q\\..\\..\\x",
            "t?x=1#frag",
            "t\nINFO collected the report FAKE",
            "t\0nul",
            ".hidden",
            "",
            "%2e%2e",
            "t\u{202e}rtl",
            long.as_str(),
            huge.as_str(),
        ] {
            let err = Ticket::new(hostile).unwrap_err();
            assert_eq!(err.len, hostile.len());
            let message = err.to_string();
            assert!(
                message.chars().all(|c| !c.is_control()),
                "{message:?} holds a control character"
            );
            assert!(message.len() < 600, "{} bytes shown", message.len());
        }
        assert_eq!(
            Ticket::new("abc_1").unwrap().as_str(),
            "abc_1",
            "a safe ticket is kept as it is"
        );
    }

    #[test]
    fn deserializing_checks() {
        assert!(serde_json::from_str::<Ticket>("\"a/../b\"").is_err());
        assert_eq!(
            serde_json::from_str::<Ticket>("\"abc_1\"").unwrap(),
            Ticket::new("abc_1").unwrap()
        );
    }
}
