//! The fence between the collector and report-apis: each request of a run that holds a lock
//! carries the lock's id and the token of its acquisition in one header, [`HEADER`], and
//! report-apis refuses a request whose token is below the highest it has seen for that lock.
//! The server acknowledges each token it enforced with [`MARK_HEADER`]: the lock's mark after
//! the request.
//!
//! `Report-Fence: lock=<name>; id=<32 hex digits>; token=<epoch>.<count>`
//!
//! - `name` is the lock's name as the operator wrote it (`postgres.lock-name`, or the host name
//!   for a flock), percent-encoded so that any name is one line of visible ASCII; at most
//!   [`MAX_NAME_LEN`] bytes before encoding. It only labels the lock: the server tells locks
//!   apart by their id.
//! - `id` is the lock's namespace, made when the lock was first created and kept with it (the
//!   flock's token file, the PostgreSQL lock's row): tokens of different ids are never
//!   compared, so a recreated lock starts a fresh mark.
//! - `token` is the [`Token`] of the acquisition, compared epoch first.
//!
//! The parts come in this order, each once, separated by `"; "`; anything else is refused
//! whole, and so is a value longer than [`MAX_HEADER_LEN`]. A request carries the header once
//! or not at all.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use uuid::Uuid;

/// The request header that carries a run's fence (HTTP header names are case-insensitive;
/// the `http` crate wants them lowercase).
pub const HEADER: &str = "report-fence";

/// The response header by which report-apis says it enforced the request's fence: the lock's
/// mark after the request, `<epoch>.<count>`.
pub const MARK_HEADER: &str = "report-fence-mark";

/// The longest lock name, in bytes, as the collector's `postgres.lock-name` allows.
pub const MAX_NAME_LEN: usize = 200;

/// The longest header value read: a name of [`MAX_NAME_LEN`] bytes each percent-encoded, the
/// id and two numbers of 20 digits, with room to spare.
pub const MAX_HEADER_LEN: usize = 700;

/// What is left unencoded in a name: what URLs leave unreserved.
const NAME_ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One acquisition's token: a later acquisition of the same lock compares greater, the epoch
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Token {
    /// Compared first.
    pub epoch: u64,
    /// Compared when the epochs are equal.
    pub count: u64,
}

impl Token {
    pub fn new(epoch: u64, count: u64) -> Token {
        Token { epoch, count }
    }

    /// Reads `EPOCH.COUNT`, each a decimal of at most 20 digits, no sign, no spaces.
    pub fn parse(text: &str) -> Option<Token> {
        let (epoch, count) = text.split_once('.')?;
        Some(Token::new(decimal(epoch)?, decimal(count)?))
    }
}

/// `EPOCH.COUNT`.
impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.count)
    }
}

/// A decimal `u64` written only with digits (`u64::from_str` also takes a leading `+`).
fn decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A lock's name: 1 to [`MAX_NAME_LEN`] bytes of UTF-8 without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LockName(String);

impl LockName {
    /// `None` for an empty or too long name, or one with a control character (a journal
    /// line or a metric label shows it).
    pub fn new(name: &str) -> Option<LockName> {
        (!name.is_empty() && name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control))
            .then(|| LockName(name.to_owned()))
    }

    /// The name, cut at a character boundary to [`MAX_NAME_LEN`] bytes and with control
    /// characters replaced: for a name that comes from outside the operator's configuration
    /// (the host name of a flock).
    pub fn lossy(name: &str) -> LockName {
        let mut clean: String = name
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        while clean.len() > MAX_NAME_LEN {
            clean.pop();
        }
        if clean.is_empty() {
            clean.push('?');
        }
        LockName(clean)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a run's requests carry: which lock it holds and the token of its acquisition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub lock: LockName,
    /// The lock's namespace.
    pub id: Uuid,
    pub token: Token,
}

/// Why a [`HEADER`] value was refused; the server counts each as a bad request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceError {
    /// Longer than [`MAX_HEADER_LEN`], or not visible ASCII.
    Size,
    /// Not the three parts in order.
    Form,
    /// The name is empty, too long, not UTF-8 or holds a control character once decoded.
    Name,
    /// The id is not 32 lowercase hex digits.
    Id,
    /// The token is not `EPOCH.COUNT`.
    Token,
}

impl fmt::Display for FenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FenceError::Size => "longer than 700 bytes or not visible ASCII",
            FenceError::Form => "not \"lock=NAME; id=ID; token=EPOCH.COUNT\"",
            FenceError::Name => "the lock name is empty, longer than 200 bytes or not text",
            FenceError::Id => "the lock id is not 32 lowercase hexadecimal digits",
            FenceError::Token => "the token is not EPOCH.COUNT in decimal",
        })
    }
}

impl Fence {
    /// The header's value.
    pub fn header_value(&self) -> String {
        format!(
            "lock={}; id={}; token={}",
            utf8_percent_encode(self.lock.as_str(), NAME_ENCODED),
            self.id.simple(),
            self.token
        )
    }

