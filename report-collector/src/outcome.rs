//! How a run ended (collected, skipped, failed, cancelled), and the one place that turns that
//! into a decision line in the journal and an exit code (the state file is `state.rs`).

use std::path::PathBuf;
use std::time::Duration;

use report_common::ticket::Ticket;
use report_common::{exit, message_id};

use crate::client::FenceNote;
use crate::lock::policy::Policy;
use crate::time::Timestamp;

/// The signal that cancelled a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelSignal {
    Term,
    Int,
}

impl CancelSignal {
    pub fn name(self) -> &'static str {
        match self {
            CancelSignal::Term => "SIGTERM",
            CancelSignal::Int => "SIGINT",
        }
    }
}

/// Why a run skipped itself: kinds an operator answers differently, so each has its own
/// `MESSAGE_ID` and `SKIP` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Another run holds the lock (`forbid`), the wait for it timed out (`wait`), or its holder
    /// could not be confirmed (`replace`).
    LockHeld,
    /// A timer start later than `starting-deadline` after its slot.
    Late,
    /// Another host sharing the PostgreSQL lock claimed this slot first.
    SlotTaken,
}

/// A skip's properties: its row in [`Skip::row`].
struct SkipRow {
    message_id: &'static str,
    /// The value of the `SKIP` journal field.
    value: &'static str,
    exit_code: u8,
}

impl Skip {
    /// Every kind of skip.
    pub const ALL: [Skip; 3] = [Skip::LockHeld, Skip::Late, Skip::SlotTaken];

    /// The one table of the skips' properties: a kind added to [`Skip`] is a row added here.
    const fn row(self) -> SkipRow {
        match self {
            Skip::LockHeld => SkipRow {
                message_id: message_id::SKIPPED_LOCK_HELD,
                value: "lock-held",
                exit_code: exit::TEMPFAIL,
            },
            Skip::Late => SkipRow {
                message_id: message_id::SKIPPED_LATE,
                value: "late",
                exit_code: exit::TEMPFAIL,
            },
            Skip::SlotTaken => SkipRow {
                message_id: message_id::SKIPPED_SLOT_TAKEN,
                value: "slot-taken",
                exit_code: exit::TEMPFAIL,
            },
        }
    }

    /// The value of the `SKIP` journal field.
    pub const fn as_str(self) -> &'static str {
        self.row().value
    }

    /// The journal's `MESSAGE_ID` of the decision line.
    pub const fn message_id(self) -> &'static str {
        self.row().message_id
    }

    /// EX_TEMPFAIL: nothing went wrong, and report-collector.service counts it as success.
    pub const fn exit_code(self) -> u8 {
        self.row().exit_code
    }
}

/// Why a run failed: kinds that systemd, scripts and an operator tell apart, so each has its
/// own exit code and `MESSAGE_ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Any other failure: the server, an answer, the disk, the lock file.
    Run,
    /// The PostgreSQL lock's database could not be reached or refused this collector (at the
    /// start, or claiming the slot); nothing was collected.
    DatabaseUnavailable,
    /// The PostgreSQL lock's lease ran out while the run held it; nothing was saved.
    LeaseLost,
    /// report-apis refused the run's fencing token (either backend): a later holder has the
    /// lock; nothing was saved.
    Fenced,
}

/// A failure's properties: its row in [`Failure::row`].
struct FailureRow {
    message_id: &'static str,
    exit_code: u8,
}

impl Failure {
    /// Every kind of failure.
    pub const ALL: [Failure; 4] = [
        Failure::Run,
        Failure::DatabaseUnavailable,
        Failure::LeaseLost,
        Failure::Fenced,
    ];

    /// The one table of the failures' properties: a kind added to [`Failure`] is a row added
    /// here.
    const fn row(self) -> FailureRow {
        match self {
            Failure::Run => FailureRow {
                message_id: message_id::FAILED,
                exit_code: exit::FAILURE,
            },
            Failure::DatabaseUnavailable => FailureRow {
                message_id: message_id::DATABASE_UNAVAILABLE,
                exit_code: exit::UNAVAILABLE,
            },
            Failure::LeaseLost => FailureRow {
                message_id: message_id::LEASE_LOST,
                exit_code: exit::LEASE_LOST,
            },
            Failure::Fenced => FailureRow {
                message_id: message_id::FENCED,
                exit_code: exit::LEASE_LOST,
            },
        }
    }

    /// The journal's `MESSAGE_ID` of the decision line.
    pub const fn message_id(self) -> &'static str {
        self.row().message_id
    }

    /// The exit code (documented in `--help` and the man page): 1, 69 or 79 (a lost lock,
    /// whether its lease ran out or report-apis refused its token).
    pub const fn exit_code(self) -> u8 {
        self.row().exit_code
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Collected { report: PathBuf },
    Skipped { skip: Skip, reason: String },
    Failed { failure: Failure, error: String },
    Cancelled(CancelSignal),
}

