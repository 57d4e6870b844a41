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
///
/// Returns whether readable lines go to stderr as well.
pub fn init(identifier: &str) -> bool {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = tracing_journald::layer().ok().map(|layer| {
        layer
            .with_field_prefix(None)
            .with_syslog_identifier(identifier.to_owned())
    });
    // Under systemd stderr already goes to the journal: writing it too would log twice.
    let to_stderr = journald.is_none() || std::env::var_os("JOURNAL_STREAM").is_none();
    let ansi = std::io::stderr().is_terminal();
    let stderr = to_stderr.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(move || OneLine { ansi })
            .with_ansi(ansi)
            .with_target(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .init();
    to_stderr
}

/// stderr, one line per event whatever the event holds: the formatter hands over each event
/// whole (one `write_all` of a line ending in `\n`), and a newline, carriage return, NUL or
/// other control character inside it is written escaped (`\n`, `\x00`), so text from outside
/// that slipped into a message can never start a line of its own. ESC is kept only when the
/// formatter colours a terminal.
#[derive(Debug)]
struct OneLine {
    ansi: bool,
}

impl std::io::Write for OneLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        let mut line = Vec::with_capacity(buf.len());
        escape_controls(body, self.ansi, &mut line);
        line.extend_from_slice(end);
        std::io::stderr().lock().write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Appends `bytes` to `out` with every control character but TAB (and ESC when `keep_esc`)
/// written as `\n`, `\r` or `\xNN`.
fn escape_controls(bytes: &[u8], keep_esc: bool, out: &mut Vec<u8>) {
    for &b in bytes {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b),
            0x1b if keep_esc => out.push(b),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_inside_a_line_are_escaped() {
        let mut out = Vec::new();
        super::escape_controls(b"a\nINFO forged\r\0\x1b[31m\tb", false, &mut out);
        assert_eq!(out, b"a\\nINFO forged\\r\\x00\\x1b[31m\tb");
        let mut out = Vec::new();
        super::escape_controls(b"\x1b[31m", true, &mut out);
        assert_eq!(out, b"\x1b[31m");
    }
}

/// Test support (feature `test-util`): the fields of the events logged on this thread, named
/// and rendered as the journald layer stores them (`message` becomes `MESSAGE`), so tests can
/// check a line's `MESSAGE_ID` and field set against the journal catalog.
///
/// One global subscriber, installed on first use, hands each event to the capture active on
/// its thread. (A per-thread `set_default` subscriber loses events when another test thread
/// registers the same callsite at the same moment: tracing caches a callsite's interest
/// globally.)
#[cfg(feature = "test-util")]
pub mod capture {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::fmt::Debug;
    use std::sync::{Arc, Mutex, Once};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::prelude::*;

    /// One logged event: field name to value.
    pub type Fields = BTreeMap<String, String>;

    /// The events logged on this thread (and on tasks of a current-thread runtime) from
    /// [`start`] until the guard is dropped.
    #[derive(Debug, Clone, Default)]
    pub struct Captured(Arc<Mutex<Vec<Fields>>>);

    impl Captured {
        pub fn events(&self) -> Vec<Fields> {
            self.0.lock().unwrap().clone()
        }

        /// The events whose `MESSAGE_ID` is `id`.
        pub fn with_id(&self, id: &str) -> Vec<Fields> {
            self.events()
                .into_iter()
                .filter(|e| e.get("MESSAGE_ID").map(String::as_str) == Some(id))
                .collect()
        }
    }

    thread_local! {
        static ACTIVE: RefCell<Option<Captured>> = const { RefCell::new(None) };
    }

    /// Captures what this thread logs until the guard is dropped.
    pub fn start() -> (Captured, Guard) {
        static GLOBAL: Once = Once::new();
        GLOBAL.call_once(|| {
            let subscriber = tracing_subscriber::registry().with(CaptureLayer);
            // Fails only when a subscriber is already global; nothing is captured then.
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
        let captured = Captured::default();
        ACTIVE.with(|active| *active.borrow_mut() = Some(captured.clone()));
        (captured, Guard(()))
    }

    /// Ends the capture of this thread when dropped.
    #[derive(Debug)]
    pub struct Guard(());

    impl Drop for Guard {
        fn drop(&mut self) {
            ACTIVE.with(|active| active.borrow_mut().take());
        }
    }

    struct CaptureLayer;

    impl<S: tracing::Subscriber> Layer<S> for CaptureLayer {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            ACTIVE.with(|active| {
                if let Some(captured) = active.borrow().as_ref() {
                    let mut fields = FieldsVisitor(Fields::new());
                    event.record(&mut fields);
                    captured.0.lock().unwrap().push(fields.0);
                }
            });
        }
    }

    struct FieldsVisitor(Fields);

    impl FieldsVisitor {
        fn insert(&mut self, field: &Field, value: String) {
            let name = match field.name() {
                "message" => "MESSAGE",
                name => name,
            };
            self.0.insert(name.to_owned(), value);
        }
    }

    impl Visit for FieldsVisitor {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.insert(field, value.to_owned());
        }

        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            self.insert(field, format!("{value:?}"));
        }
    }
}