    /// Reads a header's value, strictly: only what [`Fence::header_value`] writes.
    pub fn parse(value: &[u8]) -> Result<Fence, FenceError> {
        if value.len() > MAX_HEADER_LEN || !value.iter().all(|b| (0x20..0x7f).contains(b)) {
            return Err(FenceError::Size);
        }
        // Visible ASCII checked above.
        let value = std::str::from_utf8(value).map_err(|_| FenceError::Size)?;
        let mut parts = value.split("; ");
        let (Some(lock), Some(id), Some(token), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(FenceError::Form);
        };
        let (Some(lock), Some(id), Some(token)) = (
            lock.strip_prefix("lock="),
            id.strip_prefix("id="),
            token.strip_prefix("token="),
        ) else {
            return Err(FenceError::Form);
        };
        Ok(Fence {
            lock: parse_name(lock)?,
            id: parse_id(id)?,
            token: Token::parse(token).ok_or(FenceError::Token)?,
        })
    }
}

fn parse_name(encoded: &str) -> Result<LockName, FenceError> {
    // Only the characters the encoding leaves, and `%`.
    if !encoded
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%'))
    {
        return Err(FenceError::Name);
    }
    let name = percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|_| FenceError::Name)?;
    LockName::new(&name).ok_or(FenceError::Name)
}

/// A lock id as the collector writes it: `Uuid::simple`, lowercase.
pub fn parse_id(text: &str) -> Result<Uuid, FenceError> {
    if text.len() != 32 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(FenceError::Id);
    }
    Uuid::try_parse(text).map_err(|_| FenceError::Id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(name: &str) -> Fence {
        Fence {
            lock: LockName::new(name).unwrap(),
            id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            token: Token::new(2, 17),
        }
    }

    #[test]
    fn a_fence_reads_back_as_written() {
        let value = fence("report-collector").header_value();
        assert_eq!(
            value,
            "lock=report-collector; id=0123456789abcdef0123456789abcdef; token=2.17"
        );
        assert_eq!(
            Fence::parse(value.as_bytes()),
            Ok(fence("report-collector"))
        );
        for name in ["a b;c=d", "fleet/ä", "%41", &"x".repeat(MAX_NAME_LEN)] {
            let value = fence(name).header_value();
            assert!(value.len() <= MAX_HEADER_LEN, "{name}");
            assert_eq!(Fence::parse(value.as_bytes()), Ok(fence(name)), "{name}");
        }
        let longest = fence(&"ä".repeat(MAX_NAME_LEN / 2)).header_value();
        assert_eq!(
            Fence::parse(longest.as_bytes()).map(|f| f.lock.as_str().len()),
            Ok(MAX_NAME_LEN)
        );
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        let id = "0123456789abcdef0123456789abcdef";
        for (value, error) in [
            (format!("lock=a; id={id}; token=1.2; x=1"), FenceError::Form),
            (format!("id={id}; lock=a; token=1.2"), FenceError::Form),
            (format!("lock=a;id={id};token=1.2"), FenceError::Form),
            (format!("lock=; id={id}; token=1.2"), FenceError::Name),
            (format!("lock=a%0a; id={id}; token=1.2"), FenceError::Name),
            (format!("lock=a%ff; id={id}; token=1.2"), FenceError::Name),
            (format!("lock=a b; id={id}; token=1.2"), FenceError::Name),
            (
                format!("lock=a; id={}; token=1.2", id.to_uppercase()),
                FenceError::Id,
            ),
            ("lock=a; id=0123-4567; token=1.2".to_owned(), FenceError::Id),
            (format!("lock=a; id={id}; token=1"), FenceError::Token),
            (format!("lock=a; id={id}; token=+1.2"), FenceError::Token),
            (
                format!("lock=a; id={id}; token=1.18446744073709551616"),
                FenceError::Token,
            ),
            (format!("lock=a; id={id}; token=1.2\t"), FenceError::Size),
            (
                format!("lock={}; id={id}; token=1.2", "x".repeat(700)),
                FenceError::Size,
            ),
            (
                format!("lock={}; id={id}; token=1.2", "x".repeat(201)),
                FenceError::Name,
            ),
        ] {
            assert_eq!(Fence::parse(value.as_bytes()), Err(error), "{value}");
        }
    }

    #[test]
    fn the_epoch_is_compared_before_the_count() {
        assert!(Token::new(1, 1) > Token::new(0, u64::MAX));
        assert!(Token::new(2, 5) > Token::new(2, 4));
        assert_eq!(Token::new(3, 7).to_string(), "3.7");
        assert_eq!(Token::parse("3.7"), Some(Token::new(3, 7)));
        assert_eq!(Token::parse("3.-7"), None);
        assert_eq!(Token::parse("3.7.1"), None);
    }

    #[test]
    fn a_name_from_outside_is_made_safe() {
        assert_eq!(LockName::lossy("host\n1").as_str(), "host?1");
        assert_eq!(LockName::lossy("").as_str(), "?");
        assert_eq!(LockName::lossy(&"ä".repeat(150)).as_str().len(), 200);
    }
}
