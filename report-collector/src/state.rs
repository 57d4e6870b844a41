//! The state file (`state-file`, `last-run.json`): the last run *and* the last collection,
//! kept apart so that skips never hide when a report was last collected, plus the first run
//! on record, from which a fresh install's grace period counts.
//!
//! Every run reads the file, puts itself on it and writes it back (atomically, by rename). The
//! file written by the first release (package 0.1.0-1, before the last collection was kept
//! apart) held only the last run (the [`LastRun`] fields at the top level); it is read as such,
//! and when that run collected, it is the last collection. A file that is neither (cut short,
//! garbage) is never silently replaced: the run that finds it moves it aside to
//! `<state-file>.unreadable` and says so, so nothing in it is lost. A file that cannot be read
//! at all (no permission, an I/O error) is left exactly as it is: the run still collects and
//! saves its report, and says that it is not on record and why; `status` reports the file.

use std::io;
use std::path::{Path, PathBuf};

use report_common::message_id;
use report_common::ticket::Ticket;
use serde::{Deserialize, Serialize};

use crate::client::FenceNote;
use crate::files::{self, Durability};
use crate::outcome::{Outcome, RunReport};
use crate::time::Timestamp;
use crate::time::serde::{seconds_or_none, unix};

/// What the state file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The first run on record (in this state file): a fresh install's grace period counts
    /// from it.
    #[serde(with = "moment")]
    pub first_run: Timestamp,
    pub last_run: LastRun,
    /// The last run that collected a report; kept across skips and failures.
    pub last_collection: Option<Collection>,
    /// What the report server last said of a run's fence (`enforced`, `not-acknowledged`);
    /// kept across runs that sent none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "fence_note"
    )]
    pub fence: Option<FenceNote>,
}

/// A fence note read back: one this version does not know reads as none.
fn fence_note<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<FenceNote>, D::Error> {
    Ok(Option::<FenceNote>::deserialize(d)?.filter(|note| *note != FenceNote::NotSent))
}

/// How the state file (and `status --json`) writes a point in time: `{"at": ..., "unix": ...}`,
/// readable (RFC 3339, UTC, whole seconds) and for computing (Unix seconds). `unix` is what is
/// read back; `at` is written as the time of that number, so the two never disagree.
pub mod moment {
    use serde::ser::SerializeStruct as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::time::Timestamp;

    pub fn serialize<S: Serializer>(at: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        let unix = at.unix_seconds();
        let mut moment = s.serialize_struct("Moment", 2)?;
        moment.serialize_field("at", &Timestamp::from_unix_seconds(unix).to_string())?;
        moment.serialize_field("unix", &unix)?;
        moment.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        /// Both fields must be there, as they always had to; `at` is not read further.
        #[derive(Deserialize)]
        struct Written {
            #[serde(rename = "at")]
            _at: String,
            unix: f64,
        }
        Written::deserialize(d).map(|written| Timestamp::from_unix_seconds(written.unix))
    }

    /// An optional moment, `null` for none (`status --json`'s `first_run`).
    pub fn serialize_option<S: Serializer>(
        at: &Option<Timestamp>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => serialize(at, s),
            None => s.serialize_none(),
        }
    }
}

/// The last collection: when it ended, which ticket, which report file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collection {
    /// When the run that collected ended (the report was saved just before).
    #[serde(with = "moment")]
    pub finished: Timestamp,
    #[serde(default, deserialize_with = "declined_ticket")]
    pub ticket: Option<Ticket>,
    /// When the ticket was requested (by this run, or by the run that left it), RFC 3339 UTC.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "seconds_or_none"
    )]
    pub ticket_requested: Option<Timestamp>,
    /// The run that left the ticket, when it was resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_pid: Option<u32>,
    pub report: PathBuf,
}

