//! Integration tests: the real collector binary as processes, against the real report-apis on
//! loopback, scripted or hostile servers, a real `dbus-daemon`, a hostile file system and a
//! throw-away PostgreSQL cluster. One test binary, so everything links once; `util` holds the
//! fixtures.
//!
//! Tests that need root, PostgreSQL 15 or a mount namespace are `#[ignore = "why"]`: a plain
//! `cargo test` lists them as left out, and `make test` (as root) runs them with
//! `--include-ignored`, where a missing prerequisite fails them ([`util::prerequisite`]).
//! Tests that assert elapsed times or start crowds of processes take [`util::timing_guard`],
//! so they run one at a time.

mod bus;
mod conformance;
mod crash_points;
mod failover;
mod fence;
mod files;
mod hostile_server;
mod man_page;
mod postgres;
mod resume;
mod scenarios;
mod upgrade;
mod util;
