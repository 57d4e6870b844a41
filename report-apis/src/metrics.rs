//! The Prometheus registry: ticket counts, heavy-load state, requests and generation time.
//!
//! Names are part of the published interface (dashboards and the experiment read them), so
//! they are registered in this one place.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// Labels of `report_apis_http_requests_total`. The route is the pattern, never the raw path,
/// so hostile or random paths cannot grow the label set.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

/// Labels of `report_apis_rejections_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub reason: &'static str,
}

/// Labels of the per-lock fence gauges: the lock's name as last seen (for people) and its id
/// (what the server tells locks apart by). At most `limits.max-locks` sets, and a lock renamed
/// drops its old set.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockLabels {
    pub lock: String,
    pub lock_id: String,
}

/// Every metric the server exports, cheap to update from any thread.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub tickets_issued: Counter,
    pub tickets_pending: Gauge,
    pub tickets_ready: Gauge,
    pub tickets_expired: Counter,
    pub tickets_cancelled: Counter,
    pub tickets_rejected: Counter,
    pub tickets_pending_peak: Gauge,
    pub heavy_load: Gauge,
    pub http_requests: Family<RequestLabels, Counter>,
    pub report_generation_seconds: Histogram,
    pub rejections: Family<RejectionLabels, Counter>,
    pub connections_open: Gauge,
    pub fence_locks: Gauge,
    pub fence_mark_epoch: Family<LockLabels, Gauge>,
    pub fence_mark_count: Family<LockLabels, Gauge>,
    pub fence_pending_tickets: Family<LockLabels, Gauge>,
    pub fence_tickets_returned: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One of [`Metrics`]' fields, handed to the registry.
type Field = fn(&Metrics) -> Box<dyn Metric>;

/// Every metric's published name (under the prefix `report_apis`) and help, with the field
/// that holds it, in the order the exposition lists them.
const EXPORTED: [(&str, &str, Field); 17] = [
    (
        "tickets_issued",
        "Tickets handed out by /request_report",
        |m| Box::new(m.tickets_issued.clone()),
    ),
    (
        "tickets_pending",
        "Tickets requested whose report is not yet fetched and that have not expired",
        |m| Box::new(m.tickets_pending.clone()),
    ),
    (
        "tickets_ready",
        "Tickets whose report is generated but not yet fetched",
        |m| Box::new(m.tickets_ready.clone()),
    ),
    (
        "tickets_expired",
        "Tickets dropped after their time to live",
        |m| Box::new(m.tickets_expired.clone()),
    ),
    (
        "tickets_cancelled",
        "Held tickets dropped by DELETE /get_report/{ticket} before they expired",
        |m| Box::new(m.tickets_cancelled.clone()),
    ),
    (
        "tickets_rejected",
        "Ticket requests refused with 503 because max-pending tickets were held",
        |m| Box::new(m.tickets_rejected.clone()),
    ),
    (
        "tickets_pending_peak",
        "Highest number of pending tickets seen since start",
        |m| Box::new(m.tickets_pending_peak.clone()),
    ),
    (
        "heavy_load",
        "1 while the server is in a heavy-load phase, else 0",
        |m| Box::new(m.heavy_load.clone()),
    ),
    (
        "http_requests",
        "HTTP requests by route pattern, method and status",
        |m| Box::new(m.http_requests.clone()),
    ),
    (
        "report_generation_seconds",
        "Wall time from a ticket's request until its report was ready",
        |m| Box::new(m.report_generation_seconds.clone()),
    ),
    (
        "rejections",
        "Requests refused and connections held back or closed early, by the limit that did it: \
         max-pending (503), max-connections (waited in the backlog), header-timeout (closed, slow \
         or idle), head-too-large (431), fence-header (400, a malformed Report-Fence), fence-stale \
         (409, a token below its lock's mark), fence-other-lock (409, a cancel of another lock's \
         ticket), fence-tokenless-cancel (409, a cancel of a fenced ticket without a fence), \
         fence-max-locks (503, a new lock past limits.max-locks)",
        |m| Box::new(m.rejections.clone()),
    ),
    ("connections_open", "HTTP connections being served", |m| {
        Box::new(m.connections_open.clone())
    }),
    (
        "fence_locks",
        "Locks whose fence mark the server keeps (at most limits.max-locks)",
        |m| Box::new(m.fence_locks.clone()),
    ),
    (
        "fence_mark_epoch",
        "Epoch of each lock's mark, the highest token seen for it (saturates at i64::MAX)",
        |m| Box::new(m.fence_mark_epoch.clone()),
    ),
    (
        "fence_mark_count",
        "Count of each lock's mark, the highest token seen for it (saturates at i64::MAX)",
        |m| Box::new(m.fence_mark_count.clone()),
    ),
    (
        "fence_pending_tickets",
        "1 while a ticket issued under the lock's fence is pending, else 0",
        |m| Box::new(m.fence_pending_tickets.clone()),
    ),
    (
        "fence_tickets_returned",
        "Fenced ticket requests answered with the lock's pending ticket instead of a new one",
        |m| Box::new(m.fence_tickets_returned.clone()),
    ),
];

