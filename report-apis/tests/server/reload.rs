//! Reloading a running server in-process: no ticket dropped, new settings for new tickets only.

use std::time::{Duration, Instant};

use crate::util::{Server, fast_config};

#[tokio::test]
async fn pending_tickets_survive_a_reload_and_only_new_tickets_use_the_new_settings() {
    let mut config = fast_config();
    config.report.slowdown = 0.0;
    config.report.generation_time = Duration::from_millis(1500);
    let (server, reloader) = Server::start_reloadable(config.clone()).await;
    let old = [server.request_ticket().await, server.request_ticket().await];

    config.report.generation_time = Duration::from_millis(100);
    let changes = reloader.reload(config.clone()).await.unwrap();
    assert!(changes.contains("report.generation-time"), "{changes}");
    let new = server.request_ticket().await;

    // The new ticket, at 100 ms, is served long before the old ones, at 1.5 s, are ready.
    let started = Instant::now();
    assert_eq!(server.collect(&new).await.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(1000));
    let (_, body) = server.get_text(&format!("/get_report/{}", old[0])).await;
    assert_eq!(body, "report is not ready");
    // Both old tickets are kept and served afterwards.
    for ticket in &old {
        let report = server.collect(ticket).await;
        assert_eq!(report.headers()["content-type"], "text/csv");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_lower_max_pending_refuses_new_tickets_but_evicts_none() {
    let mut config = fast_config();
    config.report.generation_time = Duration::from_millis(300);
    let (server, reloader) = Server::start_reloadable(config.clone()).await;
    let held = [server.request_ticket().await, server.request_ticket().await];

    config.limits.max_pending = 1;
    reloader.reload(config).await.unwrap();
    let (status, _) = server.get_text("/request_report").await;
    assert_eq!(status, 503, "over the new cap");
    for ticket in &held {
        assert_eq!(
            server.collect(ticket).await.headers()["content-type"],
            "text/csv"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_listen_change_is_refused_and_leaves_the_configuration_in_force() {
    let mut config = fast_config();
    config.report.generation_time = Duration::from_millis(100);
    let (server, reloader) = Server::start_reloadable(config.clone()).await;
    let ticket = server.request_ticket().await;

    let mut moved = config.clone();
    moved.listen = "127.0.0.1:1".parse().unwrap();
    moved.report.generation_time = Duration::from_secs(3600);
    let why = reloader.reload(moved).await.unwrap_err();
    assert!(why.contains("needs a restart"), "{why}");

    // Nothing of the refused file applies: a new ticket still takes 100 ms.
    let fresh = server.request_ticket().await;
    let started = Instant::now();
    assert_eq!(server.collect(&fresh).await.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(server.collect(&ticket).await.status(), 200);
    server.stop().await;
}