impl Outcome {
    /// The value of the `OUTCOME` journal field and of the metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Collected { .. } => "collected",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Failed { .. } => "failed",
            Outcome::Cancelled(_) => "cancelled",
        }
    }

    /// The journal's `MESSAGE_ID` of the decision line: one per kind, skips and failures
    /// split by why ([`Skip::message_id`], [`Failure::message_id`]).
    pub fn message_id(&self) -> &'static str {
        match self {
            Outcome::Collected { .. } => message_id::COLLECTED,
            Outcome::Skipped { skip, .. } => skip.message_id(),
            Outcome::Failed { failure, .. } => failure.message_id(),
            Outcome::Cancelled(_) => message_id::CANCELLED,
        }
    }

    /// The value of the `SKIP` journal field: empty unless the run skipped itself.
    pub fn skip(&self) -> &'static str {
        match self {
            Outcome::Skipped { skip, .. } => skip.as_str(),
            _ => "",
        }
    }

    /// The exit code (documented in `--help` and the man page): 0 collected, 75 skipped,
    /// 1, 69 or 79 failed ([`Failure::exit_code`]), 130/143 cancelled by SIGINT/SIGTERM.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Collected { .. } => exit::SUCCESS,
            Outcome::Skipped { skip, .. } => skip.exit_code(),
            Outcome::Failed { failure, .. } => failure.exit_code(),
            Outcome::Cancelled(CancelSignal::Int) => exit::SIGINT,
            Outcome::Cancelled(CancelSignal::Term) => exit::SIGTERM,
        }
    }
}

/// Every outcome kind, in the order metrics list them.
pub const KINDS: [&str; 4] = ["collected", "skipped", "failed", "cancelled"];

/// What a run did with tickets besides asking for one: resumed one an earlier run left, had
/// the server cancel some.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TicketNotes {
    /// When the run's ticket was requested: by this run, or by the run that left it.
    pub requested: Option<Timestamp>,
    /// The run that left the ticket this run took over, when it took one over.
    pub resumed_from: Option<u32>,
    /// Tickets this run had the server cancel (confirmed by the server).
    pub cancelled: u32,
}

/// A finished run with everything the journal, the state file and the metrics need.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: Outcome,
    pub policy: Policy,
    pub ticket: Option<Ticket>,
    /// The other run that held the lock (skipped for it, waited for it, or replaced it).
    pub holder_pid: Option<u32>,
    /// Its host, when the lock is shared by several hosts (or the host that took the slot).
    pub holder_host: Option<String>,
    pub slot: Timestamp,
    /// `manual` or the timer unit.
    pub trigger: String,
    pub started: Timestamp,
    pub duration: Duration,
    pub tickets: TicketNotes,
    /// What the report server's answers said of the run's fence.
    pub fence: FenceNote,
}

impl RunReport {
    /// When the run ended.
    pub fn ended(&self) -> Timestamp {
        self.started
            .checked_add(self.duration)
            .unwrap_or(self.started)
    }

    /// How old the run's ticket was when the run ended (from its request, by whichever run).
    pub fn ticket_age(&self) -> Option<Duration> {
        let requested = self.tickets.requested?;
        Some(self.ended().saturating_duration_since(requested))
    }

    /// Whether the run collected a ticket an earlier run left.
    pub fn resumed_collection(&self) -> bool {
        matches!(self.outcome, Outcome::Collected { .. }) && self.tickets.resumed_from.is_some()
    }

    pub fn exit_code(&self) -> u8 {
        self.outcome.exit_code()
    }

    /// The human sentence of the decision line; a run started by hand says so.
    pub fn message(&self) -> String {
        let sentence = self.sentence();
        if self.trigger == "manual" {
            format!("{sentence} (started by hand)")
        } else {
            sentence
        }
    }

    fn sentence(&self) -> String {
        let took = format!("{:.3}s", self.duration.as_secs_f64());
        match &self.outcome {
            Outcome::Collected { report } => format!(
                "collected the report for ticket {} in {took}, saved as {}{}{}",
                self.ticket.as_ref().map_or("?", Ticket::as_str),
                report.display(),
                self.holder_pid
                    .and_then(|pid| self.policy.after_holder(pid))
                    .unwrap_or_default(),
                match (self.tickets.resumed_from, self.ticket_age()) {
                    (Some(pid), Some(age)) => format!(
                        ", resuming the ticket pid {pid} left, requested {} before",
                        humantime::format_duration(crate::time::round_ms(age))
                    ),
                    (Some(pid), None) => format!(", resuming the ticket pid {pid} left"),
                    _ => String::new(),
                }
            ),
            Outcome::Skipped { reason, .. } => format!("skipped this run: {reason}"),
            Outcome::Failed { error, .. } => format!("run failed after {took}: {error}"),
            Outcome::Cancelled(signal) => format!(
                "run cancelled by {} after {took}{}; nothing partial was saved",
                signal.name(),
                self.ticket
                    .as_ref()
                    .map(|t| format!(" while collecting ticket {t}"))
                    .unwrap_or_default()
            ),
        }
    }

