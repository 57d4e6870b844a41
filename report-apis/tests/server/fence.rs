//! The fence over real HTTP: stale tokens refused on every route, marks raised and kept across
//! a reload and a restart of the real binary, one pending ticket per lock, the header checked,
//! the bound on locks, and `enforce = false` as the control that shows the checks can fail.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use report_apis::Config;
use report_common::fence::{Fence, LockName, Token};
use report_common::message_id;
use uuid::Uuid;

use crate::cli::{Running, lines_with_id, write_config};
use crate::util::{Server, fast_config};

const A: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
const B: Uuid = Uuid::from_u128(0xfedc_ba98_7654_3210_fedc_ba98_7654_3210);
const MARK: &str = "report-fence-mark";

fn fence(id: Uuid, epoch: u64, count: u64) -> String {
    let name = if id == A { "fleet/a" } else { "fleet b" };
    Fence {
        lock: LockName::new(name).unwrap(),
        id,
        token: Token::new(epoch, count),
    }
    .header_value()
}

/// A configuration whose marks go to `dir`.
fn config_in(dir: &Path) -> Config {
    let mut config = fast_config();
    config.fence.state_file = dir.join("fence.json");
    config
}

/// Status, the `Report-Fence-Mark` header if any, and the body.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    mark: Option<String>,
    body: String,
}

async fn send(server: &Server, method: &str, path: &str, fences: &[&str]) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = server.client.request(method, server.url(path));
    for value in fences {
        request = request.header("Report-Fence", *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let mark = response
        .headers()
        .get(MARK)
        .map(|v| v.to_str().unwrap().to_owned());
    Answer {
        status,
        mark,
        body: response.text().await.unwrap(),
    }
}

async fn ticket(server: &Server, fence: &str) -> String {
    let answer = send(server, "GET", "/request_report?offset=3", &[fence]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body
}

#[tokio::test]
async fn a_stale_token_is_refused_on_every_route_and_equal_or_above_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config_in(dir.path())).await;
    let first = send(&server, "GET", "/request_report", &[&fence(A, 1, 7)]).await;
    assert_eq!((first.status, first.mark.as_deref()), (200, Some("1.7")));
    let path = format!("/get_report/{}", first.body);

    for (method, route) in [
        ("GET", "/request_report"),
        ("GET", path.as_str()),
        ("DELETE", path.as_str()),
    ] {
        let stale = send(&server, method, route, &[&fence(A, 1, 5)]).await;
        assert_eq!(
            stale,
            Answer {
                status: 409,
                mark: Some("1.7".to_owned()),
                body: "this request's token 1.5 of lock \"fleet/a\" is below the lock's mark \
                       1.7: another holder has taken the lock since; this run must stop and \
                       leave the ticket to it\n"
                    .to_owned(),
            },
            "{method} {route}"
        );
    }
    // The stale cancel dropped nothing: the holder at the mark still gets its report.
    let equal = send(&server, "GET", &path, &[&fence(A, 1, 7)]).await;
    assert_eq!((equal.status, equal.mark.as_deref()), (200, Some("1.7")));
    // A new epoch raises the mark, whatever its count.
    let above = send(&server, "GET", &path, &[&fence(A, 2, 0)]).await;
    assert_eq!((above.status, above.mark.as_deref()), (200, Some("2.0")));
    let stale = send(&server, "GET", &path, &[&fence(A, 1, 99)]).await;
    assert_eq!((stale.status, stale.mark.as_deref()), (409, Some("2.0")));
    // An unknown ticket's 404 carries the mark too.
    let unknown = format!("/get_report/{}_3", Uuid::new_v4());
    let gone = send(&server, "GET", &unknown, &[&fence(A, 2, 0)]).await;
    assert_eq!((gone.status, gone.mark.as_deref()), (404, Some("2.0")));
    assert_eq!(
        server
            .metric("report_apis_rejections_total{reason=\"fence-stale\"}")
            .await,
        4.0
    );
    server.stop().await;
}

