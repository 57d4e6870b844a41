//! What the server refused or cut short, counted for `/metrics` and summarised in the journal at
//! a bounded rate.
//!
//! A flood against a limit is exactly when a line per refusal would hurt: logging each 503 at
//! `max-pending` wrote a million journal lines in 15 s. Each refusal is counted (the
//! `report_apis_rejections_total` counter, by reason) and the journal gets at most one summary
//! line per [`SUMMARY_INTERVAL`], written by the housekeeping task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::{Metrics, RejectionLabels};

/// Shortest time between two summary lines.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Why a request or connection was refused or closed early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `/request_report` answered 503: `limits.max-pending` tickets were held.
    MaxPending,
    /// `limits.max-connections` connections were open: the next one waited in the backlog.
    MaxConnections,
    /// A connection sent no complete request head within `limits.header-timeout` (a slow
    /// sender, or an idle keep-alive connection) and was closed.
    HeaderTimeout,
    /// A request head over the size or header-count limit: answered 431 and closed.
    HeadTooLarge,
    /// A `Report-Fence` header malformed, too long or repeated: 400.
    FenceHeader,
    /// A token below its lock's mark: 409.
    FenceStale,
    /// A fenced `DELETE` of a ticket issued under another lock: 409.
    FenceOtherLock,
    /// A `DELETE` without a fence of a ticket issued under one: 409.
    FenceTokenlessCancel,
    /// A new lock when `limits.max-locks` locks are kept: 503.
    FenceMaxLocks,
}

/// How many reasons there are: the length of [`Reason::ALL`].
const REASONS: usize = 9;

impl Reason {
    const ALL: [Reason; REASONS] = [
        Reason::MaxPending,
        Reason::MaxConnections,
        Reason::HeaderTimeout,
        Reason::HeadTooLarge,
        Reason::FenceHeader,
        Reason::FenceStale,
        Reason::FenceOtherLock,
        Reason::FenceTokenlessCancel,
        Reason::FenceMaxLocks,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::MaxPending => "max-pending",
            Reason::MaxConnections => "max-connections",
            Reason::HeaderTimeout => "header-timeout",
            Reason::HeadTooLarge => "head-too-large",
            Reason::FenceHeader => "fence-header",
            Reason::FenceStale => "fence-stale",
            Reason::FenceOtherLock => "fence-other-lock",
            Reason::FenceTokenlessCancel => "fence-tokenless-cancel",
            Reason::FenceMaxLocks => "fence-max-locks",
        }
    }

    fn index(self) -> usize {
        match self {
            Reason::MaxPending => 0,
            Reason::MaxConnections => 1,
            Reason::HeaderTimeout => 2,
            Reason::HeadTooLarge => 3,
            Reason::FenceHeader => 4,
            Reason::FenceStale => 5,
            Reason::FenceOtherLock => 6,
            Reason::FenceTokenlessCancel => 7,
            Reason::FenceMaxLocks => 8,
        }
    }

    /// How `count` of them read in the summary line.
    fn describe(self, count: u64) -> String {
        match self {
            Reason::MaxPending => {
                format!("{count} ticket requests refused with 503 at limits.max-pending")
            }
            Reason::MaxConnections => {
                format!("{count} connections held in the backlog at limits.max-connections")
            }
            Reason::HeaderTimeout => {
                format!("{count} connections closed at limits.header-timeout (slow or idle)")
            }
            Reason::HeadTooLarge => {
                format!("{count} requests refused with 431 (request head too large)")
            }
            Reason::FenceHeader => {
                format!("{count} requests refused with 400 (malformed Report-Fence header)")
            }
            Reason::FenceStale => {
                format!("{count} requests refused with 409 (token below its lock's mark)")
            }
            Reason::FenceOtherLock => {
                format!("{count} cancels refused with 409 (a ticket of another lock)")
            }
            Reason::FenceTokenlessCancel => {
                format!("{count} cancels refused with 409 (a fenced ticket, no Report-Fence)")
            }
            Reason::FenceMaxLocks => {
                format!("{count} requests of a new lock refused with 503 at limits.max-locks")
            }
        }
    }
}

/// The counters, and what has not been summarised yet.
#[derive(Debug)]
pub struct Rejections {
    metrics: Arc<Metrics>,
    unreported: [AtomicU64; REASONS],
    accept_errors: AtomicU64,
}

impl Rejections {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        for reason in Reason::ALL {
            // Present from the start at 0, so that a rate over them is defined.
            drop(metrics.rejections.get_or_create(&RejectionLabels {
                reason: reason.label(),
            }));
        }
        Self {
            metrics,
            unreported: Default::default(),
            accept_errors: AtomicU64::new(0),
        }
    }

    pub fn record(&self, reason: Reason) {
        self.metrics
            .rejections
            .get_or_create(&RejectionLabels {
                reason: reason.label(),
            })
            .inc();
        self.unreported[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// `accept` failed; the first error of a summary interval is kept for its line.
    pub fn accept_failed(&self, err: &std::io::Error) {
        if self.accept_errors.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!("cannot accept a connection: {err}");
        }
    }

    pub fn opened(&self) {
        self.metrics.connections_open.inc();
    }

    pub fn closed(&self) {
        self.metrics.connections_open.dec();
    }

    /// Everything since the previous summary, or `None` when there was nothing.
    pub fn take_summary(&self) -> Option<Summary> {
        let summary = Summary {
            by_reason: Reason::ALL
                .map(|reason| self.unreported[reason.index()].swap(0, Ordering::Relaxed)),
            accept_errors: self.accept_errors.swap(0, Ordering::Relaxed),
        };
        (summary.by_reason.iter().any(|&n| n > 0) || summary.accept_errors > 0).then_some(summary)
    }
}

