//! The real collector binary against a server that speaks broken HTTP on purpose: garbage,
//! huge headers, huge, endless, cut-short and unframed bodies, lying lengths, absurd
//! `Retry-After` values, a slow drip and an error page sent with 200. Whatever the server does,
//! the run must end by itself with exit 1 (never a signal: release builds abort on a panic),
//! save nothing, leave no temporary file and no stale holder record, and put the failure on
//! record naming what the body was. An endless body, written into its temp file as it comes
//! until it passes `max-report-size`, must cost no more memory at the default cap (64 MiB) than
//! at a small one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::*;
use report_collector::state::State;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A whole report, as report-apis sends it.
const CSV: &str = "timestamp,data\n0,data-0\n1,data-1\n";
const TICKET: &str = "abc_0";

/// What the hostile server does with a request.
#[derive(Debug, Clone)]
enum Act {
    /// Raw bytes, then the connection is closed.
    Raw(Vec<u8>),
    /// A head, then `body` repeated forever (until the client goes away).
    Endless { head: String, body: &'static [u8] },
    /// A head, then the body one byte every 100 ms.
    Drip { head: String, body: Vec<u8> },
    /// A head of header lines that never ends.
    EndlessHeaders,
}

fn framed(status: &str, headers: &str, body: &str) -> Act {
    Act::Raw(
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn unframed(headers: &str, body: &str) -> Act {
    Act::Raw(format!("HTTP/1.1 200 OK\r\n{headers}Connection: close\r\n\r\n{body}").into_bytes())
}

/// A server on a raw tokio listener: `/request_report` gets a good ticket unless `on_ticket`
/// says otherwise; every other request gets `act`.
struct Hostile {
    url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Hostile {
    fn start(on_ticket: Option<Act>, act: Act) -> Hostile {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let ticket = on_ticket.unwrap_or_else(|| framed("200 OK", "", TICKET));
        let acts = Arc::new((ticket, act));
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acts = acts.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &acts.0, &acts.1).await;
                });
            }
        });
        Hostile {
            url,
            runtime: Some(runtime),
        }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn serve(mut stream: TcpStream, on_ticket: &Act, act: &Act) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65_536 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or("/");
    let act = if path.starts_with("/request_report") {
        on_ticket
    } else {
        act
    };
    match act {
        Act::Raw(bytes) => stream.write_all(bytes).await?,
        Act::Endless { head, body } => {
            stream.write_all(head.as_bytes()).await?;
            loop {
                stream.write_all(body).await?;
            }
        }
        Act::Drip { head, body } => {
            stream.write_all(head.as_bytes()).await?;
            for byte in body {
                stream.write_all(&[*byte]).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Act::EndlessHeaders => {
            stream.write_all(b"HTTP/1.1 200 OK\r\n").await?;
            loop {
                stream
                    .write_all(format!("X-Junk: {}\r\n", "a".repeat(1000)).as_bytes())
                    .await?;
            }
        }
    }
    stream.shutdown().await
}

/// One hostile answer and what the run must say about it.
struct Probe {
    name: &'static str,
    on_ticket: Option<Act>,
    act: Act,
    config: Vec<(&'static str, &'static str)>,
    /// Words the run's error (stderr and the state file) must contain.
    says: &'static [&'static str],
}

