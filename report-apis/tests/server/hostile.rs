//! Hostile clients and nonsense configuration, against the real binary over loopback: slow and
//! idle connections are closed at the header timeout, a flood above the connection cap cannot
//! lock a new client out, oversized request heads are refused without growing memory, floods
//! of refusals are counted rather than logged line by line, and out-of-range values are refused
//! at load naming key, line and range.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::{BIN, Running, write_config};
use crate::util::parse_sample;

/// How long any one wait in these tests may take before it counts as "never": far above every
/// timeout configured here, so that a slow machine does not fail a test.
const NEVER: Duration = Duration::from_secs(15);

/// The server as systemd would start it, with its own connection limits.
struct Hostile {
    run: Running,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Hostile {
    fn start(max_connections: usize, header_timeout: &str, max_pending: usize) -> Hostile {
        Self::start_under(max_connections, header_timeout, max_pending, None)
    }

    /// [`Hostile::start`], under an open-file limit of `fd_limit` when given.
    fn start_under(
        max_connections: usize,
        header_timeout: &str,
        max_pending: usize,
        fd_limit: Option<u32>,
    ) -> Hostile {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(
            &dir,
            &format!(
                "listen = \"127.0.0.1:0\"\n\
                 [heavy-load]\nperiod = \"0s\"\n\
                 [report]\ngeneration-time = \"100ms\"\n\
                 [limits]\nmax-pending = {max_pending}\nticket-ttl = \"10m\"\n\
                 max-connections = {max_connections}\nheader-timeout = \"{header_timeout}\"\n\
                 [shutdown]\ndrain-timeout = \"1s\"\n"
            ),
        );
        let mut run = match fd_limit {
            None => Running::start(&["--config", path.to_str().unwrap()]),
            Some(limit) => Running::start_command(
                Command::new("sh").args([
                    "-c",
                    &format!("ulimit -n {limit} && exec \"$0\" --config \"$1\""),
                    BIN,
                    path.to_str().unwrap(),
                ]),
                &[],
            ),
        };
        let address = run.address();
        let addr = address.trim_start_matches("http://").parse().unwrap();
        Hostile {
            run,
            addr,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The server's resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.run.child.id()))
            .expect("the server is running");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    async fn metric(&self, sample: &str) -> f64 {
        let text = fresh_client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        parse_sample(&text, sample).unwrap_or_else(|| panic!("no {sample} in\n{text}"))
    }

    async fn rejections(&self, reason: &str) -> f64 {
        self.metric(&format!(
            "report_apis_rejections_total{{reason=\"{reason}\"}}"
        ))
        .await
    }
}

/// A client that opens a new connection for every request, as a collector run does.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(NEVER)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Reads until the server closes the connection; `None` if it is still open after [`NEVER`].
async fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    match tokio::time::timeout(NEVER, stream.read_to_end(&mut received)).await {
        Ok(_) => Some(received),
        Err(_) => None,
    }
}

/// Appends what the server sends next to `buffer`; `None` if it closed or sent nothing within
/// [`NEVER`].
async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0_u8; 4096];
    let n = tokio::time::timeout(NEVER, stream.read(&mut chunk))
        .await
        .ok()?
        .ok()?;
    if n == 0 {
        return None;
    }
    buffer.extend_from_slice(&chunk[..n]);
    Some(())
}

/// One response read off a keep-alive connection: status and body (`Content-Length` only).
async fn read_response(stream: &mut TcpStream) -> Option<(u16, Vec<u8>)> {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        read_more(stream, &mut buffer).await?;
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        read_more(stream, &mut buffer).await?;
    }
    Some((status, buffer[head_end..head_end + length].to_vec()))
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Sends `bytes` one at a time every `pace` until the server closes the connection; returns
/// whatever it answered, or `None` if all was sent (the server waited it out) or it never
/// closed.
async fn trickle(addr: SocketAddr, bytes: Vec<u8>, pace: Duration) -> Option<Vec<u8>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sending = async move {
        for byte in bytes {
            if writer.write_all(&[byte]).await.is_err() {
                // Closed under us: the reader sees it.
                return std::future::pending().await;
            }
            tokio::time::sleep(pace).await;
        }
    };
    let closing = async move {
        let mut received = Vec::new();
        let _ = reader.read_to_end(&mut received).await;
        received
    };
    tokio::select! {
        () = sending => None,
        received = closing => Some(received),
        () = tokio::time::sleep(NEVER) => None,
    }
}

