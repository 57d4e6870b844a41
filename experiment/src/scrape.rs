//! Reads a server's `/metrics` (Prometheus text) and samples it over the run.
//!
//! Only the server's own figures are used for what happens inside it: pending tickets, their
//! peak, heavy load and generation time.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::clock::Clock;

/// The figures of one `/metrics` answer the experiment uses.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scrape {
    pub pending: f64,
    pub pending_peak: f64,
    pub heavy_load: bool,
    pub generation_sum: f64,
    pub generation_count: f64,
    pub issued: f64,
    /// `report_apis_tickets_cancelled_total`: tickets dropped at a collector's request.
    pub cancelled: f64,
    /// `report_apis_tickets_expired_total`: tickets dropped after their ttl.
    pub expired: f64,
    /// `report_apis_rejections_total{reason="fence-stale"}`: requests refused (409) for a
    /// token below their lock's mark.
    pub fence_stale: f64,
}

/// The series of requests refused by the fence as stale.
pub const FENCE_STALE: &str = "report_apis_rejections_total{reason=\"fence-stale\"}";

/// A scrape placed on the time line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds after slot 0.
    pub at: f64,
    pub scrape: Scrape,
}

/// Every un-labelled and labelled series of a Prometheus text answer, by full series name
/// (`name` or `name{labels}`).
pub fn parse(text: &str) -> HashMap<String, f64> {
    let mut series = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The value follows the series name; labels may hold spaces and braces, so split after
        // the last `}`.
        let (name, rest) = match line.rfind('}') {
            Some(end) => (&line[..=end], &line[end + 1..]),
            None => match line.split_once(char::is_whitespace) {
                Some((name, rest)) => (name, rest),
                None => continue,
            },
        };
        if let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            series.insert(name.to_string(), value);
        }
    }
    series
}

impl Scrape {
    /// Picks the experiment's figures out of a `/metrics` answer; absent series read as 0.
    pub fn from_text(text: &str) -> Scrape {
        let series = parse(text);
        let get = |name: &str| series.get(name).copied().unwrap_or(0.0);
        Scrape {
            pending: get("report_apis_tickets_pending"),
            pending_peak: get("report_apis_tickets_pending_peak"),
            heavy_load: get("report_apis_heavy_load") > 0.5,
            generation_sum: get("report_apis_report_generation_seconds_sum"),
            generation_count: get("report_apis_report_generation_seconds_count"),
            issued: get("report_apis_tickets_issued_total"),
            cancelled: get("report_apis_tickets_cancelled_total"),
            expired: get("report_apis_tickets_expired_total"),
            fence_stale: get(FENCE_STALE),
        }
    }

    /// Mean time from request to ready, in seconds, when any report was generated.
    pub fn mean_generation(&self) -> Option<f64> {
        (self.generation_count > 0.0).then(|| self.generation_sum / self.generation_count)
    }
}

/// One `GET /metrics`.
pub async fn scrape(client: &reqwest::Client, server_url: &str) -> anyhow::Result<Scrape> {
    let text = client
        .get(format!("{server_url}/metrics"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("cannot read {server_url}/metrics"))?
        .text()
        .await
        .with_context(|| format!("cannot read {server_url}/metrics"))?;
    Ok(Scrape::from_text(&text))
}

/// Samples the server every `every` until `stop` turns true; a failed scrape is skipped, not fatal
/// (the gap shows in the samples' times).
pub async fn sample(
    client: reqwest::Client,
    server_url: String,
    clock: Clock,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Ok(scrape) = scrape(&client, &server_url).await {
                    samples.push(Sample { at: clock.now(), scrape });
                }
            }
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP report_apis_tickets_pending Tickets requested and not yet fetched.
# TYPE report_apis_tickets_pending gauge
report_apis_tickets_pending 3
report_apis_tickets_pending_peak 4
report_apis_heavy_load 1
report_apis_tickets_issued_total 7
report_apis_tickets_cancelled_total 2
report_apis_tickets_expired_total 1
report_apis_rejections_total{reason=\"fence-stale\"} 2
report_apis_rejections_total{reason=\"fence-header\"} 5
report_apis_http_requests_total{route=\"/get_report/{ticket}\",method=\"GET\",status=\"200\"} 12
report_apis_report_generation_seconds_sum 9.0
report_apis_report_generation_seconds_count 3
report_apis_report_generation_seconds_bucket{le=\"+Inf\"} 3
# EOF
";

    #[test]
    fn picks_the_documented_series() {
        let s = Scrape::from_text(TEXT);
        assert_eq!(s.pending, 3.0);
        assert_eq!(s.pending_peak, 4.0);
        assert!(s.heavy_load);
        assert_eq!(s.issued, 7.0);
        assert_eq!((s.cancelled, s.expired), (2.0, 1.0));
        assert_eq!(s.fence_stale, 2.0);
        assert_eq!(s.mean_generation(), Some(3.0));
    }

    #[test]
    fn labels_with_braces_and_spaces_do_not_confuse_the_parser() {
        let series = parse(TEXT);
        let key = "report_apis_http_requests_total{route=\"/get_report/{ticket}\",method=\"GET\",status=\"200\"}";
        assert_eq!(series.get(key), Some(&12.0));
    }

    #[test]
    fn no_reports_means_no_mean() {
        assert_eq!(Scrape::default().mean_generation(), None);
    }
}
