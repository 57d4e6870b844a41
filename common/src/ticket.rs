//! The ticket `/request_report` hands out and `/get_report/{ticket}` takes back:
//! `<uuid>_<offset>`, the uuid hyphenated, as the original server wrote it.

use uuid::Uuid;

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
        && text.len() <= 200
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !text.starts_with('.')
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
}
