//! The load model seen from outside: overlapping requests slow every report down, heavy-load
//! phases freeze them, and requests piled up during one leave the server slower afterwards.
//!
//! Generation times are read from `report_apis_report_generation_seconds`, whose values the
//! model fixes exactly (they do not depend on how fast this machine runs the test): only the
//! bucket boundaries are asserted.

use std::time::Duration;

use tokio::time::Instant;

use crate::util::{Server, fast_config};

const GENERATION: Duration = Duration::from_millis(100);

/// Count of generation times at or below `le` seconds.
async fn generated_within(server: &Server, le: &str) -> f64 {
    server
        .metric(&format!(
            "report_apis_report_generation_seconds_bucket{{le=\"{le}\"}}"
        ))
        .await
}

/// Requests `n` tickets at once, fetches none until all are ready, then collects them all.
/// Returns the mean generation time the server reports, and the client's wall time per CSV.
async fn overlapping(server: &Server, n: usize) -> (f64, Duration) {
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (client, url) = (server.client.clone(), server.url("/request_report"));
        requests.spawn(async move { client.get(url).send().await.unwrap().text().await.unwrap() });
    }
    let tickets = requests.join_all().await;
    server
        .wait_for_metric("report_apis_tickets_ready", n as f64)
        .await;
    for ticket in &tickets {
        assert_eq!(server.collect(ticket).await.status(), 200);
    }
    let sum = server
        .metric("report_apis_report_generation_seconds_sum")
        .await;
    let count = server
        .metric("report_apis_report_generation_seconds_count")
        .await;
    (sum / count, started.elapsed())
}

#[tokio::test]
async fn overlapping_requests_make_every_report_slower() {
    let mut config = fast_config();
    config.report.generation_time = GENERATION;
    config.report.slowdown = 1.0;

    let alone = Server::start(config.clone()).await;
    let (mean_alone, wall_alone) = overlapping(&alone, 1).await;
    // Alone, a report takes exactly the generation time.
    assert_eq!(generated_within(&alone, "0.2").await, 1.0);
    alone.stop().await;

    let crowded = Server::start(config).await;
    let n = 8;
    let (mean_crowded, wall_crowded) = overlapping(&crowded, n).await;
    eprintln!(
        "mean generation time: 1 ticket {mean_alone:.3} s ({wall_alone:?} wall), \
         {n} overlapping {mean_crowded:.3} s ({wall_crowded:?} wall)"
    );
    // The last ticket requested had the other seven pending for its whole life:
    // 100 ms x (1 + 7) = 0.8 s, above the 0.4 s bucket; none was faster than alone.
    assert_eq!(generated_within(&crowded, "0.05").await, 0.0);
    assert!(generated_within(&crowded, "0.4").await < n as f64);
    assert_eq!(generated_within(&crowded, "0.8").await, n as f64);
    assert!(mean_crowded > mean_alone);
    assert_eq!(
        crowded.metric("report_apis_tickets_pending_peak").await,
        n as f64
    );
    crowded.stop().await;
}

#[tokio::test]
async fn heavy_load_phases_toggle_and_reports_still_arrive() {
    const PERIOD: Duration = Duration::from_millis(300);
    let mut config = fast_config();
    config.heavy_load.period = PERIOD;
    let server = Server::start(config).await;
    let ticket = server.request_ticket().await;
    let path = format!("/get_report/{ticket}");
    // A fetch is known to fall inside one heavy phase when the gauge reads 1 just before and
    // just after it, less than a period apart; then it must not serve the report (which has
    // been generated long since: 100 ms alone, before the first phase at 300 ms).
    let mut checked = false;
    for _ in 0..500 {
        let began = Instant::now();
        if server.metric("report_apis_heavy_load").await == 1.0 {
            let (status, body) = server.get_text(&path).await;
            let still_heavy = server.metric("report_apis_heavy_load").await == 1.0;
            if still_heavy && began.elapsed() < PERIOD {
                assert_eq!(
                    (status, body.as_str()),
                    (200, "report is not ready"),
                    "a heavy phase served the report"
                );
                checked = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(checked, "never caught a fetch inside a heavy phase");
    server.wait_for_metric("report_apis_heavy_load", 0.0).await;
    let response = server.collect(&ticket).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv",
        "the report is served once the phase is over"
    );
    assert!(
        response
            .text()
            .await
            .unwrap()
            .starts_with("timestamp,data\n")
    );
    server.stop().await;
}

#[tokio::test]
async fn requests_piled_up_during_heavy_load_leave_the_server_slower_afterwards() {
    let mut config = fast_config();
    config.report.generation_time = GENERATION;
    config.heavy_load.initially_on = true;
    config.heavy_load.period = Duration::from_millis(500);
    let server = Server::start(config).await;
    // Five collectors with no overlap control each asked for a report during the heavy phase
    // and gave up (none is ever fetched).
    for _ in 0..5 {
        server.request_ticket().await;
    }
    server.wait_for_metric("report_apis_heavy_load", 0.0).await;
    let asked = Instant::now();
    let fresh = server.request_ticket().await;
    assert_eq!(server.collect(&fresh).await.status(), 200);
    let took = asked.elapsed();
    eprintln!("a fresh report after the heavy phase took {took:?} (alone: {GENERATION:?})");
    // The fresh ticket shared the server with five pending ones: 100 ms x (1 + 5) = 0.6 s at
    // least; the abandoned ones waited out the heavy phase on top. Alone it would be 0.1 s.
    assert_eq!(generated_within(&server, "0.4").await, 0.0);
    assert_eq!(
        server
            .metric("report_apis_report_generation_seconds_count")
            .await,
        6.0
    );
    assert!(took >= Duration::from_millis(600));
    server.stop().await;
}