    /// Logs the decision line with the journal fields MESSAGE_ID (one per kind, see
    /// [`Outcome::message_id`]), OUTCOME, SKIP, TICKET, POLICY, HOLDER_PID, HOLDER_HOST (the holder's host, for the PostgreSQL lock; or the host that took the slot), SLOT, DURATION
    /// (seconds, millisecond precision), TRIGGER, RESUMED_FROM_PID (the run whose ticket this
    /// one took over) and TICKET_AGE (seconds from the ticket's request to the run's end). Every field is always there, empty when it
    /// does not apply: the journal catalog's explanation substitutes them (`@TICKET@`), and
    /// `journalctl -x` prints a missing field's bare name instead.
    pub fn log(&self) {
        let message_id = self.outcome.message_id();
        let outcome = self.outcome.kind();
        let skip = self.outcome.skip();
        let ticket = self.ticket.as_ref().map_or("", Ticket::as_str);
        let policy = self.policy.as_str();
        let holder_pid = self.holder_pid.map(|p| p.to_string()).unwrap_or_default();
        let holder_host = self.holder_host.as_deref().unwrap_or("");
        let slot = self.slot.to_string();
        let duration = format!("{:.3}", self.duration.as_secs_f64());
        let trigger = self.trigger.as_str();
        let resumed_from = self
            .tickets
            .resumed_from
            .map(|p| p.to_string())
            .unwrap_or_default();
        let ticket_age = self
            .ticket_age()
            .map(|age| format!("{:.3}", age.as_secs_f64()))
            .unwrap_or_default();
        let message = self.message();
        macro_rules! decision {
            ($level:ident) => {
                tracing::$level!(
                    MESSAGE_ID = message_id,
                    OUTCOME = outcome,
                    SKIP = skip,
                    TICKET = ticket,
                    POLICY = policy,
                    HOLDER_PID = %holder_pid,
                    HOLDER_HOST = holder_host,
                    SLOT = %slot,
                    DURATION = %duration,
                    TRIGGER = trigger,
                    RESUMED_FROM_PID = %resumed_from,
                    TICKET_AGE = %ticket_age,
                    "{message}"
                )
            };
        }
        match self.outcome {
            Outcome::Collected { .. } => decision!(info),
            Outcome::Skipped { .. } | Outcome::Cancelled(_) => decision!(warn),
            Outcome::Failed { .. } => decision!(error),
        }
    }
}

