//! The lines an operator looks for in the journal: each carries its `MESSAGE_ID` and every field
//! its catalog entry (`packaging/debian/report-apis/report-apis.catalog`) fills in, since
//! `journalctl -x` prints a missing field's bare name instead.

use std::time::Duration;

use report_common::logging::capture::{self, Fields};
use report_common::message_id;

use crate::util::{Server, fast_config};

const CATALOG: &str = include_str!("../../../packaging/debian/report-apis/report-apis.catalog");

fn placeholders(id: &str) -> Vec<String> {
    message_id::placeholders(CATALOG, id)
}

fn assert_fills_its_catalog_entry(id: &str, line: &Fields) {
    for field in placeholders(id) {
        assert!(
            line.contains_key(&field),
            "catalog entry {id} uses @{field}@, which the line lacks: {line:?}"
        );
    }
}

#[tokio::test]
async fn ready_and_heavy_load_lines_carry_their_message_ids() {
    // A current-thread runtime: the server's tasks log on this thread, into the capture.
    let (captured, _guard) = capture::start();
    let mut config = fast_config();
    config.heavy_load.period = Duration::from_millis(100);
    let server = Server::start(config).await;
    let addr = server.addr;
    for _ in 0..250 {
        if !captured.with_id(message_id::HEAVY_LOAD_OFF).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;

    let ready = captured.with_id(message_id::SERVER_READY);
    assert_eq!(ready.len(), 1, "{:?}", captured.events());
    assert_eq!(ready[0]["LISTEN"], addr.to_string());
    assert_fills_its_catalog_entry(message_id::SERVER_READY, &ready[0]);

    let on = captured.with_id(message_id::HEAVY_LOAD_ON);
    let off = captured.with_id(message_id::HEAVY_LOAD_OFF);
    assert!(!on.is_empty() && !off.is_empty(), "{:?}", captured.events());
    assert_eq!(on[0]["HEAVY_LOAD"], "1");
    assert_eq!(off[0]["HEAVY_LOAD"], "0");
    assert_fills_its_catalog_entry(message_id::HEAVY_LOAD_ON, &on[0]);
    assert_fills_its_catalog_entry(message_id::HEAVY_LOAD_OFF, &off[0]);
}