fn probe(name: &'static str, act: Act, says: &'static [&'static str]) -> Probe {
    Probe {
        name,
        on_ticket: None,
        act,
        config: vec![("deadline", "\"2s\"")],
        says,
    }
}

fn probes() -> Vec<Probe> {
    // One chunk of rows in chunked encoding, sent over and over: endless, yet well framed.
    let rows = "9,data-9\n".repeat(512);
    let chunk: &'static [u8] = format!("{:x}\r\n{rows}\r\n", rows.len()).leak().as_bytes();
    vec![
        probe(
            "garbage instead of HTTP",
            Act::Raw(b"SSH-2.0-OpenSSH_9.2\r\n\0\xff\xfegarbage\r\n\r\n".to_vec()),
            &["no usable HTTP answer", "deadline"],
        ),
        Probe {
            on_ticket: Some(Act::Raw(
                b"\x16\x03\x01\x02\0\x01\0\x01\xfc\x03\x03".to_vec(),
            )),
            ..probe(
                "garbage for the ticket",
                Act::Raw(Vec::new()),
                &["no usable HTTP answer", "requesting a ticket"],
            )
        },
        probe(
            "endless headers",
            Act::EndlessHeaders,
            &["no usable HTTP answer", "deadline"],
        ),
        probe(
            "a huge body announced",
            Act::Raw(
                b"HTTP/1.1 200 OK\r\nContent-Length: 10737418240\r\n\r\ntimestamp,data\n".to_vec(),
            ),
            &[
                "too large",
                "10737418240 bytes announced",
                "max-report-size",
            ],
        ),
        probe(
            "a Content-Length of u64::MAX",
            Act::Raw(
                b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\ntimestamp,data\n"
                    .to_vec(),
            ),
            &["no usable HTTP answer", "deadline"],
        ),
        probe(
            "an endless chunked body",
            Act::Endless {
                head:
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nf\r\ntimestamp,data\n\r\n"
                        .into(),
                body: chunk,
            },
            &["too large", "more than max-report-size (1MiB)"],
        ),
        probe(
            "an endless unframed body",
            Act::Endless {
                head: "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\ntimestamp,data\n".into(),
                body: b"0,data-0\n",
            },
            &["too large", "max-report-size"],
        ),
        probe(
            "a body cut short of its Content-Length",
            Act::Raw(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\ntimestamp,data\n0,data-0\n"
                    .to_vec(),
            ),
            &["truncated", "broke off", "deadline"],
        ),
        probe(
            "an unframed body cut mid-row",
            unframed(
                "Content-Type: text/csv\r\n",
                "timestamp,data\n0,data-0\n1,da",
            ),
            &["truncated", "line 3"],
        ),
        probe(
            "an unframed body that looks whole",
            unframed("Content-Type: text/csv\r\n", CSV),
            &["may be truncated", "Content-Length"],
        ),
        probe(
            "a Content-Length shorter than the body",
            Act::Raw(format!("HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{CSV}").into_bytes()),
            &["truncated", "line 2"],
        ),
        probe(
            "two Content-Lengths that disagree",
            Act::Raw(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: 20\r\nContent-Length: {}\r\n\r\n{CSV}",
                    CSV.len()
                )
                .into_bytes(),
            ),
            &["no usable HTTP answer", "deadline"],
        ),
        probe(
            "a Content-Length that is not a number",
            Act::Raw(format!("HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n{CSV}").into_bytes()),
            &["no usable HTTP answer", "deadline"],
        ),
        Probe {
            config: vec![("deadline", "\"1h\"")],
            ..probe(
                "Retry-After u64::MAX on a 503",
                framed(
                    "503 Service Unavailable",
                    "Retry-After: 18446744073709551615\r\n",
                    "busy",
                ),
                &["503", "within the run deadline"],
            )
        },
        Probe {
            config: vec![("deadline", "\"1h\"")],
            on_ticket: Some(framed(
                "429 Too Many Requests",
                "Retry-After: 18446744073709551615\r\n",
                "slow down",
            )),
            ..probe(
                "Retry-After u64::MAX on the ticket request",
                Act::Raw(Vec::new()),
                &["429", "requesting a ticket"],
            )
        },
        probe(
            "Retry-After 10^30 on a 503",
            framed(
                "503 Service Unavailable",
                "Retry-After: 1000000000000000000000000000000\r\n",
                "busy",
            ),
            &["503", "deadline"],
        ),
        probe(
            "Retry-After u64::MAX while not ready",
            framed(
                "200 OK",
                "Retry-After: 18446744073709551615\r\n",
                "report is not ready",
            ),
            &["still not ready", "deadline"],
        ),
        probe(
            "an endless error page",
            Act::Endless {
                head:
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\n\r\n<html>down"
                        .into(),
                body: b" and down",
            },
            &["503", "<html>down and down", "deadline"],
        ),
        probe(
            "a negative Retry-After",
            framed("503 Service Unavailable", "Retry-After: -5\r\n", "busy"),
            &["503", "deadline"],
        ),
        probe(
            "a garbage Retry-After",
            framed("503 Service Unavailable", "Retry-After: soon\r\n", "busy"),
            &["503", "deadline"],
        ),
        Probe {
            config: vec![("deadline", "\"3s\""), ("request-timeout", "\"1s\"")],
            ..probe(
                "a slow drip, one byte per 100 ms",
                Act::Drip {
                    head: format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", CSV.len()),
                    body: CSV.as_bytes().to_vec(),
                },
                &["truncated", "deadline"],
            )
        },
        probe(
            "an HTML error page with 200",
            framed(
                "200 OK",
                "Content-Type: text/html; charset=utf-8\r\n",
                "<html><body><h1>Welcome to nginx!</h1></body></html>",
            ),
            &["error page", "text/html"],
        ),
        probe(
            "an HTML error page with 200 and no content type",
            framed("200 OK", "", "<html><body>Bad Gateway</body></html>\n"),
            &["error page", "not a CSV report"],
        ),
        probe(
            "a malformed report",
            framed(
                "200 OK",
                "Content-Type: text/csv\r\n",
                "timestamp,data\n0,data-0\n1\n",
            ),
            &["malformed at line 3"],
        ),
    ]
}

