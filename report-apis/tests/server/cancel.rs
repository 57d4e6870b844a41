//! `DELETE /get_report/{ticket}`, this server's addition: a collector drops a ticket it will
//! never fetch, so that it stops slowing every other report down.

use std::time::Duration;

use report_apis::Config;

use crate::util::{Server, fast_config};

const CANCELLED: &str = "report_apis_tickets_cancelled_total";
const PENDING: &str = "report_apis_tickets_pending";

/// Reports that stay pending for the whole test, each slowed by the others as by default.
fn slow_config() -> Config {
    let mut config = fast_config();
    config.report.generation_time = Duration::from_secs(10);
    config.report.slowdown = 1.0;
    config
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_cancelled_pending_ticket_is_gone_like_one_never_issued() {
    let server = Server::start(slow_config()).await;
    let ticket = server.request_ticket().await;
    assert_eq!(server.metric(PENDING).await, 1.0);

    let response = server.delete(&format!("/get_report/{ticket}")).await;
    assert_eq!(response.status(), 204);
    assert!(response.text().await.unwrap().is_empty());
    assert_eq!(server.metric(PENDING).await, 0.0);
    assert_eq!(server.metric("report_apis_tickets_pending_peak").await, 1.0);
    assert_eq!(server.metric(CANCELLED).await, 1.0);

    // The same answer as for a ticket the server never issued.
    let never = format!("{}_0", uuid::Uuid::new_v4());
    let after = server.get_text(&format!("/get_report/{ticket}")).await;
    assert_eq!(after.0, 404);
    assert_eq!(
        after,
        server.get_text(&format!("/get_report/{never}")).await
    );
    assert_eq!(
        server
            .metric(
                "report_apis_http_requests_total{route=\"/get_report/{ticket}\",method=\"DELETE\",status=\"204\"}"
            )
            .await,
        1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn cancelling_twice_or_an_unknown_ticket_is_harmless_and_counted_once() {
    let server = Server::start(slow_config()).await;
    let ticket = server.request_ticket().await;
    for _ in 0..2 {
        let response = server.delete(&format!("/get_report/{ticket}")).await;
        assert_eq!(response.status(), 204);
    }
    assert_eq!(server.metric(CANCELLED).await, 1.0);

    let id = uuid::Uuid::new_v4();
    let other = server.request_ticket().await;
    let other_id = other.strip_suffix("_0").unwrap();
    for unknown in [
        format!("{id}_0"),
        // Well-formed but never issued, as for a GET.
        format!("{id}_-1"),
        // A held ticket's id with another offset names another ticket, which is not held.
        format!("{other_id}_1"),
    ] {
        let response = server.delete(&format!("/get_report/{unknown}")).await;
        assert_eq!(response.status(), 204, "{unknown}");
    }
    assert_eq!(server.metric(CANCELLED).await, 1.0);
    assert_eq!(server.metric(PENDING).await, 1.0, "{other} is still held");
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_ticket_is_refused_as_a_get_refuses_it() {
    let server = Server::start(slow_config()).await;
    let id = uuid::Uuid::new_v4();
    for ticket in [
        String::new(),
        "abc".to_owned(),
        id.to_string(),
        format!("{id}_x"),
        format!("{id}_1_2"),
        format!("{id}_99999999999999999999"),
        // Not UTF-8 once percent-decoded.
        "%FF_1".to_owned(),
    ] {
        let path = format!("/get_report/{ticket}");
        let get = server.get(&path).await;
        let delete = server.delete(&path).await;
        assert!(get.status().is_client_error(), "{path}: {}", get.status());
        assert_eq!(delete.status(), get.status(), "{path}");
        assert_eq!(
            delete.headers()["content-type"],
            get.headers()["content-type"]
        );
        assert_eq!(delete.text().await.unwrap(), get.text().await.unwrap());
    }
    assert_eq!(server.metric(CANCELLED).await, 0.0);
    server.stop().await;
}

#[tokio::test]
async fn a_cancelled_ticket_no_longer_slows_another() {
    let server = Server::start(slow_config()).await;
    let abandoned = server.request_ticket().await;
    let wanted = server.request_ticket().await;
    let path = format!("/get_report/{wanted}");
    // Two pending: about 10 s of work left at half speed. The server's own estimate shows it,
    // so the test does not race the clock (a slow machine only lowers both numbers a little).
    let both = retry_after(&server.get(&path).await);
    assert!(
        (15..=20).contains(&both),
        "Retry-After {both} with two pending"
    );

    let response = server.delete(&format!("/get_report/{abandoned}")).await;
    assert_eq!(response.status(), 204);
    let alone = retry_after(&server.get(&path).await);
    assert!(
        alone <= 10,
        "Retry-After {alone} once the other is cancelled"
    );
    assert!(alone < both);
    server.stop().await;
}

#[tokio::test]
async fn a_ready_unfetched_ticket_is_dropped_too() {
    let server = Server::start(fast_config()).await;
    let ticket = server.request_ticket().await;
    // Ready, not fetched: still pending, still slowing the others.
    server
        .wait_for_metric("report_apis_tickets_ready", 1.0)
        .await;
    assert_eq!(server.metric(PENDING).await, 1.0);

    let response = server.delete(&format!("/get_report/{ticket}")).await;
    assert_eq!(response.status(), 204);
    assert_eq!(server.metric("report_apis_tickets_ready").await, 0.0);
    assert_eq!(server.metric(PENDING).await, 0.0);
    assert_eq!(server.metric(CANCELLED).await, 1.0);
    let (status, _) = server.get_text(&format!("/get_report/{ticket}")).await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn other_methods_on_the_report_path_are_still_405_and_allow_names_delete() {
    let server = Server::start(slow_config()).await;
    let ticket = server.request_ticket().await;
    for method in [reqwest::Method::PUT, reqwest::Method::POST] {
        let response = server
            .client
            .request(method.clone(), server.url(&format!("/get_report/{ticket}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}");
        let allow = response.headers()["allow"].to_str().unwrap();
        let allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
        for wanted in ["GET", "HEAD", "DELETE"] {
            assert!(allowed.contains(&wanted), "{method}: Allow {allow}");
        }
    }
    // The ticket survived those requests.
    assert_eq!(server.metric(PENDING).await, 1.0);
    server.stop().await;
}