#[tokio::test]
async fn tokenless_requests_are_served_as_before_with_the_original_s_bodies_and_no_mark() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config_in(dir.path())).await;
    ticket(&server, &fence(A, 5, 5)).await;
    let issued = send(&server, "GET", "/request_report?offset=3", &[]).await;
    assert_eq!((issued.status, issued.mark), (200, None));
    let path = format!("/get_report/{}", issued.body);
    let not_ready = send(&server, "GET", &path, &[]).await;
    assert_eq!(
        (not_ready.status, not_ready.mark, not_ready.body.as_str()),
        (200, None, "report is not ready")
    );
    for (path, status, body) in [
        ("/get_report/nope", 400, "invalid ticketId format\n"),
        (
            "/get_report/0b1c5b8e-2d7b-4f1e-9d55-6a8d7f0c2a11_x",
            400,
            "invalid offset format\n",
        ),
        (
            "/get_report/0b1c5b8e-2d7b-4f1e-9d55-6a8d7f0c2a11_3",
            404,
            "ticket not found: it was never issued or has expired; request a new one with /request_report\n",
        ),
    ] {
        let answer = send(&server, "GET", path, &[]).await;
        assert_eq!(
            answer,
            Answer {
                status,
                mark: None,
                body: body.to_owned()
            }
        );
    }
    let collected = server.collect(&issued.body).await;
    assert!(collected.headers().get(MARK).is_none());
    assert_eq!(collected.text().await.unwrap().lines().count(), 6);
    // A tokenless ticket is anyone's to cancel, as before.
    let cancel = send(&server, "DELETE", &path, &[]).await;
    assert_eq!((cancel.status, cancel.mark), (204, None));
    server.stop().await;
}

#[tokio::test]
async fn a_fenced_ticket_is_cancelled_only_by_its_own_lock() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config_in(dir.path())).await;
    let mine = ticket(&server, &fence(A, 1, 1)).await;
    ticket(&server, &fence(B, 4, 0)).await;
    let path = format!("/get_report/{mine}");

    let tokenless = send(&server, "DELETE", &path, &[]).await;
    assert_eq!(
        tokenless,
        Answer {
            status: 409,
            mark: None,
            body: "this ticket was issued under a lock's fence: only a holder of that lock may \
                   cancel it, with its Report-Fence header\n"
                .to_owned()
        }
    );
    let other = send(&server, "DELETE", &path, &[&fence(B, 4, 0)]).await;
    assert_eq!((other.status, other.mark.as_deref()), (409, Some("4.0")));
    assert!(other.body.contains("another lock's fence"), "{other:?}");
    assert_eq!(send(&server, "GET", &path, &[]).await.status, 200);

    let own = send(&server, "DELETE", &path, &[&fence(A, 1, 1)]).await;
    assert_eq!(
        (own.status, own.mark.as_deref(), own.body.as_str()),
        (204, Some("1.1"), "")
    );
    assert_eq!(send(&server, "GET", &path, &[]).await.status, 404);
    for (reason, count) in [("fence-other-lock", 1.0), ("fence-tokenless-cancel", 1.0)] {
        let sample = format!("report_apis_rejections_total{{reason=\"{reason}\"}}");
        assert_eq!(server.metric(&sample).await, count, "{reason}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_lock_s_pending_ticket_is_handed_back_until_fetched_and_another_lock_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config_in(dir.path())).await;
    let first = ticket(&server, &fence(A, 1, 1)).await;
    // A holder that stopped before recording its ticket, and the next one.
    assert_eq!(ticket(&server, &fence(A, 1, 1)).await, first);
    assert_eq!(ticket(&server, &fence(A, 1, 2)).await, first);
    let other = ticket(&server, &fence(B, 1, 1)).await;
    assert_ne!(other, first);
    let id = A.simple();
    assert_eq!(
        server
            .metric(&format!(
                "report_apis_fence_pending_tickets{{lock=\"fleet/a\",lock_id=\"{id}\"}}"
            ))
            .await,
        1.0
    );
    assert_eq!(
        server.metric("report_apis_tickets_pending").await,
        2.0,
        "two locks, two tickets"
    );
    assert_eq!(
        server
            .metric("report_apis_fence_tickets_returned_total")
            .await,
        2.0
    );

    let report = server.collect(&first).await;
    assert_eq!(report.status(), 200);
    let next = ticket(&server, &fence(A, 1, 2)).await;
    assert_ne!(next, first, "a fetched ticket is no longer pending");
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_long_or_repeated_header_is_400_counted_and_touches_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config_in(dir.path())).await;
    let held = ticket(&server, &fence(A, 3, 3)).await;
    let path = format!("/get_report/{held}");
    let long = format!("lock={}; id={}; token=9.9", "x".repeat(700), A.simple());
    let id = A.simple();
    let cases: [(Vec<String>, &str); 5] = [
        (
            vec!["lock=a".to_owned()],
            "not \"lock=NAME; id=ID; token=EPOCH.COUNT\"",
        ),
        (
            vec![format!("lock=a; id={id}; token=9")],
            "the token is not EPOCH.COUNT",
        ),
        (
            vec![format!(
                "lock=a; id={}; token=9.9",
                id.to_string().to_uppercase()
            )],
            "the lock id is not 32 lowercase hexadecimal digits",
        ),
        (vec![long], "longer than 700 bytes"),
        (
            vec![fence(A, 9, 9), fence(A, 9, 9)],
            "it came more than once",
        ),
    ];
    for (values, wanted) in &cases {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        for (method, route) in [
            ("GET", "/request_report"),
            ("GET", path.as_str()),
            ("DELETE", path.as_str()),
        ] {
            let answer = send(&server, method, route, &values).await;
            assert_eq!(
                (answer.status, answer.mark.as_deref()),
                (400, None),
                "{values:?}"
            );
            assert!(
                answer.body.starts_with("invalid Report-Fence header: ")
                    && answer.body.contains(wanted)
                    && answer
                        .body
                        .contains("send it once, as \"lock=<percent-encoded name>")
                    && answer.body.ends_with('\n'),
                "{values:?}: {}",
                answer.body
            );
        }
    }
    assert_eq!(
        server
            .metric("report_apis_rejections_total{reason=\"fence-header\"}")
            .await,
        15.0
    );
    // Nothing raised, nothing cancelled, no lock added.
    let answer = send(&server, "GET", &path, &[&fence(A, 3, 3)]).await;
    assert_eq!((answer.status, answer.mark.as_deref()), (200, Some("3.3")));
    assert_eq!(server.metric("report_apis_fence_locks").await, 1.0);
    server.stop().await;
}

