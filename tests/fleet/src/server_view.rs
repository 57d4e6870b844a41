//! The server's view, as evidence of its own: report-apis' `/metrics`, read from inside the
//! `db` namespace on its loopback (the faults act on the hosts' links and namespaces only, so
//! no partition or slow link of a round keeps a sample from coming), every [`EVERY`] through
//! the whole run by one thread of its own, and once more at the end of each round for the
//! counters of refused requests. Nothing here comes from the collectors.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};

/// How often the sampler reads `/metrics`.
pub const EVERY: Duration = Duration::from_millis(150);

/// How long one read of `/metrics` may take.
const WITHIN: Duration = Duration::from_secs(2);

/// The largest exposition read (a few kilobytes with one lock).
const MAX_TEXT: u64 = 4 << 20;

/// The reason label of the refusals the fence counts (`report_apis_rejections_total`).
pub const FENCE_STALE: &str = "fence-stale";

/// What one read of `/metrics` says, of what the checks use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// `report_apis_fence_pending_tickets` summed by lock name (over the lock ids that name
    /// carries: one lock name is one lock to the fleet).
    pub pending_by_lock: BTreeMap<String, f64>,
    /// `report_apis_tickets_pending`, server-wide.
    pub tickets_pending: Option<f64>,
    /// `report_apis_tickets_pending_peak`: the server's own highest count since it started,
    /// which sees the instants between samples.
    pub tickets_pending_peak: Option<f64>,
    /// `report_apis_rejections_total` by reason, the `fence-*` reasons only.
    pub fence_rejections: BTreeMap<String, f64>,
}

/// A sample's labels, in their order: (name, value).
type Labels = Vec<(String, String)>;

/// One sample line: its metric name, labels and value (`None` for a comment, a blank line,
/// or a line that does not read).
fn sample_line(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let (labels, rest) = if line[name_end..].starts_with('{') {
        labels(&line[name_end + 1..])?
    } else {
        (Vec::new(), &line[name_end..])
    };
    // A time stamp may follow the value.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// `key="value",...}` with the exposition's escapes (`\\`, `\"`, `\n`); the labels and what
/// follows the closing brace.
fn labels(text: &str) -> Option<(Labels, &str)> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((out, after));
        }
        let (key, after) = rest.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((key.trim().to_owned(), value));
        rest = &after[1 + end + 1..];
    }
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Reads the exposition text of `/metrics`.
pub fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for (name, labels, value) in text.lines().filter_map(sample_line) {
        match name {
            "report_apis_fence_pending_tickets" => {
                let lock = label(&labels, "lock").unwrap_or("").to_owned();
                *scrape.pending_by_lock.entry(lock).or_default() += value;
            }
            "report_apis_tickets_pending" => scrape.tickets_pending = Some(value),
            "report_apis_tickets_pending_peak" => scrape.tickets_pending_peak = Some(value),
            "report_apis_rejections_total" => {
                if let Some(reason) = label(&labels, "reason").filter(|r| r.starts_with("fence-")) {
                    *scrape
                        .fence_rejections
                        .entry(reason.to_owned())
                        .or_default() += value;
                }
            }
            _ => {}
        }
    }
    scrape
}

/// `GET /metrics` over a fresh connection (HTTP/1.0: the server closes it after the answer),
/// from the calling thread's network namespace.
fn get_metrics(to: SocketAddr) -> anyhow::Result<Scrape> {
    let mut stream = TcpStream::connect_timeout(&to, WITHIN)
        .with_context(|| format!("cannot connect to {to}"))?;
    stream.set_read_timeout(Some(WITHIN))?;
    stream.set_write_timeout(Some(WITHIN))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.take(MAX_TEXT).read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .context("an answer without a head")?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200") {
        bail!("/metrics answered {status}");
    }
    Ok(parse(body))
}

/// Moves the calling thread into network namespace `ns` for good.
fn enter(ns: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("cannot enter {path}"))
}

/// What the samples of one stretch of the run showed.
#[derive(Debug, Clone, Default)]
struct Window {
    samples: usize,
    failed: usize,
    last_error: Option<String>,
    max_by_lock: BTreeMap<String, f64>,
    max_pending: f64,
    /// The first samples that showed more than one ticket pending (time, what).
    over_one: Vec<String>,
}

