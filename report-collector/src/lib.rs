//! report-collector: the periodic job that collects one report from report-apis per run,
//! never overlapping a previous run (a lock held for the whole run, four policies for a busy
//! lock), skipping timer starts that come too late after their slot, and putting every
//! decision on record (journal fields, state file, Prometheus textfile, exit code).
//!
//! [`run::run`] is one run, as a pipeline of steps; [`commands`] makes the lock the
//! configuration names and does a run, `status` or `check-config` with it. `main.rs` only
//! parses the command line, sets up logging, loads the configuration and builds the runtime,
//! as report-apis' does.

// A function a reader can hold in their head: at most 60 lines of code (the threshold is in
// clippy.toml; blank and comment lines do not count). An exception is an
// `#[expect(clippy::too_many_lines, reason = "...")]`. Tests read top to bottom and are exempt.
#![warn(clippy::too_many_lines)]
#![cfg_attr(test, allow(clippy::too_many_lines))]

pub mod client;
pub mod commands;
pub mod config;
pub mod declined;
pub mod files;
pub mod identity;
pub mod lock;
pub mod metrics;
pub mod outcome;
pub mod report;
pub mod run;
pub mod schedule;
pub mod state;
pub mod status;
pub mod store;
pub mod systemd;
pub mod time;

/// A ticket for a test, known to be safe.
#[cfg(test)]
pub(crate) fn t(text: &str) -> report_common::ticket::Ticket {
    report_common::ticket::Ticket::new(text).expect("a test ticket is safe")
}