#[tokio::test]
async fn at_max_locks_a_new_lock_gets_503_until_a_reload_raises_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.limits.max_locks = 1;
    let (server, reloader) = Server::start_reloadable(config.clone()).await;
    ticket(&server, &fence(A, 1, 1)).await;
    let refused = send(&server, "GET", "/request_report", &[&fence(B, 1, 1)]).await;
    assert_eq!(
        refused,
        Answer {
            status: 503,
            mark: None,
            body: "the server already keeps the marks of limits.max-locks (1) locks and this \
                   request names a new one: raise limits.max-locks in the server's \
                   configuration and reload it (systemctl reload report-apis)\n"
                .to_owned()
        }
    );
    assert_eq!(
        server
            .metric("report_apis_rejections_total{reason=\"fence-max-locks\"}")
            .await,
        1.0
    );
    // The lock already kept is served at the bound.
    assert_eq!(ticket(&server, &fence(A, 1, 2)).await.len(), 38);

    config.limits.max_locks = 2;
    reloader.reload(config).await.unwrap();
    ticket(&server, &fence(B, 1, 1)).await;
    assert_eq!(server.metric("report_apis_fence_locks").await, 2.0);
    server.stop().await;
}

#[tokio::test]
async fn unenforced_the_server_acts_as_before_the_fence() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.fence.enforce = false;
    config.limits.max_locks = 1;
    let server = Server::start(config).await;
    let first = send(&server, "GET", "/request_report", &[&fence(A, 2, 0)]).await;
    assert_eq!((first.status, first.mark), (200, None));
    // The stale holder gets a second ticket and cancels the first: what the fence prevents.
    let second = send(&server, "GET", "/request_report", &[&fence(A, 1, 0)]).await;
    assert_eq!((second.status, second.mark), (200, None));
    assert_ne!(second.body, first.body);
    let other = send(&server, "GET", "/request_report", &[&fence(B, 1, 0)]).await;
    assert_eq!(other.status, 200, "no bound on locks either");
    let path = format!("/get_report/{}", first.body);
    let cancel = send(&server, "DELETE", &path, &[&fence(A, 1, 0)]).await;
    assert_eq!((cancel.status, cancel.mark), (204, None));
    assert_eq!(send(&server, "GET", &path, &[]).await.status, 404);
    // The header is still checked.
    assert_eq!(
        send(&server, "GET", "/request_report", &["x"]).await.status,
        400
    );
    assert_eq!(server.metric("report_apis_fence_locks").await, 0.0);
    assert!(!dir.path().join("fence.json").exists());
    server.stop().await;
}

#[tokio::test]
async fn marks_survive_a_reload_and_switching_enforcement_off_and_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let (server, reloader) = Server::start_reloadable(config.clone()).await;
    ticket(&server, &fence(A, 4, 2)).await;
    let mut off = config.clone();
    off.fence.enforce = false;
    let changes = reloader.reload(off).await.unwrap();
    assert!(changes.contains("fence.enforce = false"), "{changes}");
    assert_eq!(ticket(&server, &fence(A, 1, 0)).await.len(), 38);
    reloader.reload(config.clone()).await.unwrap();
    let stale = send(&server, "GET", "/request_report", &[&fence(A, 4, 1)]).await;
    assert_eq!((stale.status, stale.mark.as_deref()), (409, Some("4.2")));

    let mut moved = config;
    moved.fence.state_file = dir.path().join("elsewhere.json");
    let why = reloader.reload(moved).await.unwrap_err();
    assert!(why.contains("`fence.state-file` changed"), "{why}");
    server.stop().await;
}