/// A metric of any kind, so that [`EXPORTED`] can be one table: the registry takes a metric of
/// one type at a time, and encodes it as the metric itself.
#[derive(Debug)]
struct AnyMetric(Box<dyn Metric>);

impl EncodeMetric for AnyMetric {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    // A family with no labels yet is left out of the exposition, as when registered itself.
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("report_apis"),
            tickets_issued: Counter::default(),
            tickets_pending: Gauge::default(),
            tickets_ready: Gauge::default(),
            tickets_expired: Counter::default(),
            tickets_cancelled: Counter::default(),
            tickets_rejected: Counter::default(),
            tickets_pending_peak: Gauge::default(),
            heavy_load: Gauge::default(),
            http_requests: Family::default(),
            // 50 ms to about 14 h: from a lone report to one stuck behind thousands of others.
            report_generation_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 21)),
            rejections: Family::default(),
            connections_open: Gauge::default(),
            fence_locks: Gauge::default(),
            fence_mark_epoch: Family::default(),
            fence_mark_count: Family::default(),
            fence_pending_tickets: Family::default(),
            fence_tickets_returned: Counter::default(),
        };
        for (name, help, metric) in EXPORTED {
            let metric = AnyMetric(metric(&metrics));
            metrics.registry.register(name, help, metric);
        }
        metrics
    }

    /// The OpenMetrics text exposition (which Prometheus scrapes natively).
    pub fn encode(&self) -> String {
        let mut body = String::with_capacity(4096);
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut body, &self.registry);
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_documented_names() {
        let metrics = Metrics::new();
        metrics.tickets_issued.inc();
        metrics.report_generation_seconds.observe(1.5);
        metrics
            .http_requests
            .get_or_create(&RequestLabels {
                route: "/get_report/{ticket}",
                method: "GET",
                status: 200,
            })
            .inc();
        let text = metrics.encode();
        for name in [
            "report_apis_tickets_issued_total 1",
            "report_apis_tickets_pending 0",
            "report_apis_tickets_ready 0",
            "report_apis_tickets_expired_total 0",
            "report_apis_tickets_cancelled_total 0",
            "report_apis_tickets_rejected_total 0",
            "report_apis_tickets_pending_peak 0",
            "report_apis_heavy_load 0",
            "report_apis_http_requests_total{route=\"/get_report/{ticket}\",method=\"GET\",status=\"200\"} 1",
            "report_apis_report_generation_seconds_sum 1.5",
            "report_apis_report_generation_seconds_count 1",
            "report_apis_connections_open 0",
            "report_apis_fence_locks 0",
            "report_apis_fence_tickets_returned_total 0",
        ] {
            assert!(text.contains(name), "missing {name:?} in\n{text}");
        }
    }
}
