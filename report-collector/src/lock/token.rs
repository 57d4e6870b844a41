//! The fencing token of one acquisition of the run lock: it only ever increases for that lock,
//! so whoever sees two of them can tell the later holder from an ended one.
//!
//! A token is a pair compared in order: an epoch, then a count. The flock's epoch rises with
//! each boot of the host (with every acquisition where the boot cannot be told) and its count
//! with every acquisition ([`super::flock::token_file`]); the PostgreSQL lock's count is its
//! row's `generation`, in epoch 0. Tokens compare only within one lock: the flock's token file
//! names its lock with an id of its own. Nothing outside the lock sends a token anywhere yet.

use std::fmt;

/// One acquisition's token; a later acquisition of the same lock compares greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
}

/// `EPOCH.COUNT`.
impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_is_compared_before_the_count() {
        assert!(Token::new(1, 1) > Token::new(0, u64::MAX));
        assert!(Token::new(2, 5) > Token::new(2, 4));
        assert_eq!(Token::new(3, 7).to_string(), "3.7");
    }
}
