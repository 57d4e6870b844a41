//! No ticket thrown away, against the real report-apis: a run killed with `kill -9` at many
//! instants of its life (before its ticket, while polling, as the report arrives) is followed
//! by a run that resumes the ticket it left, so the server never holds two tickets of this
//! collector at once and every ticket it issued ends as one saved report.
//!
//! The one window where a kill loses a ticket (the server's answer is in, the lock's record
//! not yet written) holds no system call but the record's write (see `crash_points.rs`), a few
//! microseconds here against kills 60 ms apart.

mod util;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use nix::sys::signal::Signal;
use report_collector::store::is_report_name;
use util::*;

/// One series of report-apis' `/metrics`, over a plain HTTP/1.0 request.
fn metric(url: &str, name: &str) -> f64 {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn kill_9_at_many_instants_then_the_next_run_resumes_and_nothing_piles_up() {
    let mut config = report_apis::Config::default();
    config.heavy_load.period = Duration::ZERO;
    config.report.generation_time = Duration::from_millis(700);
    let server = ApiServer::start(config);
    let setup = Setup::new(&server.url, &[("poll-interval", "\"50ms\"")]);

    let mut kills = 0;
    let mut handed_on = 0;
    for step in 0..14u64 {
        let at = Duration::from_millis(step * 60);
        let mut child = setup.spawn(&[]);
        std::thread::sleep(at);
        if running(&mut child) {
            signal(&child, Signal::SIGKILL);
            kills += 1;
        }
        let _ = finish(child);
        let record: Option<serde_json::Value> = std::fs::read(&setup.lock)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let left = record.and_then(|r| r["ticket"].as_str().map(str::to_owned));

        let next = setup.run(&[]);
        assert_eq!(next.code, Some(0), "killed at {at:?}: {}", next.stderr);
        if let Some(left) = left {
            handed_on += 1;
            assert!(
                next.stderr.contains(&format!("resuming ticket {left}"))
                    || next.stderr.contains("already saved"),
                "killed at {at:?}, the next run takes {left} over: {}",
                next.stderr
            );
        }
    }

    let saved: Vec<String> = setup
        .report_files()
        .into_iter()
        .filter(|n| is_report_name(n))
        .collect();
    let mut tickets: Vec<&str> = saved.iter().map(|n| &n[17..n.len() - 4]).collect();
    tickets.sort_unstable();
    let distinct = {
        let mut d = tickets.clone();
        d.dedup();
        d.len()
    };
    assert_eq!(distinct, tickets.len(), "a ticket saved twice: {saved:?}");
    let issued = metric(&server.url, "report_apis_tickets_issued_total");
    let pending = metric(&server.url, "report_apis_tickets_pending");
    let peak = metric(&server.url, "report_apis_tickets_pending_peak");
    eprintln!(
        "{kills} kills, {handed_on} tickets handed on, {issued} issued, {} saved, peak pending {peak}",
        saved.len()
    );
    assert!(
        kills >= 8,
        "only {kills} runs were killed: is the server too fast?"
    );
    assert!(handed_on >= 5, "only {handed_on} tickets were handed on");
    assert_eq!(
        peak, 1.0,
        "never two tickets of this collector pending at once"
    );
    assert_eq!(pending, 0.0, "nothing left generating on the server");
    assert_eq!(
        issued,
        f64::from(u32::try_from(saved.len()).unwrap()),
        "every ticket issued ended as one saved report"
    );
}