impl Window {
    fn add(&mut self, at: SystemTime, scrape: anyhow::Result<Scrape>) {
        let scrape = match scrape {
            Ok(s) => s,
            Err(e) => {
                self.failed += 1;
                self.last_error = Some(format!("{e:#}"));
                return;
            }
        };
        self.samples += 1;
        let mut over = Vec::new();
        for (lock, &n) in &scrape.pending_by_lock {
            let max = self.max_by_lock.entry(lock.clone()).or_default();
            *max = max.max(n);
            if n > 1.0 {
                over.push(format!("lock \"{lock}\" {n}"));
            }
        }
        let pending = scrape.tickets_pending.unwrap_or(0.0);
        self.max_pending = self.max_pending.max(pending);
        if pending > 1.0 {
            over.push(format!("server-wide {pending}"));
        }
        if !over.is_empty() && self.over_one.len() < 5 {
            let at = humantime::format_rfc3339_millis(at);
            self.over_one
                .push(format!("{at}: {} tickets pending", over.join(", ")));
        }
    }
}

/// The server's view of one round: the samples taken since the previous round ended, and its
/// counters at this round's end.
#[derive(Debug, Clone, Default)]
pub struct ServerRound {
    /// Samples read, and reads that failed (with the last error).
    pub samples: usize,
    pub failed: usize,
    pub last_error: Option<String>,
    /// The most tickets pending under each lock name in any sample.
    pub max_by_lock: BTreeMap<String, f64>,
    /// The most tickets pending server-wide in any sample.
    pub max_pending: f64,
    /// The first samples that showed more than one ticket pending.
    pub over_one: Vec<String>,
    /// The server's own peak of pending tickets at the round's end.
    pub peak: Option<f64>,
    /// The `fence-*` refusals counted during the round, by reason (none below 1).
    pub refusals: BTreeMap<String, f64>,
    /// Why the counters could not be read at the round's end (then `refusals` is empty).
    pub counters_error: Option<String>,
}

impl ServerRound {
    /// The `fence-stale` refusals of the round (0 when the counters could not be read).
    pub fn stale(&self) -> f64 {
        self.refusals.get(FENCE_STALE).copied().unwrap_or(0.0)
    }
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    window: Mutex<Window>,
    /// The sampler's time spent reading, in microseconds: what the sampling costs.
    busy_us: AtomicU64,
}

/// The thread reading `/metrics` every [`EVERY`] from inside the `db` namespace.
#[derive(Debug)]
pub struct Sampler {
    ns: String,
    to: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The `fence-*` counters at the end of the previous round (at the start, before it).
    counted: Mutex<BTreeMap<String, f64>>,
}

impl Sampler {
    /// Starts sampling report-apis listening on `port` in namespace `ns`, once its counters
    /// before the first round are read.
    pub async fn start(ns: &str, port: u16) -> anyhow::Result<Sampler> {
        let to = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        let counted = scrape_in(ns, to)
            .await
            .context("cannot read report-apis' /metrics")?
            .fence_rejections;
        let shared = Arc::new(Shared::default());
        let (ns_owned, inner) = (ns.to_owned(), shared.clone());
        let thread = std::thread::Builder::new()
            .name("server-view".into())
            .spawn(move || sample(&ns_owned, to, &inner))
            .context("cannot start the sampler's thread")?;
        Ok(Sampler {
            ns: ns.to_owned(),
            to,
            shared,
            thread: Some(thread),
            counted: Mutex::new(counted),
        })
    }