/// Peak resident memory of a running process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs the collector to its end while watching its peak memory.
fn run_watching_memory(setup: &Setup) -> (Finished, u64) {
    let child = setup.spawn(&[]);
    let pid = child.id();
    let mut child = Some(child);
    let mut peak = 0;
    let start = Instant::now();
    while running(child.as_mut().unwrap()) && start.elapsed() < PATIENCE {
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(2));
    }
    (finish(child.take().unwrap()), peak)
}

#[test]
fn no_hostile_answer_crashes_the_collector_or_is_saved() {
    let _timing = timing_guard();
    let probes = probes();
    // All probes at once: each waits out a short deadline, so in a row they would be slow.
    let runs: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = probes
            .iter()
            .map(|p| {
                scope.spawn(move || {
                    let server = Hostile::start(p.on_ticket.clone(), p.act.clone());
                    let mut config = p.config.clone();
                    config.push(("max-report-size", "\"1MiB\""));
                    let setup = Setup::new(&server.url, &config);
                    let run = setup.run(&[]);
                    (setup, run)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut failures = Vec::new();
    let mut panics = 0;
    for (p, (setup, run)) in probes.iter().zip(&runs) {
        let mut wrong = Vec::new();
        if run.signal.is_some() || run.code == Some(101) {
            panics += 1;
        }
        if run.code != Some(1) {
            wrong.push(format!(
                "exit {:?} signal {:?}, want exit 1",
                run.code, run.signal
            ));
        }
        if !setup.report_files().is_empty() {
            wrong.push(format!("left files {:?}", setup.report_files()));
        }
        if !run.stdout.is_empty() {
            wrong.push(format!("echoed a report: {:?}", run.stdout));
        }
        if setup.holder().is_some() {
            wrong.push("left a holder record".into());
        }
        match State::load(&setup.state) {
            Ok(Some(state)) => {
                if state.last_run.outcome != "failed" || state.last_run.exit_code != 1 {
                    wrong.push(format!("state says {:?}", state.last_run.outcome));
                }
                for word in p.says {
                    if !state.last_run.message.contains(word) && !run.stderr.contains(word) {
                        wrong.push(format!("never says `{word}`"));
                    }
                }
                if !p.says.iter().any(|w| state.last_run.message.contains(w)) {
                    wrong.push(format!(
                        "the state file's message names none of {:?}: {}",
                        p.says, state.last_run.message
                    ));
                }
            }
            other => wrong.push(format!("no state recorded: {other:?}")),
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}\n{}", p.name, wrong.join("; "), run.stderr));
        }
    }
    println!(
        "hostile server: {} probes, {panics} panics, {} failures",
        probes.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(panics, 0);
}

#[test]
fn an_endless_body_costs_no_more_memory_than_with_a_small_max_report_size() {
    let _timing = timing_guard();
    // Chunked, so well framed: written into its temp file as it comes, as a report is, until
    // it passes the cap.
    let rows = "0,data-0\n".repeat(4096);
    let chunk: &'static [u8] = format!("{:x}\r\n{rows}\r\n", rows.len()).leak().as_bytes();
    let server = Hostile::start(
        None,
        Act::Endless {
            head: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nf\r\ntimestamp,data\n\r\n"
                .into(),
            body: chunk,
        },
    );
    // The default (64MiB, what an installed collector does) and a small cap, whose peak is
    // about what the program needs without any report. Each piece of the body is checked as it
    // arrives, which a debug build does at tens of MB/s: the request may take longer than the
    // usual 2 s.
    let mut peaks = Vec::new();
    for (cap, cap_mib) in [(None, 64), (Some("\"1MiB\""), 1)] {
        let mut extra: Vec<(&str, &str)> = vec![("request-timeout", "\"30s\"")];
        extra.extend(cap.map(|c| ("max-report-size", c)));
        let setup = Setup::new(&server.url, &extra);
        let (run, peak_kib) = run_watching_memory(&setup);
        assert_eq!(run.code, Some(1), "{}", run.stderr);
        assert!(run.stderr.contains("too large"), "{}", run.stderr);
        assert!(
            setup.report_files().is_empty(),
            "{:?}",
            setup.report_files()
        );
        println!(
            "endless body, max-report-size {cap_mib}MiB: peak RSS {peak_kib} KiB ({} MiB)",
            peak_kib / 1024
        );
        assert!(peak_kib > 0, "the watcher never read the process's memory");
        peaks.push(peak_kib);
    }
    // Nothing of the body is held but its start and the piece at hand: the cap 64 times
    // higher costs next to nothing (a body held whole would cost 63 MiB more).
    assert!(
        peaks[0] < peaks[1] + 8 * 1024,
        "peak RSS {} KiB with max-report-size 64MiB, {} KiB with 1MiB",
        peaks[0],
        peaks[1]
    );
}
