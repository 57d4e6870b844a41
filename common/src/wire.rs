//! The HTTP interface of report-apis as the original server defined it, which its clients rely
//! on byte for byte: the routes, the body that means "not ready", the report's first line and
//! the header values that carry meaning. The server answers with these and the collector asks
//! with them; neither program spells them itself.

use std::time::Duration;

/// Issues a ticket; `?offset=N` sets the first timestamp of its report.
pub const REQUEST_REPORT: &str = "/request_report";
/// Serves a ticket's report, or [`NOT_READY`] while it is generated (axum's path syntax).
pub const GET_REPORT: &str = "/get_report/{ticket}";
/// [`GET_REPORT`] with the ticket left out: a malformed ticket, not an unknown route.
pub const GET_REPORT_EMPTY: &str = "/get_report/";
/// Answers `ok` while the server runs.
pub const HEALTHZ: &str = "/healthz";
/// The Prometheus metrics.
pub const METRICS: &str = "/metrics";

/// The path of [`GET_REPORT`] for one ticket.
pub fn get_report_path(ticket: &str) -> String {
    format!("{GET_REPORT_EMPTY}{ticket}")
}

/// The body of a 200 answer while a report is not ready; the original's collector compares it
/// byte for byte, so nothing else may be sent with a 200 but the report.
pub const NOT_READY: &str = "report is not ready";

/// The first line of every report, the CSV header.
pub const CSV_HEADER: &str = "timestamp,data";

/// The `Content-Type` of a report.
pub const REPORT_CONTENT_TYPE: &str = "text/csv";

/// Reads a `Retry-After` value. The server only ever sends whole seconds; an HTTP date (which
/// the header also allows) is not understood and reads as no advice.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_path_is_the_route_with_the_ticket_in_it() {
        assert_eq!(get_report_path("abc_1"), "/get_report/abc_1");
        assert_eq!(
            GET_REPORT.replace("{ticket}", "abc_1"),
            get_report_path("abc_1")
        );
    }

    #[test]
    fn retry_after_is_whole_seconds() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
