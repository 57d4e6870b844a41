//! The fencing token of one acquisition of the run lock: it only ever increases for that lock,
//! so whoever sees two of them can tell the later holder from an ended one.
//!
//! A token is a pair compared in order: an epoch, then a count ([`Token`], defined with the
//! wire format it travels in, [`report_common::fence`]). The flock's epoch rises with each
//! boot of the host (with every acquisition where the boot cannot be told) and its count with
//! every acquisition ([`super::flock::token_file`]); the PostgreSQL lock's epoch is the
//! database's timeline when the token was issued and its count the row's `generation`
//! ([`super::postgres`]). Tokens compare only within one lock, named by its id: every request
//! of a run carries both to report-apis, which refuses a token below the highest it has seen.

pub use report_common::fence::Token;
