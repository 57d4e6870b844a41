//! What `report-apis` and `report-collector` share, defined once so the two programs cannot
//! drift apart: the wire format between them ([`wire`], [`ticket`], [`fence`]), the logging setup
//! ([`logging`]), the exit codes ([`exit`]), how a configuration file is read and its mistakes
//! reported ([`config`]) and what `check-config` prints of it ([`check_config`]), how a file
//! another party may have replaced is read ([`files`]), and the journal's message IDs
//! ([`message_id`]).

// A function a reader can hold in their head: at most 60 lines of code (the threshold is in
// clippy.toml; blank and comment lines do not count). An exception is an
// `#[expect(clippy::too_many_lines, reason = "...")]`. Tests read top to bottom and are exempt.
#![warn(clippy::too_many_lines)]
#![cfg_attr(test, allow(clippy::too_many_lines))]

pub mod check_config;
pub mod config;
pub mod exit;
pub mod fence;
pub mod files;
pub mod logging;
#[cfg(feature = "test-util")]
pub mod man_page;
pub mod message_id;
pub mod shown;
pub mod ticket;
pub mod wire;
