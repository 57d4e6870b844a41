//! The collector's stderr lines, read as evidence: when each was written, and whether it says
//! the run acted against the report server. Only the collector's own words are used, never
//! the harness's idea of what the run was doing.
//!
//! A line is `<RFC 3339 UTC time>  <LEVEL> <message> [FIELD=value ...]` (tracing's plain
//! formatter, which the collector uses when `JOURNAL_STREAM` is unset).

use std::time::SystemTime;

/// One parsed stderr line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub at: SystemTime,
    pub level: String,
    pub text: String,
    pub kind: Kind,
}

/// What a line tells about the run's dealings with the report server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The run has a ticket to collect: it got one, resumes one, or found its report saved.
    Start,
    /// A request to the report server was answered or attempted (a poll, a retry, a cancel).
    Action,
    /// The decision line, written once at the end of every run.
    Decision(Decision),
    /// Anything else (the lock, the configuration, the database).
    Other,
}

/// The fields of the decision line that the checks use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: String,
    /// Why a run skipped (`lock-held`, `late`, `slot-taken`, ...).
    pub skip: Option<String>,
    pub slot: Option<String>,
    pub ticket: Option<String>,
}

impl Decision {
    pub fn collected(&self) -> bool {
        self.outcome == "collected"
    }
}

/// Phrases of lines written right after the report server answered, or failed to answer, one
/// request of this run.
const ACTIONS: &[&str] = &[
    "report not ready; polling again",
    "the server no longer knows ticket",
    "(requesting a ticket); retrying in",
    "(waiting for the report of ticket",
    "cancelled ticket",
    "cannot cancel ticket",
    "the server cannot cancel tickets",
    "did not answer the cancel of ticket",
];

const STARTS: &[&str] = &["got ticket ", "resuming ticket ", "is already saved as "];

/// Parses one line; `None` for a line that does not start with a time stamp (a report's CSV
/// echoed on stdout never comes here, but a panic message might).
pub fn parse(raw: &str) -> Option<Line> {
    let raw = raw.trim_end();
    let (stamp, rest) = raw.split_once(' ')?;
    let at = humantime::parse_rfc3339(stamp).ok()?;
    let rest = rest.trim_start();
    let (level, text) = rest.split_once(' ').unwrap_or((rest, ""));
    let text = text.trim_start().to_owned();
    let kind = classify(&text);
    Some(Line {
        at,
        level: level.to_owned(),
        text,
        kind,
    })
}

fn classify(text: &str) -> Kind {
    if let Some(outcome) = field(text, "OUTCOME") {
        return Kind::Decision(Decision {
            outcome,
            skip: field(text, "SKIP").filter(|s| !s.is_empty()),
            slot: field(text, "SLOT").filter(|s| !s.is_empty()),
            ticket: field(text, "TICKET").filter(|s| !s.is_empty()),
        });
    }
    if STARTS.iter().any(|p| text.contains(p)) {
        return Kind::Start;
    }
    if ACTIONS.iter().any(|p| text.contains(p)) {
        return Kind::Action;
    }
    Kind::Other
}

/// The value of ` NAME=value` (or `NAME="value"`) in a formatted line.
pub fn field(text: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=");
    let start = text.find(&key)? + key.len();
    let rest = &text[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted.find('"').unwrap_or(quoted.len());
        Some(quoted[..end].to_owned())
    } else {
        let end = rest.find(' ').unwrap_or(rest.len());
        Some(rest[..end].to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn time_level_and_text_are_split() {
        let line = parse("2026-12-02T06:50:00.250000Z  INFO got ticket abc_0; polling for its report TICKET=abc_0").unwrap();
        assert_eq!(
            line.at,
            UNIX_EPOCH + Duration::from_millis(1_796_194_200_250)
        );
        assert_eq!(line.level, "INFO");
        assert!(line.text.starts_with("got ticket abc_0"));
        assert_eq!(line.kind, Kind::Start);
    }

    #[test]
    fn lines_without_a_time_stamp_are_not_evidence() {
        assert_eq!(parse("thread 'main' panicked at src/main.rs"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("timestamp,data"), None);
    }

    #[test]
    fn polls_retries_and_cancels_are_actions() {
        for text in [
            "DEBUG report not ready; polling again in 200ms TICKET=a_0",
            " WARN connection refused (requesting a ticket); retrying in 500ms",
            " WARN timed out (waiting for the report of ticket a_0); retrying in 1s",
            " WARN the server no longer knows ticket a_0 (404, it may have restarted)",
            " INFO cancelled ticket a_0 on the server: why",
        ] {
            let line = parse(&format!("2026-12-02T06:50:00Z {text}")).unwrap();
            assert_eq!(line.kind, Kind::Action, "{text}");
        }
        let line = parse("2026-12-02T06:50:00Z  INFO lock acquired").unwrap();
        assert_eq!(line.kind, Kind::Other);
    }

    #[test]
    fn resuming_or_finding_a_ticket_saved_starts_a_collection() {
        for text in [
            " INFO resuming ticket a_0, which pid 1 left unfinished (requested 2s ago)",
            " INFO the report of ticket a_0, which pid 1 left unfinished, is already saved as /r/x.csv: that run",
        ] {
            let line = parse(&format!("2026-12-02T06:50:00Z {text}")).unwrap();
            assert_eq!(line.kind, Kind::Start, "{text}");
        }
    }

    #[test]
    fn the_decision_line_wins_over_its_message() {
        let raw = "2026-12-02T06:50:01.5Z  INFO collected: got ticket a_0 and saved it MESSAGE_ID=\"x\" OUTCOME=\"collected\" SKIP=\"\" TICKET=\"a_0\" POLICY=\"wait\" HOLDER_PID= SLOT=2026-12-02T06:50:00Z DURATION=1.500";
        let line = parse(raw).unwrap();
        assert_eq!(
            line.kind,
            Kind::Decision(Decision {
                outcome: "collected".into(),
                skip: None,
                slot: Some("2026-12-02T06:50:00Z".into()),
                ticket: Some("a_0".into()),
            })
        );
        let raw =
            "2026-12-02T06:50:01Z  WARN skipped OUTCOME=skipped TICKET= SLOT=2026-12-02T06:50:00Z";
        let Kind::Decision(d) = parse(raw).unwrap().kind else {
            panic!("not a decision")
        };
        assert!(!d.collected());
        assert_eq!(d.ticket, None);
    }
}