/// Test support: the one line of `captured` with MESSAGE_ID `id`, checked to carry every
/// field that `id`'s catalog entry names (`journalctl -x` prints a missing one's bare name).
#[cfg(test)]
pub(crate) fn the_line(
    captured: &report_common::logging::capture::Captured,
    id: &str,
) -> report_common::logging::capture::Fields {
    const CATALOG: &str =
        include_str!("../../packaging/debian/report-collector/report-collector.catalog");
    let lines = captured.with_id(id);
    assert_eq!(lines.len(), 1, "lines with {id}: {:?}", captured.events());
    let line = lines.into_iter().next().unwrap_or_default();
    for field in message_id::placeholders(CATALOG, id) {
        assert!(
            line.contains_key(&field),
            "catalog entry {id} uses @{field}@, which the line lacks: {line:?}"
        );
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcome: Outcome) -> RunReport {
        RunReport {
            outcome,
            policy: Policy::Forbid,
            ticket: Some(crate::t("abc_0")),
            holder_pid: None,
            holder_host: None,
            slot: Timestamp::UNIX_EPOCH,
            trigger: "manual".into(),
            started: Timestamp::UNIX_EPOCH,
            duration: Duration::from_millis(1500),
            tickets: TicketNotes::default(),
            fence: Default::default(),
        }
    }

    #[test]
    fn each_outcome_has_its_exit_code() {
        let cases = [
            (Outcome::Collected { report: "r".into() }, 0, "collected"),
            (
                Outcome::Skipped {
                    skip: Skip::LockHeld,
                    reason: "busy".into(),
                },
                75,
                "skipped",
            ),
            (
                Outcome::Failed {
                    error: "down".into(),
                    failure: Failure::Run,
                },
                1,
                "failed",
            ),
            (Outcome::Cancelled(CancelSignal::Int), 130, "cancelled"),
            (Outcome::Cancelled(CancelSignal::Term), 143, "cancelled"),
        ];
        for (outcome, code, kind) in cases {
            assert_eq!(outcome.exit_code(), code);
            assert_eq!(outcome.kind(), kind);
        }
    }

    const CATALOG: &str =
        include_str!("../../packaging/debian/report-collector/report-collector.catalog");

    fn placeholders(id: &str) -> Vec<String> {
        message_id::placeholders(CATALOG, id)
    }

    #[test]
    fn each_skip_and_failure_has_its_own_message_id_in_the_catalog() {
        let ids: Vec<&str> = Skip::ALL
            .map(Skip::message_id)
            .into_iter()
            .chain(Failure::ALL.map(Failure::message_id))
            .collect();
        let distinct: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len(), "{ids:?}");
        for id in ids {
            // Panics when the catalog has no entry for it.
            placeholders(id);
        }
        let skip_values: std::collections::BTreeSet<&str> = Skip::ALL.map(Skip::as_str).into();
        assert_eq!(skip_values.len(), Skip::ALL.len());
        // A lost lock is one exit code, 79, whether its lease ran out or report-apis refused
        // its token; the MESSAGE_ID tells the two apart.
        let failure_codes: std::collections::BTreeSet<u8> =
            Failure::ALL.map(Failure::exit_code).into();
        assert_eq!(failure_codes, [1, 69, 79].into());
        assert_eq!(Failure::Fenced.exit_code(), Failure::LeaseLost.exit_code());
    }

    #[test]
    fn each_decision_line_carries_its_message_id_and_every_field() {
        use crate::run::RunError;

        let missed = RunError::MissedSlot {
            slot: Timestamp::UNIX_EPOCH,
            late_by: Duration::from_secs(25),
            starting_deadline: Duration::from_secs(10),
        };
        let cases = [
            (
                Outcome::Collected { report: "r".into() },
                message_id::COLLECTED,
                "",
            ),
            (
                Outcome::Skipped {
                    skip: Skip::LockHeld,
                    reason: "busy".into(),
                },
                message_id::SKIPPED_LOCK_HELD,
                "lock-held",
            ),
            (missed.outcome(), message_id::SKIPPED_LATE, "late"),
            (
                Outcome::Skipped {
                    skip: Skip::SlotTaken,
                    reason: "host b took it".into(),
                },
                message_id::SKIPPED_SLOT_TAKEN,
                "slot-taken",
            ),
            (
                Outcome::Failed {
                    error: "down".into(),
                    failure: Failure::Run,
                },
                message_id::FAILED,
                "",
            ),
            (
                Outcome::Failed {
                    error: "cannot reach the database".into(),
                    failure: Failure::DatabaseUnavailable,
                },
                message_id::DATABASE_UNAVAILABLE,
                "",
            ),
            (
                Outcome::Failed {
                    error: "lost the lease".into(),
                    failure: Failure::LeaseLost,
                },
                message_id::LEASE_LOST,
                "",
            ),
            (
                Outcome::Cancelled(CancelSignal::Term),
                message_id::CANCELLED,
                "",
            ),
        ];
        for (outcome, id, skip) in cases {
            let (captured, guard) = report_common::logging::capture::start();
            report(outcome.clone()).log();
            drop(guard);
            let events = captured.events();
            assert_eq!(events.len(), 1, "{events:?}");
            let line = &events[0];
            assert_eq!(line["MESSAGE_ID"], id, "{outcome:?}");
            assert_eq!(line["OUTCOME"], outcome.kind());
            assert_eq!(line["SKIP"], skip);
            assert_eq!(
                line["HOLDER_PID"], "",
                "a field that does not apply is empty"
            );
            // The stable field set (crate README, Journal): every one, always.
            let names: Vec<&str> = line.keys().map(String::as_str).collect();
            assert_eq!(
                names,
                [
                    "DURATION",
                    "HOLDER_HOST",
                    "HOLDER_PID",
                    "MESSAGE",
                    "MESSAGE_ID",
                    "OUTCOME",
                    "POLICY",
                    "RESUMED_FROM_PID",
                    "SKIP",
                    "SLOT",
                    "TICKET",
                    "TICKET_AGE",
                    "TRIGGER"
                ]
            );
            // journalctl -x prints a missing field's bare name: the catalog may use only these.
            for field in placeholders(id) {
                assert!(line.contains_key(&field), "catalog entry {id}: @{field}@");
            }
        }
    }
}
