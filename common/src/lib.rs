//! What `report-apis` and `report-collector` share, defined once so the two programs cannot
//! drift apart: the wire format between them ([`wire`], [`ticket`]), the logging setup
//! ([`logging`]), the exit codes ([`exit`]), how a configuration file is read and its mistakes
//! reported ([`config`]) and what `check-config` prints of it ([`check_config`]), how a file
//! another party may have replaced is read ([`files`]), and the journal's message IDs
//! ([`message_id`]).

pub mod check_config;
pub mod config;
pub mod exit;
pub mod files;
pub mod logging;
#[cfg(feature = "test-util")]
pub mod man_page;
pub mod message_id;
pub mod shown;
pub mod ticket;
pub mod wire;
