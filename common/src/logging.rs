//! The one logging setup: structured records to journald whenever its socket exists (manual
//! runs included), field names exactly as written (no `F_` prefix), and readable lines on
//! stderr when not started by systemd (`JOURNAL_STREAM` unset) or when journald is absent.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// Installs the global subscriber. `RUST_LOG` overrides the default level (info).
///
/// `identifier` is the syslog identifier: `journalctl -t <identifier>` finds every line, even
/// those journald could not attribute to the unit (processes that exit at once).
pub fn init(identifier: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = tracing_journald::layer().ok().map(|layer| {
        layer
            .with_field_prefix(None)
            .with_syslog_identifier(identifier.to_owned())
    });
    // Under systemd stderr already goes to the journal: writing it too would log twice.
    let to_stderr = journald.is_none() || std::env::var_os("JOURNAL_STREAM").is_none();
    let stderr = to_stderr.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .init();
}