    /// Ends the round: the samples taken since the previous one ended, and the counters read
    /// now (every run of the round has exited).
    pub async fn round_end(&self) -> ServerRound {
        let end = scrape_in(&self.ns, self.to).await;
        let window = {
            let mut w = self.shared.window.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *w)
        };
        let mut counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        let (peak, refusals, counters_error) = match end {
            Ok(scrape) => {
                let delta = scrape
                    .fence_rejections
                    .iter()
                    .map(|(reason, &n)| {
                        let before = counted.get(reason).copied().unwrap_or(0.0);
                        (reason.clone(), (n - before).max(0.0))
                    })
                    .filter(|(_, n)| *n > 0.0)
                    .collect();
                *counted = scrape.fence_rejections;
                (scrape.tickets_pending_peak, delta, None)
            }
            Err(e) => (None, BTreeMap::new(), Some(format!("{e:#}"))),
        };
        ServerRound {
            samples: window.samples,
            failed: window.failed,
            last_error: window.last_error,
            max_by_lock: window.max_by_lock,
            max_pending: window.max_pending,
            over_one: window.over_one,
            peak,
            refusals,
            counters_error,
        }
    }

    /// Stops the thread and waits for it; the time it spent reading `/metrics`.
    pub fn stop(mut self) -> Duration {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        Duration::from_micros(self.shared.busy_us.load(Ordering::Relaxed))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        // Not waited for here: it ends within one sample.
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// The sampler's thread: in the namespace for good, one read every [`EVERY`].
fn sample(ns: &str, to: SocketAddr, shared: &Shared) {
    let entered = enter(ns);
    while !shared.stop.load(Ordering::Relaxed) {
        let began = Instant::now();
        let scrape = match &entered {
            Ok(()) => get_metrics(to),
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
        };
        let took = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
        shared.busy_us.fetch_add(took, Ordering::Relaxed);
        shared
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(SystemTime::now(), scrape);
        std::thread::sleep(EVERY.saturating_sub(began.elapsed()));
    }
}

/// One read of `/metrics` from inside `ns`, on a thread of its own.
async fn scrape_in(ns: &str, to: SocketAddr) -> anyhow::Result<Scrape> {
    let ns = ns.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(enter(&ns).and_then(|()| get_metrics(to)));
    });
    rx.await.context("the scrape's thread failed")?
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP report_apis_tickets_pending Tickets requested whose report is not yet fetched and that have not expired.
# TYPE report_apis_tickets_pending gauge
report_apis_tickets_pending 1
# HELP report_apis_tickets_pending_peak Highest number of pending tickets seen since start.
# TYPE report_apis_tickets_pending_peak gauge
report_apis_tickets_pending_peak 2
# HELP report_apis_rejections Requests refused.
# TYPE report_apis_rejections counter
report_apis_rejections_total{reason="fence-stale"} 3
report_apis_rejections_total{reason="max-pending"} 7
report_apis_rejections_total{reason="fence-other-lock"} 1
# TYPE report_apis_fence_pending_tickets gauge
report_apis_fence_pending_tickets{lock="fleet",lock_id="0123456789abcdef0123456789abcdef"} 1
report_apis_fence_pending_tickets{lock="fleet",lock_id="fedcba9876543210fedcba9876543210"} 1
report_apis_fence_pending_tickets{lock="a \"b\", c\\d}",lock_id="00000000000000000000000000000001"} 0
report_apis_fence_mark_epoch{lock="fleet",lock_id="0123456789abcdef0123456789abcdef"} 4
# EOF
"#;

    #[test]
    fn the_exposition_reads_by_lock_name_and_reason() {
        let s = parse(TEXT);
        assert_eq!(s.tickets_pending, Some(1.0));
        assert_eq!(s.tickets_pending_peak, Some(2.0));
        // Two ids under one name add up; escapes in a label value are undone.
        assert_eq!(
            s.pending_by_lock,
            BTreeMap::from([("fleet".into(), 2.0), ("a \"b\", c\\d}".into(), 0.0)])
        );
        assert_eq!(
            s.fence_rejections,
            BTreeMap::from([
                ("fence-stale".into(), 3.0),
                ("fence-other-lock".into(), 1.0)
            ])
        );
    }

    #[test]
    fn lines_that_do_not_read_are_left_out() {
        assert_eq!(parse(""), Scrape::default());
        let s = parse(
            "report_apis_tickets_pending\nreport_apis_tickets_pending{x=\"1\" 2\n\
             report_apis_fence_pending_tickets{lock=\"x} nan-ish\n\
             report_apis_tickets_pending_peak 1 1700000000000\n",
        );
        assert_eq!(s.tickets_pending, None);
        assert!(s.pending_by_lock.is_empty());
        assert_eq!(s.tickets_pending_peak, Some(1.0));
        assert_eq!(
            sample_line("x_total{a=\"1\",b=\"\\n\"} +Inf"),
            Some((
                "x_total",
                vec![("a".into(), "1".into()), ("b".into(), "\n".into())],
                f64::INFINITY
            ))
        );
    }

    #[test]
    fn a_window_keeps_the_most_pending_and_the_samples_over_one() {
        let mut w = Window::default();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_194_200);
        w.add(at, Ok(parse(TEXT)));
        w.add(at, Ok(Scrape::default()));
        w.add(at, Err(anyhow::anyhow!("refused")));
        assert_eq!((w.samples, w.failed), (2, 1));
        assert_eq!(w.max_by_lock.get("fleet"), Some(&2.0));
        assert_eq!(w.max_pending, 1.0);
        assert_eq!(
            w.over_one,
            vec!["2026-12-02T06:50:00.000Z: lock \"fleet\" 2 tickets pending".to_owned()]
        );
        assert_eq!(w.last_error.as_deref(), Some("refused"));
    }
}