/// The counts of one summary line: by reason, in [`Reason::ALL`]'s order, and failed accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    by_reason: [u64; REASONS],
    accept_errors: u64,
}

impl Summary {
    /// How many were refused for `reason`.
    pub fn count(&self, reason: Reason) -> u64 {
        self.by_reason[reason.index()]
    }

    /// The text of the line: the reasons that occurred, in words.
    pub fn text(&self) -> String {
        Reason::ALL
            .into_iter()
            .filter(|&reason| self.count(reason) > 0)
            .map(|reason| reason.describe(self.count(reason)))
            .chain(
                (self.accept_errors > 0).then(|| format!("{} failed accepts", self.accept_errors)),
            )
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Logs the line with its `MESSAGE_ID` and one field per count, every one always there
    /// (0 when none): MAX_PENDING_REJECTED, MAX_CONNECTIONS_REJECTED, HEADER_TIMEOUT_REJECTED,
    /// HEAD_TOO_LARGE_REJECTED, FENCE_HEADER_REJECTED, FENCE_STALE_REJECTED,
    /// FENCE_OTHER_LOCK_REJECTED, FENCE_TOKENLESS_CANCEL_REJECTED, FENCE_MAX_LOCKS_REJECTED,
    /// ACCEPT_ERRORS.
    fn log(&self, over: &str) {
        tracing::warn!(
            MESSAGE_ID = report_common::message_id::REJECTIONS,
            MAX_PENDING_REJECTED = self.count(Reason::MaxPending),
            MAX_CONNECTIONS_REJECTED = self.count(Reason::MaxConnections),
            HEADER_TIMEOUT_REJECTED = self.count(Reason::HeaderTimeout),
            HEAD_TOO_LARGE_REJECTED = self.count(Reason::HeadTooLarge),
            FENCE_HEADER_REJECTED = self.count(Reason::FenceHeader),
            FENCE_STALE_REJECTED = self.count(Reason::FenceStale),
            FENCE_OTHER_LOCK_REJECTED = self.count(Reason::FenceOtherLock),
            FENCE_TOKENLESS_CANCEL_REJECTED = self.count(Reason::FenceTokenlessCancel),
            FENCE_MAX_LOCKS_REJECTED = self.count(Reason::FenceMaxLocks),
            ACCEPT_ERRORS = self.accept_errors,
            "rejected {over}: {}",
            self.text()
        );
    }
}

/// Writes [`Rejections::take_summary`] to the journal at most once per [`SUMMARY_INTERVAL`];
/// called by the housekeeping task on each tick.
#[derive(Debug)]
pub struct Summariser {
    last: Option<Instant>,
}

impl Summariser {
    pub fn new() -> Self {
        Self { last: None }
    }

    pub fn tick(&mut self, rejections: &Rejections, now: Instant) {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < SUMMARY_INTERVAL)
        {
            return;
        }
        let Some(summary) = rejections.take_summary() else {
            return;
        };
        let over = match self.last {
            Some(last) => format!(
                "in the last {}",
                humantime::format_duration(Duration::from_secs(
                    now.saturating_duration_since(last).as_secs(),
                ))
            ),
            None => "since start".to_owned(),
        };
        summary.log(&over);
        self.last = Some(now);
    }
}

impl Default for Summariser {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = include_str!("../../packaging/debian/report-apis/report-apis.catalog");

    #[test]
    fn the_summary_line_counts_by_reason_in_fields_and_fills_its_catalog_entry() {
        let rejections = Rejections::new(Arc::new(Metrics::default()));
        for _ in 0..3 {
            rejections.record(Reason::MaxPending);
        }
        rejections.record(Reason::HeadTooLarge);
        rejections.record(Reason::FenceStale);
        rejections.record(Reason::FenceStale);
        let (captured, guard) = report_common::logging::capture::start();
        Summariser::new().tick(&rejections, Instant::now());
        drop(guard);
        let lines = captured.with_id(report_common::message_id::REJECTIONS);
        assert_eq!(lines.len(), 1, "{:?}", captured.events());
        let line = &lines[0];
        for (field, count) in [
            ("MAX_PENDING_REJECTED", "3"),
            ("MAX_CONNECTIONS_REJECTED", "0"),
            ("HEADER_TIMEOUT_REJECTED", "0"),
            ("HEAD_TOO_LARGE_REJECTED", "1"),
            ("FENCE_HEADER_REJECTED", "0"),
            ("FENCE_STALE_REJECTED", "2"),
            ("FENCE_OTHER_LOCK_REJECTED", "0"),
            ("FENCE_TOKENLESS_CANCEL_REJECTED", "0"),
            ("FENCE_MAX_LOCKS_REJECTED", "0"),
            ("ACCEPT_ERRORS", "0"),
        ] {
            assert_eq!(line.get(field).map(String::as_str), Some(count), "{line:?}");
        }
        assert!(
            line["MESSAGE"].contains("3 ticket requests refused with 503"),
            "{line:?}"
        );
        for field in
            report_common::message_id::placeholders(CATALOG, report_common::message_id::REJECTIONS)
        {
            assert!(line.contains_key(&field), "@{field}@ missing: {line:?}");
        }
        assert_eq!(rejections.take_summary(), None, "counted once");
    }
}