/// The last run, whatever its outcome. Also, exactly, the whole state file of the first
/// release (0.1.0-1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    pub outcome: String,
    pub exit_code: u8,
    /// RFC 3339 UTC, whole seconds; `None` when the file's does not read.
    #[serde(with = "seconds_or_none")]
    pub started: Option<Timestamp>,
    /// The same time in Unix seconds, which is what is computed with.
    #[serde(with = "unix")]
    pub started_unix: Timestamp,
    pub duration_seconds: f64,
    #[serde(default, deserialize_with = "declined_ticket")]
    pub ticket: Option<Ticket>,
    pub holder_pid: Option<u32>,
    pub policy: String,
    /// RFC 3339 UTC, whole seconds; `None` when the file's does not read.
    #[serde(with = "seconds_or_none")]
    pub slot: Option<Timestamp>,
    pub trigger: String,
    pub report: Option<PathBuf>,
    pub message: String,
    pub pid: u32,
    /// When the ticket was requested (by this run, or by the run that left it), RFC 3339 UTC.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "seconds_or_none"
    )]
    pub ticket_requested: Option<Timestamp>,
    /// The run whose unfinished ticket this run took over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_pid: Option<u32>,
    /// Tickets this run had the server cancel.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tickets_cancelled: u32,
}

/// A ticket read back from the state file: one that fails the check is declined (one
/// `VALUE_DECLINED` line) and reads as none, instead of refusing the whole file; the next
/// write leaves it out.
fn declined_ticket<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Ticket>, D::Error> {
    let text = <Option<std::borrow::Cow<'de, str>>>::deserialize(deserializer)?;
    Ok(text.and_then(|text| {
        crate::declined::ticket(&text, "the state file")
            .inspect_err(crate::declined::Declined::say)
            .ok()
    }))
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl LastRun {
    pub fn of(run: &RunReport) -> LastRun {
        LastRun {
            outcome: run.outcome.kind().to_owned(),
            exit_code: run.exit_code(),
            started: Some(run.started),
            started_unix: run.started,
            duration_seconds: run.duration.as_secs_f64(),
            ticket: run.ticket.clone(),
            holder_pid: run.holder_pid,
            policy: run.policy.as_str().to_owned(),
            slot: Some(run.slot),
            trigger: run.trigger.clone(),
            report: match &run.outcome {
                Outcome::Collected { report } => Some(report.clone()),
                _ => None,
            },
            message: run.message(),
            pid: std::process::id(),
            ticket_requested: run.tickets.requested,
            resumed_from_pid: run.tickets.resumed_from,
            tickets_cancelled: run.tickets.cancelled,
        }
    }

    /// When the run ended, as the sum of the two numbers the file holds (that sum is what the
    /// file has always held).
    fn finished(&self) -> Timestamp {
        Timestamp::from_unix_seconds(self.started_unix.unix_seconds() + self.duration_seconds)
    }

    /// The collection this run made, if it collected.
    fn collection(&self) -> Option<Collection> {
        let report = self
            .report
            .clone()
            .filter(|_| self.outcome == "collected")?;
        Some(Collection {
            finished: self.finished(),
            ticket: self.ticket.clone(),
            ticket_requested: self.ticket_requested,
            resumed_from_pid: self.resumed_from_pid,
            report,
        })
    }
}

/// Why the state file could not be read; the `Display` says which file, why, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the state file {} is not a regular file ({kind}); remove it or point state-file elsewhere",
        path.display()
    )]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error(
        "the state file {} is not a state file (cut short or overwritten: {reason}); the next run moves it aside to {}.unreadable and starts a new one",
        path.display(), path.display()
    )]
    Unreadable { path: PathBuf, reason: String },
}

impl StateError {
    pub fn path(&self) -> &Path {
        match self {
            StateError::Io { path, .. }
            | StateError::NotAFile { path, .. }
            | StateError::Unreadable { path, .. } => path,
        }
    }
}

pub use report_common::files::file_kind;

/// What `source`, an error opening or reading the state file at `path` (opened never
/// blocking, never through a final symbolic link, regular files only: `files::read_existing`),
/// says for `status` and the journal.
fn state_error(path: &Path, source: std::io::Error) -> StateError {
    match files::not_regular(&source) {
        Some(not) => StateError::NotAFile {
            path: path.to_owned(),
            kind: not.kind,
        },
        None => StateError::Io {
            path: path.to_owned(),
            source,
        },
    }
}

