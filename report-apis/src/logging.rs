//! One logging setup: journald with structured fields when its socket exists, and readable
//! lines on stderr when not started by systemd (so a manual run shows them too).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The syslog identifier (`journalctl -t report-apis`).
pub const IDENTIFIER: &str = "report-apis";

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = tracing_journald::layer().ok().map(|layer| {
        layer
            .with_field_prefix(None)
            .with_syslog_identifier(IDENTIFIER.to_owned())
    });
    // Under systemd stderr already goes to the journal: writing it too would log twice.
    let stderr = (journald.is_none() || std::env::var_os("JOURNAL_STREAM").is_none()).then(|| {
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