/// The real binary with its marks in `dir`; the configuration file is `dir/config.toml`.
fn start_binary(dir: &tempfile::TempDir) -> (Running, PathBuf) {
    let state = dir.path().join("fence.json");
    let config = write_config(
        dir,
        &format!(
            "listen = \"127.0.0.1:0\"\n[heavy-load]\nperiod = \"0s\"\n\
             [fence]\nstate-file = \"{}\"\n",
            state.display()
        ),
    );
    (
        Running::start(&["--config", config.to_str().unwrap()]),
        state,
    )
}

async fn binary_send(address: &str, fences: &[&str]) -> Answer {
    let mut request = crate::util::client().get(format!("{address}/request_report"));
    for value in fences {
        request = request.header("Report-Fence", *value);
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        mark: response
            .headers()
            .get(MARK)
            .map(|v| v.to_str().unwrap().to_owned()),
        body: response.text().await.unwrap(),
    }
}

#[tokio::test]
async fn marks_survive_a_restart_of_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, state) = start_binary(&dir);
    let address = first.address();
    let raised = binary_send(&address, &[&fence(A, 7, 3)]).await;
    assert_eq!((raised.status, raised.mark.as_deref()), (200, Some("7.3")));
    assert!(state.exists());
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait().code(), Some(0));

    let (mut second, _) = start_binary(&dir);
    second.wait_for("fence marks of 1 locks read from");
    let address = second.address();
    let stale = binary_send(&address, &[&fence(A, 7, 2)]).await;
    assert_eq!((stale.status, stale.mark.as_deref()), (409, Some("7.3")));
    // Tickets do not survive a restart, so the holder at the mark gets a new one.
    let again = binary_send(&address, &[&fence(A, 7, 3)]).await;
    assert_eq!((again.status, again.mark.as_deref()), (200, Some("7.3")));
    assert_ne!(again.body, raised.body);
    second.signal(Signal::SIGTERM);
    assert_eq!(second.wait().code(), Some(0));
}

#[test]
fn a_corrupt_or_planted_state_file_stops_the_start_with_78_naming_it() {
    for plant in ["corrupt", "fifo"] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("fence.json");
        match plant {
            "corrupt" => std::fs::write(&state, b"{\"version\":1,\"locks\":[").unwrap(),
            _ => nix::unistd::mkfifo(&state, nix::sys::stat::Mode::S_IRWXU).unwrap(),
        }
        let (mut run, _) = start_binary(&dir);
        let status = run.wait();
        let stderr = run.stderr();
        assert_eq!(status.code(), Some(78), "{plant}: {stderr}");
        let lines = lines_with_id(&stderr, message_id::FENCE_STATE_REJECTED);
        assert_eq!(lines.len(), 1, "{plant}: {stderr}");
        let line = lines[0];
        assert!(
            line.contains(&format!(
                "cannot use the fence state file {}",
                state.display()
            )) && line.contains("Removing it starts every lock's mark afresh"),
            "{plant}: {line}"
        );
        if plant == "fifo" {
            assert!(line.contains("it is a FIFO"), "{line}");
        }
        assert!(!stderr.contains("listening on"), "{stderr}");
    }
}

#[tokio::test]
async fn the_fence_metrics_are_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config_in(dir.path())).await;
    ticket(&server, &fence(A, 12, 34)).await;
    let id = A.simple();
    let labels = format!("{{lock=\"fleet/a\",lock_id=\"{id}\"}}");
    for (name, value) in [
        ("report_apis_fence_mark_epoch", 12.0),
        ("report_apis_fence_mark_count", 34.0),
        ("report_apis_fence_pending_tickets", 1.0),
    ] {
        assert_eq!(
            server.metric(&format!("{name}{labels}")).await,
            value,
            "{name}"
        );
    }
    assert_eq!(server.metric("report_apis_fence_locks").await, 1.0);
    assert_eq!(
        server
            .metric("report_apis_fence_tickets_returned_total")
            .await,
        0.0
    );
    for reason in [
        "fence-header",
        "fence-stale",
        "fence-other-lock",
        "fence-tokenless-cancel",
        "fence-max-locks",
    ] {
        let sample = format!("report_apis_rejections_total{{reason=\"{reason}\"}}");
        assert_eq!(server.metric(&sample).await, 0.0, "{reason}");
    }
    server.stop().await;
}