impl State {
    /// Reads the state file, in this version's format or the one before; `Ok(None)` when
    /// there is none yet.
    pub fn load(path: &Path) -> Result<Option<State>, StateError> {
        let bytes = match files::read_existing(path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(StateError::Unreadable {
                    path: path.to_owned(),
                    reason: e.to_string(),
                });
            }
            Err(source) => return Err(state_error(path, source)),
        };
        State::parse(&bytes)
            .map(Some)
            .map_err(|reason| StateError::Unreadable {
                path: path.to_owned(),
                reason,
            })
    }

    fn parse(bytes: &[u8]) -> Result<State, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if value.get("last_run").is_some() {
            return serde_json::from_value(value).map_err(|e| e.to_string());
        }
        // The previous version's file: the last run alone.
        let last_run: LastRun = serde_json::from_value(value).map_err(|e| e.to_string())?;
        Ok(State {
            first_run: last_run.started_unix,
            last_collection: last_run.collection(),
            last_run,
            fence: None,
        })
    }

    /// The state after `run`: the first run and, unless `run` collected, the last collection
    /// are carried over from `previous`.
    pub fn after(previous: Option<State>, run: &RunReport) -> State {
        let last_run = LastRun::of(run);
        let (first_run, last_collection, fence) = match previous {
            Some(previous) => (previous.first_run, previous.last_collection, previous.fence),
            None => (last_run.started_unix, None, None),
        };
        State {
            first_run,
            last_collection: last_run.collection().or(last_collection),
            last_run,
            fence: match run.fence {
                FenceNote::NotSent => fence,
                learned => Some(learned),
            },
        }
    }

    /// Writes the state file atomically (rename). Not fsynced: it is rewritten every run and
    /// a crash losing the newest one costs one run's record.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        files::write_atomically(path, &text, Durability::Renamed)
    }
}

/// Where an unreadable state file is moved.
pub fn unreadable_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".unreadable");
    PathBuf::from(name)
}

/// Puts `run` on the state file at `path` and returns the new state, whether or not it could
/// be written (the metrics file needs it either way). Problems are logged, never fatal: a run
/// is over by now.
pub fn record(path: &Path, run: &RunReport) -> State {
    record_over(path, State::load(path), run)
}

/// [`record`] once the state file at `path` has been read (or could not be): what each way of
/// failing to read it means for the file.
fn record_over(path: &Path, loaded: Result<Option<State>, StateError>, run: &RunReport) -> State {
    // `false` once saving would overwrite a file that could not be read nor moved aside.
    let (previous, may_save) = match loaded {
        Ok(previous) => (previous, true),
        Err(e) => (None, after_unread(path, e)),
    };
    let was = previous.as_ref().and_then(|previous| previous.fence);
    let state = State::after(previous, run);
    if state.fence == Some(FenceNote::NotAcknowledged) && was != state.fence {
        tracing::warn!(
            MESSAGE_ID = message_id::FENCE_NOT_ACKNOWLEDGED,
            "the report server did not acknowledge this run's fencing token (no Report-Fence-Mark in its answers: the original server, a report-apis without the fence, or one with [fence] enforce = false): a holder that lost the lock while paused can still have it issue or cancel a ticket; upgrade report-apis (said once, and in `report-collector status` while it lasts)"
        );
    }
    if may_save && let Err(e) = state.save(path) {
        tracing::warn!(
            MESSAGE_ID = message_id::STATE_FILE_PROBLEM,
            STATE_FILE = %path.display(),
            MOVED_TO = "",
            "cannot write the state file {}: {e}; `status` will not show this run",
            path.display()
        );
    }
    state
}

/// Deals with a state file at `path` that could not be read, and says so; whether this run's
/// state may be saved in its place.
fn after_unread(path: &Path, e: StateError) -> bool {
    match e {
        StateError::Unreadable { reason, .. } => move_aside(path, &reason),
        e @ StateError::NotAFile { .. } => {
            // Replacing it would silently undo what someone put there; say so instead.
            tracing::warn!(
                MESSAGE_ID = message_id::STATE_FILE_PROBLEM,
                STATE_FILE = %path.display(),
                MOVED_TO = "",
                "{e}; this run is not on record there"
            );
            false
        }
        StateError::Io { source, .. } => {
            // The file may well hold the last collection and the first run, and the error may
            // pass (a wrong owner, a failing disk): saving over it would lose them for good.
            // The report is saved already; only this run's record waits.
            leave_unread(path, &source);
            false
        }
    }
}

