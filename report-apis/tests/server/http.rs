//! The HTTP interface over real loopback connections: wire format, errors, cap, expiry.

use std::time::Duration;

use crate::util::{Server, fast_config, raw_get};

const CSV_0: &str = "timestamp,data\n0,data-0\n1,data-1\n2,data-2\n3,data-3\n4,data-4\n";

#[tokio::test]
async fn a_client_doing_what_the_original_collector_does_gets_its_csv() {
    let server = Server::start(fast_config()).await;
    // The original: one GET /request_report, the body is the ticket...
    let ticket = server.get("/request_report").await.text().await.unwrap();
    // ...then GET /get_report/<ticket> while the body is exactly "report is not ready".
    let mut body;
    let mut polls = 0;
    loop {
        body = server
            .get(&format!("/get_report/{ticket}"))
            .await
            .text()
            .await
            .unwrap();
        if body != "report is not ready" {
            break;
        }
        polls += 1;
        assert!(polls < 500, "report never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(body, CSV_0);
    server.stop().await;
}

#[tokio::test]
async fn ticket_is_a_uuid_v4_and_the_offset_as_plain_text() {
    let server = Server::start(fast_config()).await;
    let response = server.get("/request_report?offset=42").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let ticket = response.text().await.unwrap();
    let (id, offset) = ticket.split_once('_').unwrap();
    assert_eq!(offset, "42");
    let id = uuid::Uuid::parse_str(id).unwrap();
    assert_eq!(id.get_version_num(), 4);
    assert_eq!(id.hyphenated().to_string(), ticket[..36]);
    server.stop().await;
}

#[tokio::test]
async fn ready_report_is_the_original_csv_with_its_headers() {
    let server = Server::start(fast_config()).await;
    let (_, ticket) = server.get_text("/request_report?offset=42").await;
    let response = server.collect(&ticket).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/csv");
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"42.csv\""
    );
    assert_eq!(
        response.text().await.unwrap(),
        "timestamp,data\n42,data-0\n43,data-1\n44,data-2\n45,data-3\n46,data-4\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn offset_defaults_to_zero_and_bad_offsets_are_400() {
    let server = Server::start(fast_config()).await;
    for path in [
        "/request_report",
        "/request_report?offset=",
        "/request_report?other=1",
    ] {
        let (status, ticket) = server.get_text(path).await;
        assert_eq!(status, 200);
        assert!(ticket.ends_with("_0"), "{path}: {ticket}");
    }
    let (status, ticket) = server
        .get_text("/request_report?offset=9223372036854775807")
        .await;
    assert_eq!(status, 200);
    let csv = server.collect(&ticket).await.text().await.unwrap();
    assert!(csv.ends_with("9223372036854775811,data-4\n"), "{csv}");

    for bad in [
        "-1",
        "abc",
        "1.5",
        "9223372036854775808",
        "99999999999999999999",
        "%FF",
        "1%200",
    ] {
        let (status, body) = server
            .get_text(&format!("/request_report?offset={bad}"))
            .await;
        assert_eq!(status, 400, "offset={bad}");
        assert!(body.starts_with("invalid offset format"), "{body}");
        assert_eq!(body.lines().count(), 1, "one-line message: {body:?}");
    }
    assert_eq!(
        server.metric("report_apis_tickets_issued_total").await,
        4.0,
        "a refused request issues no ticket"
    );
    server.stop().await;
}

#[tokio::test]
async fn not_ready_is_200_with_the_exact_body_and_retry_after() {
    let mut config = fast_config();
    // Heavy load for good: nothing is ever ready.
    config.heavy_load.initially_on = true;
    let server = Server::start(config).await;
    let ticket = server.request_ticket().await;
    let response = server.get(&format!("/get_report/{ticket}")).await;
    assert_eq!(response.status(), 200);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_eq!(response.text().await.unwrap(), "report is not ready");
    server.stop().await;
}

#[tokio::test]
async fn malformed_tickets_get_the_original_messages_and_unknown_ones_404() {
    let server = Server::start(fast_config()).await;
    let id = "123e4567-e89b-42d3-a456-426614174000";
    for (ticket, status, body) in [
        ("abc", 400, "invalid ticketId format\n"),
        (&format!("{id}_1_2"), 400, "invalid ticketId format\n"),
        (&format!("{id}_x"), 400, "invalid offset format\n"),
        ("not-a-uuid_5", 400, "invalid ticketId format\n"),
        ("_5", 400, "invalid ticketId format\n"),
    ] {
        let (got, text) = server.get_text(&format!("/get_report/{ticket}")).await;
        assert_eq!((got, text.as_str()), (status, body), "ticket {ticket:?}");
    }
    for ticket in [format!("{id}_0"), format!("{id}_-5")] {
        let (status, body) = server.get_text(&format!("/get_report/{ticket}")).await;
        assert_eq!(status, 404, "{ticket}");
        assert!(body.contains("request a new one"), "{body}");
    }
    // A real ticket with another offset was never issued.
    let ticket = server.request_ticket().await;
    let other = ticket.replace("_0", "_1");
    assert_eq!(
        server.get_text(&format!("/get_report/{other}")).await.0,
        404
    );
    server.stop().await;
}

#[tokio::test]
async fn hostile_tickets_and_paths_never_get_a_5xx() {
    let server = Server::start(fast_config()).await;
    let ticket = server.request_ticket().await;
    let (id, _) = ticket.split_once('_').unwrap();
    let long = format!("/get_report/{}", "a".repeat(10 * 1024));
    let long_underscores = format!("/get_report/{}", "_".repeat(10 * 1024));
    let encoded_underscore = format!("/get_report/{id}%5F0");
    let cases: Vec<(&[u8], &[u16])> = vec![
        (b"/get_report/", &[400]),
        (long.as_bytes(), &[400]),
        (long_underscores.as_bytes(), &[400]),
        (b"/get_report/%FF%FE_1", &[400]),
        (b"/get_report/\xff\xfe_1", &[400]),
        (b"/get_report/%00_1", &[400]),
        (b"/get_report/a_b_c", &[400]),
        (b"/get_report/..%2F..%2Fetc%2Fpasswd", &[400]),
        (b"/get_report/../../etc/passwd", &[404]),
        (b"/get_report/..", &[400]),
        (b"/get_report/%2e%2e%2f_1", &[400]),
        (b"/get_report/%", &[400]),
        (b"/get_report/%zz_1", &[400]),
        (b"/request_report?offset=%00", &[400]),
        (b"/request_report?offset=\xff", &[400]),
        (b"/%FF", &[404]),
        (b"*", &[400, 404]),
        // Percent-decoded like the original, so an encoded `_` still names the ticket.
        (encoded_underscore.as_bytes(), &[200]),
    ];
    for (target, expected) in cases {
        let status = raw_get(server.addr, target).await;
        let shown = String::from_utf8_lossy(&target[..target.len().min(60)]).into_owned();
        let status = status.unwrap_or_else(|| panic!("no answer for {shown}"));
        assert!(status < 500, "{shown} gave {status}");
        assert!(
            expected.contains(&status),
            "{shown} gave {status}, expected {expected:?}"
        );
    }
    let (status, body) = server.get_text("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(server.metric("report_apis_tickets_issued_total").await, 1.0);
    server.stop().await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let server = Server::start(fast_config()).await;
    for path in [
        "/",
        "/foo",
        "/get_report",
        "/request_report/x",
        "/get_report/a/b",
        "/metrics/x",
    ] {
        let (status, body) = server.get_text(path).await;
        assert_eq!(status, 404, "{path}");
        assert!(body.contains("/request_report"), "{body}");
    }
    let ticket = server.request_ticket().await;
    for (method, path) in [
        (reqwest::Method::POST, "/request_report".to_owned()),
        (reqwest::Method::PUT, format!("/get_report/{ticket}")),
        (reqwest::Method::DELETE, "/request_report".to_owned()),
        (reqwest::Method::POST, "/metrics".to_owned()),
        (reqwest::Method::PATCH, "/healthz".to_owned()),
    ] {
        let response = server
            .client
            .request(method.clone(), server.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert!(response.headers().contains_key("allow"));
    }
    // HEAD works wherever GET does.
    let response = server
        .client
        .head(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_fetched_report_stops_being_pending_and_can_be_fetched_again() {
    let server = Server::start(fast_config()).await;
    let ticket = server.request_ticket().await;
    assert_eq!(server.metric("report_apis_tickets_pending").await, 1.0);
    server
        .wait_for_metric("report_apis_tickets_ready", 1.0)
        .await;
    let first = server.collect(&ticket).await.text().await.unwrap();
    assert_eq!(first, CSV_0);
    assert_eq!(server.metric("report_apis_tickets_pending").await, 0.0);
    assert_eq!(server.metric("report_apis_tickets_ready").await, 0.0);
    let second = server.collect(&ticket).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.text().await.unwrap(), CSV_0);
    assert_eq!(server.metric("report_apis_tickets_pending").await, 0.0);
    assert_eq!(server.metric("report_apis_tickets_pending_peak").await, 1.0);
    server.stop().await;
}

#[tokio::test]
async fn at_the_cap_new_tickets_get_503_with_retry_after() {
    let mut config = fast_config();
    config.limits.max_pending = 3;
    let server = Server::start(config).await;
    let tickets = [
        server.request_ticket().await,
        server.request_ticket().await,
        server.request_ticket().await,
    ];
    for _ in 0..5 {
        let response = server.get("/request_report").await;
        assert_eq!(response.status(), 503);
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after >= 1);
        let body = response.text().await.unwrap();
        assert!(body.contains("Retry-After"), "{body}");
    }
    assert_eq!(
        server.metric("report_apis_tickets_rejected_total").await,
        5.0
    );
    // The tickets already held are still served.
    for ticket in &tickets {
        assert_eq!(server.collect(ticket).await.status(), 200);
    }
    server.stop().await;
}

#[tokio::test]
async fn tickets_expire_ttl_after_ready_or_three_ttl_after_request() {
    let mut config = fast_config();
    config.report.generation_time = Duration::from_millis(50);
    config.limits.ticket_ttl = Duration::from_millis(200);
    config.limits.max_pending = 1;
    let server = Server::start(config).await;
    let ticket = server.request_ticket().await;
    assert_eq!(server.collect(&ticket).await.status(), 200);
    // Ready after 50 ms, gone 200 ms later; wait well past that.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, _) = server.get_text(&format!("/get_report/{ticket}")).await;
    assert_eq!(status, 404);
    assert_eq!(
        server.metric("report_apis_tickets_expired_total").await,
        1.0
    );
    // Its place is free again.
    server.request_ticket().await;
    server.stop().await;

    let mut config = fast_config();
    config.heavy_load.initially_on = true;
    config.limits.ticket_ttl = Duration::from_millis(100);
    let server = Server::start(config).await;
    let ticket = server.request_ticket().await;
    // Never ready under endless heavy load: gone 3 x 100 ms after the request.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        server.get_text(&format!("/get_report/{ticket}")).await.0,
        404
    );
    assert_eq!(server.metric("report_apis_tickets_pending").await, 0.0);
    server.stop().await;
}

#[tokio::test]
async fn metrics_name_routes_by_pattern_and_cover_every_count() {
    let server = Server::start(fast_config()).await;
    let ticket = server.request_ticket().await;
    server.collect(&ticket).await;
    server.get("/no/such/route").await;
    let (status, text) = server.get_text("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "report_apis_tickets_issued_total 1",
        "report_apis_tickets_pending 0",
        "report_apis_tickets_ready 0",
        "report_apis_tickets_expired_total 0",
        "report_apis_tickets_rejected_total 0",
        "report_apis_tickets_pending_peak 1",
        "report_apis_heavy_load 0",
        "report_apis_http_requests_total{route=\"/request_report\",method=\"GET\",status=\"200\"} 1",
        "report_apis_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1",
        "report_apis_report_generation_seconds_count 1",
    ] {
        assert!(text.contains(name), "missing {name:?} in\n{text}");
    }
    assert!(text.contains("report_apis_http_requests_total{route=\"/get_report/{ticket}\",method=\"GET\",status=\"200\"}"));
    let (id, _) = ticket.split_once('_').unwrap();
    assert!(!text.contains(id), "a raw path leaked into a label");
    assert!(!text.contains("/no/such/route"));
    server.stop().await;
}

/// Sends the first half of a request head, so the connection is busy with a request.
async fn half_a_request(server: &Server) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    // Let the server read it before the shutdown begins.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream
}

#[tokio::test]
async fn shutdown_lets_a_request_in_progress_finish() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(fast_config()).await;
    let mut stream = half_a_request(&server).await;
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!stopping.is_finished(), "the server waits for the request");
    stream
        .write_all(b"Connection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("ok"), "{response}");
    stopping.await.unwrap();
}

#[tokio::test]
async fn shutdown_gives_up_on_a_stuck_connection_after_the_drain_timeout() {
    let mut config = fast_config();
    config.shutdown.drain_timeout = Duration::from_millis(300);
    let server = Server::start(config).await;
    let _stuck = half_a_request(&server).await;
    let began = tokio::time::Instant::now();
    // `stop` asserts that run() returns Ok.
    server.stop().await;
    assert!(began.elapsed() >= Duration::from_millis(300));
}
