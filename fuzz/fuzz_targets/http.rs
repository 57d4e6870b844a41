//! report-apis' HTTP application, driven without a socket (the `Router` called through tower's
//! `oneshot`): requests with any method, path, query and body get an answer, never a panic and
//! never a 500, and every ticket `/request_report` hands out reads back as a ticket and is safe
//! for a URL and a file name.
//!
//! The input is text, so that seeds are readable: one request a line, `METHOD TARGET [BODY]`.
//! A target starting with `@` stands for `/get_report/<the last ticket issued>` followed by
//! the rest, so that fetches reach tickets the store knows (a fuzzer never guesses a uuid).
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use report_apis::api::{self, AppState};
use report_apis::config::Config;
use report_apis::fence::Fences;
use report_apis::load::LoadClock;
use report_apis::metrics::Metrics;
use report_apis::rejections::Rejections;
use report_apis::tickets::Tickets;
use report_common::ticket;
use tokio::time::Instant;
use tower::ServiceExt;

/// One runtime for every input: building one per input would be most of the time spent.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
});

/// At most this many requests an input, so that one input stays one short exchange.
const MAX_REQUESTS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut config = Config::default();
    // Reports ready at once, so that a fetch of an issued ticket can get its CSV.
    config.report.generation_time = std::time::Duration::ZERO;
    let start = Instant::now();
    let metrics = Arc::new(Metrics::new());
    let clock = LoadClock::new(&config.heavy_load, start);
    let tickets = Arc::new(Tickets::new(&config, clock, metrics.clone(), start));
    let rejections = Arc::new(Rejections::new(metrics.clone()));
    // No marks, none written: an input sends no Report-Fence header.
    let fences = Arc::new(Fences::new(&config, HashMap::new(), metrics.clone()));
    let app = api::app(AppState {
        tickets,
        fences,
        metrics: metrics.clone(),
        rejections,
    });
    let mut issued: Option<String> = None;
    // Cancellations counted when `issued` was issued. A later one can only have dropped that
    // ticket, the one ticket an input can name, and then a GET of it is rightly 404.
    let mut cancelled_before = 0;
    RUNTIME.block_on(async {
        for line in text.lines().take(MAX_REQUESTS) {
            let mut fields = line.splitn(3, ' ');
            let method = fields.next().unwrap_or_default();
            let target = fields.next().unwrap_or_default();
            let body = fields.next().unwrap_or_default().to_owned();
            let (target, fetching) = match (target.strip_prefix('@'), &issued) {
                (Some(rest), Some(ticket)) => {
                    (format!("/get_report/{ticket}{rest}"), rest.is_empty())
                }
                _ => (target.to_owned(), false),
            };
            // Only what a client can send: hyper refuses on the wire what does not build here.
            let Ok(request) = Request::builder()
                .method(method)
                .uri(&target)
                .body(Body::from(body))
            else {
                continue;
            };
            // HEAD answers carry no body, so only a GET shows the ticket.
            let get = request.method() == Method::GET;
            let issuing = get && request.uri().path() == "/request_report";
            let response = app.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            assert!(
                !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
                "{line:?} answered {status}"
            );
            // An issued ticket is known until its ttl (minutes) ends, or it is cancelled: its
            // report or "not ready".
            if get && fetching && metrics.tickets_cancelled.get() == cancelled_before {
                assert_eq!(status, StatusCode::OK, "{line:?}");
            }
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("a body in memory");
            if issuing && status == StatusCode::OK {
                let text = std::str::from_utf8(&body).expect("a ticket is text");
                assert!(ticket::parse(text).is_ok(), "{text:?}");
                assert!(ticket::is_safe(text), "{text:?}");
                issued = Some(text.to_owned());
                cancelled_before = metrics.tickets_cancelled.get();
            }
        }
    });
});