/// Moves a file that is not a state file aside, so that nothing in it is lost; whether it
/// moved (else saving would overwrite it).
fn move_aside(path: &Path, reason: &str) -> bool {
    let aside = unreadable_path(path);
    match std::fs::rename(path, &aside) {
        Ok(()) => {
            tracing::warn!(
                MESSAGE_ID = message_id::STATE_FILE_PROBLEM,
                STATE_FILE = %path.display(),
                MOVED_TO = %aside.display(),
                "the state file {} is not a state file (cut short or overwritten: {reason}); moved it to {} and started a new one, so `status` counts a fresh grace period from this run",
                path.display(),
                aside.display()
            );
            true
        }
        Err(e) => {
            tracing::warn!(
                MESSAGE_ID = message_id::STATE_FILE_PROBLEM,
                STATE_FILE = %path.display(),
                MOVED_TO = "",
                "the state file {} is not a state file (cut short or overwritten: {reason}) and cannot be moved aside ({e}); this run is not on record there: move or remove it",
                path.display()
            );
            false
        }
    }
}

/// Says that the state file at `path` could not be read (`source`) and is left as it is, with
/// what to do about it.
fn leave_unread(path: &Path, source: &io::Error) {
    let fix = if source.kind() == io::ErrorKind::PermissionDenied {
        format!(
            "give it to the user the collector runs as (the package's: chown report-collector:report-collector {})",
            path.display()
        )
    } else {
        "check the disk (journalctl -k)".to_owned()
    };
    tracing::warn!(
        MESSAGE_ID = message_id::STATE_FILE_PROBLEM,
        STATE_FILE = %path.display(),
        MOVED_TO = "",
        "cannot read the state file {}: {source}; it is left as it is, so its last collection and first run are kept, and this run is not on record there: {fix}; the next run records again",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lock::Policy;
    use crate::outcome::CancelSignal;

    pub(crate) fn run_at(outcome: Outcome, started_unix: u64) -> RunReport {
        RunReport {
            outcome,
            policy: Policy::Forbid,
            ticket: Some(crate::t("abc_0")),
            holder_pid: None,
            holder_host: None,
            slot: Timestamp::UNIX_EPOCH + Duration::from_secs(started_unix / 60 * 60),
            trigger: "manual".into(),
            started: Timestamp::UNIX_EPOCH + Duration::from_secs(started_unix),
            duration: Duration::from_millis(1500),
            tickets: Default::default(),
            fence: Default::default(),
        }
    }

    fn skipped() -> Outcome {
        Outcome::Skipped {
            skip: crate::outcome::Skip::LockHeld,
            reason: "busy".into(),
        }
    }

    fn collected() -> Outcome {
        Outcome::Collected {
            report: "/r/20240101T120000Z_abc_0.csv".into(),
        }
    }

    /// Byte for byte what the first release (0.1.0-1) wrote after a collection.
    const OLD_FORMAT: &str = r#"{
  "outcome": "collected",
  "exit_code": 0,
  "started": "2024-01-01T12:00:00Z",
  "started_unix": 1704110400.0,
  "duration_seconds": 5.25,
  "ticket": "abc_0",
  "holder_pid": null,
  "policy": "forbid",
  "slot": "2024-01-01T12:00:00Z",
  "trigger": "report-collector.timer",
  "report": "/var/lib/report-collector/reports/20240101T120005Z_abc_0.csv",
  "message": "collected the report for ticket abc_0 in 5.250s, saved as /var/lib/report-collector/reports/20240101T120005Z_abc_0.csv",
  "pid": 4242
}"#;

    /// Byte for byte what this version writes after a collection, including a start just
    /// before a whole second, whose Unix seconds round up to it (the readable `started` is
    /// the second it began in, `first_run` the time of the number).
    #[test]
    fn a_collection_is_written_as_it_always_was() {
        let started = Timestamp::UNIX_EPOCH + Duration::from_nanos(1_704_110_400_999_999_950);
        let mut run = run_at(collected(), 0);
        run.started = started;
        run.slot = Timestamp::UNIX_EPOCH + Duration::from_secs(1_704_110_400);
        run.duration = Duration::from_nanos(5_250_123_457);
        run.holder_pid = Some(9);
        run.tickets.requested =
            Some(Timestamp::UNIX_EPOCH + Duration::from_nanos(1_704_110_400_999_999_999));
        run.tickets.resumed_from = Some(7);
        let text = String::from_utf8(serde_json::to_vec_pretty(&State::after(None, &run)).unwrap())
            .unwrap();
        let expected = r#"{
  "first_run": {
    "at": "2024-01-01T12:00:01Z",
    "unix": 1704110401.0
  },
  "last_run": {
    "outcome": "collected",
    "exit_code": 0,
    "started": "2024-01-01T12:00:00Z",
    "started_unix": 1704110401.0,
    "duration_seconds": 5.250123457,
    "ticket": "abc_0",
    "holder_pid": 9,
    "policy": "forbid",
    "slot": "2024-01-01T12:00:00Z",
    "trigger": "manual",
    "report": "/r/20240101T120000Z_abc_0.csv",
    "message": "MESSAGE",
    "pid": PID,
    "ticket_requested": "2024-01-01T12:00:00Z",
    "resumed_from_pid": 7
  },
  "last_collection": {
    "finished": {
      "at": "2024-01-01T12:00:06Z",
      "unix": 1704110406.2501235
    },
    "ticket": "abc_0",
    "ticket_requested": "2024-01-01T12:00:00Z",
    "resumed_from_pid": 7,
    "report": "/r/20240101T120000Z_abc_0.csv"
  }
}"#
        .replace("MESSAGE", &run.message())
        .replace("PID", &std::process::id().to_string());
        assert_eq!(text, expected);
        // Read back and written again, nothing changes.
        let reread = State::parse(text.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(serde_json::to_vec_pretty(&reread).unwrap()).unwrap(),
            expected
        );
    }

    #[test]
    fn a_hostile_ticket_in_the_state_file_reads_as_none_and_is_declined_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last-run.json");
        let hostile = OLD_FORMAT.replace("\"abc_0\"", "\"q/../../x\\nFAKE\"");
        assert_ne!(hostile, OLD_FORMAT);
        std::fs::write(&path, hostile).unwrap();
        let (captured, guard) = report_common::logging::capture::start();
        let state = State::load(&path).unwrap().unwrap();
        drop(guard);
        assert_eq!(state.last_run.ticket, None);
        assert_eq!(state.last_collection.unwrap().ticket, None);
        let declined = captured.with_id(message_id::VALUE_DECLINED);
        assert_eq!(declined.len(), 1, "{:?}", captured.events());
        assert!(!declined[0]["MESSAGE"].contains('\n'), "{declined:?}");
    }

    #[test]
    fn the_previous_versions_file_is_read_and_its_collection_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last-run.json");
        std::fs::write(&path, OLD_FORMAT).unwrap();
        let state = State::load(&path).unwrap().unwrap();
        assert_eq!(state.last_run.pid, 4242);
        let collection = state.last_collection.clone().unwrap();
        assert_eq!(collection.finished.unix_seconds(), 1_704_110_405.25);
        assert_eq!(collection.ticket.as_deref(), Some("abc_0"));
        assert_eq!(state.first_run.unix_seconds(), 1_704_110_400.0);

        // A skip after the upgrade keeps that collection.
        let state = record(&path, &run_at(skipped(), 1_704_110_460));
        assert_eq!(state.last_run.outcome, "skipped");
        assert_eq!(state.last_collection, Some(collection.clone()));
        let reread = State::load(&path).unwrap().unwrap();
        assert_eq!(reread, state);
        assert_eq!(
            reread.last_collection.unwrap().finished.to_string(),
            collection.finished.to_string()
        );
    }

    #[test]
    fn an_old_file_of_a_skip_has_no_collection() {
        let text = OLD_FORMAT
            .replace("\"outcome\": \"collected\"", "\"outcome\": \"skipped\"")
            .replace(
                "\"report\": \"/var/lib/report-collector/reports/20240101T120005Z_abc_0.csv\"",
                "\"report\": null",
            );
        let state = State::parse(text.as_bytes()).unwrap();
        assert_eq!(state.last_collection, None);
    }

    #[test]
    fn skips_and_failures_never_hide_the_last_collection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/last-run.json");
        let first = record(&path, &run_at(skipped(), 1000));
        assert_eq!(first.last_collection, None);
        assert_eq!(first.first_run.unix_seconds(), 1000.0);
        record(&path, &run_at(collected(), 1060));
        record(&path, &run_at(skipped(), 1120));
        let last = record(&path, &run_at(Outcome::Cancelled(CancelSignal::Term), 1180));
        assert_eq!(last.last_run.outcome, "cancelled");
        assert_eq!(last.first_run.unix_seconds(), 1000.0);
        let collection = last.last_collection.unwrap();
        assert_eq!(collection.finished.unix_seconds(), 1061.5);
        assert_eq!(collection.finished.to_string(), "1970-01-01T00:17:41Z");
        assert_eq!(
            State::load(&path)
                .unwrap()
                .unwrap()
                .first_run
                .unix_seconds(),
            1000.0
        );
    }

    #[test]
    fn a_half_written_file_is_named_and_kept_aside_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last-run.json");
        let half = &OLD_FORMAT[..OLD_FORMAT.len() / 2];
        std::fs::write(&path, half).unwrap();
        let err = State::load(&path).unwrap_err();
        assert!(matches!(err, StateError::Unreadable { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("moves it aside"), "{message}");

        let (captured, guard) = report_common::logging::capture::start();
        let state = record(&path, &run_at(skipped(), 2000));
        drop(guard);
        let line = crate::outcome::the_line(&captured, message_id::STATE_FILE_PROBLEM);
        assert_eq!(line["STATE_FILE"], path.display().to_string());
        assert_eq!(
            line["MOVED_TO"],
            unreadable_path(&path).display().to_string()
        );
        assert_eq!(state.first_run.unix_seconds(), 2000.0);
        assert_eq!(
            std::fs::read_to_string(unreadable_path(&path)).unwrap(),
            half,
            "nothing lost"
        );
        assert_eq!(State::load(&path).unwrap().unwrap(), state);
    }

    #[test]
    fn a_state_file_that_fails_to_read_is_never_saved_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last-run.json");
        record(&path, &run_at(skipped(), 1000));
        record(&path, &run_at(collected(), 1060));
        let before = std::fs::read(&path).unwrap();
        for error in [nix::libc::EIO, nix::libc::EACCES] {
            let failed = Err(StateError::Io {
                path: path.clone(),
                source: io::Error::from_raw_os_error(error),
            });
            let state = record_over(&path, failed, &run_at(skipped(), 1120));
            assert_eq!(state.last_run.outcome, "skipped", "the run is still told");
            assert_eq!(std::fs::read(&path).unwrap(), before, "os error {error}");
        }
        let kept = State::load(&path).unwrap().unwrap();
        assert_eq!(kept.first_run.unix_seconds(), 1000.0);
        assert_eq!(
            kept.last_collection.unwrap().finished.unix_seconds(),
            1061.5
        );
    }

    #[test]
    fn garbage_and_valid_json_of_another_shape_are_unreadable() {
        for text in ["\0\0\0garbage", "{}", "[1, 2]", "{\"last_run\": 3}"] {
            assert!(State::parse(text.as_bytes()).is_err(), "{text}");
        }
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last-run.json");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = State::load(&path).unwrap_err();
        assert!(
            matches!(err, StateError::NotAFile { kind: "a FIFO", .. }),
            "{err}"
        );
    }

    #[test]
    fn no_file_is_no_state() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(State::load(&dir.path().join("none.json")).unwrap(), None);
    }
}