/// A request that takes far longer than any header timeout here to send a byte at a time.
fn padded_request() -> Vec<u8> {
    let mut request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 2000));
    request.extend_from_slice(b"\r\n\r\n");
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_senders_are_closed_at_the_header_timeout_wherever_they_stall() {
    let server = Hostile::start(64, "500ms", 100);
    let request = padded_request();
    // Paces below, near and above the timeout, and stalls at every part of a request head:
    // before the first byte, in the request line, in a header, before the blank line.
    let stalls: [&[u8]; 5] = [
        b"",
        b"GE",
        b"GET /healthz HTTP/1.1\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: loc",
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n",
    ];
    let mut probes = Vec::new();
    for pace in [10, 100, 400, 700] {
        probes.push(tokio::spawn(trickle(
            server.addr,
            request.clone(),
            Duration::from_millis(pace),
        )));
    }
    for stall in stalls {
        let addr = server.addr;
        probes.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(stall).await.unwrap();
            read_until_closed(&mut stream).await
        }));
    }
    let count = probes.len();
    for (n, probe) in probes.into_iter().enumerate() {
        let answer = probe.await.unwrap();
        let answer = answer.unwrap_or_else(|| panic!("probe {n}: the connection stayed open"));
        assert!(
            answer.is_empty(),
            "probe {n}: closed without an answer, got {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(server.rejections("header-timeout").await, count as f64);
    // And the server still answers.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(HEALTHZ).await.unwrap();
    assert_eq!(
        read_response(&mut stream).await,
        Some((200, b"ok".to_vec()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_and_busy_ones_kept() {
    let server = Hostile::start(64, "600ms", 100);
    // A connection that goes on asking before the timeout is served each time, whenever in
    // the timeout it asks: the timer restarts with every response.
    let mut busy = TcpStream::connect(server.addr).await.unwrap();
    for pause in [0, 100, 300, 450, 200] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        busy.write_all(HEALTHZ).await.unwrap();
        assert_eq!(
            read_response(&mut busy).await,
            Some((200, b"ok".to_vec())),
            "after {pause} ms"
        );
    }
    // Then idle: closed.
    assert_eq!(read_until_closed(&mut busy).await, Some(Vec::new()));
    // Idle after a ticket request too.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /request_report HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle).await.map(|(s, _)| s), Some(200));
    assert_eq!(read_until_closed(&mut idle).await, Some(Vec::new()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_above_the_connection_cap_cannot_lock_out_a_new_client() {
    const CAP: usize = 8;
    let server = Hostile::start(CAP, "1s", 100);
    let before = server.rss_kib();
    // Four times the cap of attackers, each reconnecting as soon as it is closed: half idle,
    // half with half a request head.
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    for n in 0..4 * CAP {
        let (addr, stop) = (server.addr, stop.clone());
        attackers.push(tokio::spawn(async move {
            let mut connections = 0_u32;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    continue;
                };
                connections += 1;
                if n % 2 == 1 {
                    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHos").await;
                }
                // Held until the server closes it.
                let mut sink = [0_u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    let read =
                        tokio::time::timeout(Duration::from_millis(100), stream.read(&mut sink));
                    if let Ok(Ok(0) | Err(_)) = read.await {
                        break;
                    }
                }
            }
            connections
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = fresh_client();
    for _ in 0..3 {
        let healthz = client.get(server.url("/healthz")).send().await;
        let healthz = healthz.expect("a new client is served during the flood");
        assert_eq!(healthz.text().await.unwrap(), "ok");
        let ticket = client.get(server.url("/request_report")).send().await;
        let ticket = ticket.expect("a new client gets a ticket during the flood");
        assert_eq!(ticket.status(), 200);
    }
    let during = server.rss_kib();
    stop.store(true, Ordering::Relaxed);
    let mut opened = 0;
    for attacker in attackers {
        opened += attacker.await.unwrap();
    }
    assert!(
        opened > 4 * u32::try_from(CAP).unwrap(),
        "the flood went on"
    );
    assert!(server.rejections("max-connections").await > 0.0);
    assert!(
        during < before + 32 * 1024,
        "resident memory grew from {before} KiB to {during} KiB under the flood"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_stays_below_the_open_file_limit_so_accept_never_runs_out() {
    // 200 idle connections against a server allowed 128 descriptors and configured for 512
    // connections: without the cap lowered to fit, accept fails (EMFILE) and nobody is served.
    let mut server = Hostile::start_under(512, "1s", 100, Some(128));
    let warning = tokio::task::block_in_place(|| server.run.wait_for("limits.max-connections"));
    assert!(
        warning.contains("leaves room for 64")
            && warning.contains(&format!(
                "MESSAGE_ID=\"{}\"",
                report_common::message_id::CONNECTIONS_CAPPED
            ))
            && warning.contains("MAX_CONNECTIONS=512 CAP=64"),
        "{warning}"
    );
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Served once the header timeout frees a place: it waited in the backlog.
    let healthz = fresh_client().get(server.url("/healthz")).send().await;
    assert_eq!(healthz.expect("served").text().await.unwrap(), "ok");
    assert!(server.metric("report_apis_connections_open").await <= 64.0);
    drop(idle);
    server.run.collect();
    assert!(
        !server.run.stderr().contains("cannot accept"),
        "{}",
        server.run.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_are_refused_without_growing_memory() {
    const BOMBS: usize = 200;
    let server = Hostile::start(256, "5s", 100);
    let before = server.rss_kib();
    // One huge header line, and too many headers.
    let mut long_line = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    long_line.extend(std::iter::repeat_n(b'a', 64 * 1024));
    long_line.extend_from_slice(b"\r\n\r\n");
    let mut many = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for n in 0..100 {
        many.extend_from_slice(format!("X-H{n}: {n}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    for request in [long_line, many] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let _ = stream.write_all(&request).await;
        let answer = read_until_closed(&mut stream)
            .await
            .expect("the server closes the connection");
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    // Many connections, each sending 400 KiB of unfinished header at once.
    let mut bombs = Vec::new();
    for _ in 0..BOMBS {
        let addr = server.addr;
        bombs.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let mut head = b"GET /healthz HTTP/1.1\r\nX-Bomb: ".to_vec();
            head.extend(std::iter::repeat_n(b'b', 400 * 1024));
            let _ = stream.write_all(&head).await;
            read_until_closed(&mut stream).await.is_some()
        }));
    }
    for bomb in bombs {
        assert!(bomb.await.unwrap(), "a bomb's connection stayed open");
    }
    let after = server.rss_kib();
    assert_eq!(
        server.rejections("head-too-large").await,
        (BOMBS + 2) as f64
    );
    assert!(
        after < before + 32 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(HEALTHZ).await.unwrap();
    assert_eq!(
        read_response(&mut stream).await,
        Some((200, b"ok".to_vec()))
    );
}

/// The count in a summary line's part about `max-pending`.
fn refused_in(line: &str) -> u64 {
    let Some(at) = line.find(" ticket requests refused with 503") else {
        return 0;
    };
    line[..at]
        .rsplit([' ', ':'])
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_is_counted_and_summarised_not_logged_line_by_line() {
    let mut server = Hostile::start(64, "10s", 1);
    let client = reqwest::Client::builder().timeout(NEVER).build().unwrap();
    let mut refused = 0_u64;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (client, url) = (client.clone(), server.url("/request_report"));
        clients.push(tokio::spawn(async move {
            let mut refused = 0_u64;
            for _ in 0..500 {
                let response = client.get(&url).send().await.unwrap();
                if response.status() == 503 {
                    refused += 1;
                }
            }
            refused
        }));
    }
    for client in clients {
        refused += client.await.unwrap();
    }
    assert_eq!(refused, 2000 - 1, "one ticket fits");
    assert_eq!(server.rejections("max-pending").await, refused as f64);
    // The summaries: one at most every 10 s; wait for the one that covers the end of the flood.
    let flood_over = std::time::Instant::now();
    let lines = tokio::task::block_in_place(|| {
        let mut summarised = 0;
        while summarised < refused && flood_over.elapsed() < Duration::from_secs(25) {
            std::thread::sleep(Duration::from_millis(200));
            server.run.collect();
            summarised = server.run.stderr().lines().map(refused_in).sum();
        }
        server.run.stderr()
    });
    let summaries: Vec<&str> = lines.lines().filter(|l| l.contains("rejected ")).collect();
    let summarised: u64 = summaries.iter().map(|l| refused_in(l)).sum();
    assert_eq!(summarised, refused, "{lines}");
    // The same counts as fields, for journalctl MESSAGE_ID=... MAX_PENDING_REJECTED=...
    let id = format!("MESSAGE_ID=\"{}\"", report_common::message_id::REJECTIONS);
    assert!(summaries.iter().all(|l| l.contains(&id)), "{lines}");
    let in_fields: u64 = summaries
        .iter()
        .filter_map(|l| {
            l.split_once(" MAX_PENDING_REJECTED=")?
                .1
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(in_fields, refused, "{lines}");
    assert!(summaries.len() <= 3, "{lines}");
    assert!(lines.lines().count() < 20, "{lines}");
    assert!(!lines.contains("answered 503"), "{lines}");
}

/// Out-of-range values through the real binary, one of each kind (a duration, a factor, a
/// count): every key's range is tested against the same loader in `config.rs`'s unit tests.
const OUT_OF_RANGE: [(&str, &str, &str, &str); 3] = [
    (
        "heavy-load",
        "period",
        "\"1ns\"",
        "\"0s\" (never toggle) or a duration from 100ms to 7days",
    ),
    ("report", "slowdown", "1e300", "from 0 to 100"),
    ("limits", "max-connections", "0", "from 1 to 65536"),
];

#[test]
fn check_config_refuses_each_out_of_range_value_naming_key_line_and_range() {
    let dir = tempfile::tempdir().unwrap();
    for (table, key, value, range) in OUT_OF_RANGE {
        let path = write_config(
            &dir,
            &format!("listen = \"127.0.0.1:0\"\n\n[{table}]\n{key} = {value}\n"),
        );
        let output = Command::new(BIN)
            .args(["--config", path.to_str().unwrap(), "check-config"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{table}.{key}: {stderr}");
        let place = format!("{}:4:1: key `{table}.{key}`: ", path.display());
        assert!(stderr.contains(&place), "{place} not in {stderr}");
        assert!(stderr.contains(range), "{range} not in {stderr}");
    }
}

#[test]
fn a_start_with_a_busy_loop_period_exits_78_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "listen = \"127.0.0.1:0\"\n[heavy-load]\nperiod = \"1ns\"\n",
    );
    let mut run = Running::start(&["--config", path.to_str().unwrap()]);
    let status = run.wait();
    let stderr = run.stderr();
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("heavy-load.period"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
}
