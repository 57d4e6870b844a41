//! Accepting and serving connections, bounded so that no client can hold the server.
//!
//! `axum::serve` times nothing out. Measured against it: idle and slowly-sent connections were
//! held until the process ran out of file descriptors (1024), after which `accept` failed and
//! nobody was answered, `/healthz` included; and every unfinished request head was buffered up
//! to hyper's default of about 400 KiB (1000 such connections: 423 MB resident). Here hyper's
//! HTTP/1 connection is driven directly, so that:
//!
//! - a connection must send a complete request head within `limits.header-timeout` of
//!   being accepted or of its previous response, else it is closed: this one timer ends
//!   slowloris senders and idle keep-alive connections alike;
//! - a request head may be at most [`MAX_HEAD_BYTES`] with at most [`MAX_HEADERS`] headers;
//!   past either hyper answers 431 and closes, so one connection holds at most that buffer;
//! - at most `limits.max-connections` connections are served at once, lowered at start to what
//!   the open-file limit leaves room for ([`FD_RESERVE`] descriptors kept for everything else).
//!
//! At the cap the server stops accepting and the excess waits in the kernel's listen backlog
//! (first come, first accepted), rather than being accepted and dropped: a legitimate client is
//! then never refused, only delayed. Every connection being served either sends a request in
//! time (answered within milliseconds) or is closed by the header timeout, so the whole cap
//! turns over within one header timeout; a new client waits one header timeout for each
//! `max-connections` connections queued ahead of it, which is one when a flood holds the cap and
//! reconnects, and at most a few with tokio's backlog of 1024 (the SYNs past a full backlog are
//! retried by the client's kernel). Closing idle connections first when at the cap was the
//! alternative; it does nothing against slow senders, which look the same until their timeout.
//!
//! No body is read by any route, so none is buffered: hyper discards an unread body by closing
//! the connection after the response.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;
use crate::rejections::{Reason, Rejections};

/// Largest request head (request line and headers) a connection may send, in bytes; also what
/// hyper buffers per connection at most (8 KiB is hyper's floor). Clients of this server send
/// a few hundred bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most headers in one request.
pub const MAX_HEADERS: usize = 64;

/// File descriptors kept out of the connection cap for the listener, the runtime, logging,
/// systemd's sockets and reading the configuration on reload.
pub const FD_RESERVE: u64 = 64;

/// How long to pause accepting after `accept` itself fails (out of descriptors or memory), so
/// that the failure does not turn into a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// `max_connections`, lowered so that the connections and [`FD_RESERVE`] fit in `fd_limit` (the soft
/// RLIMIT_NOFILE); at least 1.
pub fn connection_cap(max_connections: usize, fd_limit: u64) -> usize {
    let room = usize::try_from(fd_limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
    max_connections.min(room).max(1)
}

/// The soft open-file limit of this process, `None` when unlimited or unknown.
pub fn fd_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit};
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    (soft != nix::sys::resource::RLIM_INFINITY).then_some(soft)
}

/// Serves `app` on `listener` under `limits` until `shutdown` completes; then closes the
/// listener, asks every open connection to finish its request under way and close, and waits
/// for them at most `drain_timeout()` (read then, so a reload counts). Returns whether every
/// connection finished in time.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    rejections: Arc<Rejections>,
    shutdown: impl Future<Output = ()>,
    drain_timeout: impl FnOnce() -> Duration,
) -> bool {
    let places = Arc::new(Semaphore::new(capped_connections(limits)));
    let builder = connection_builder(limits);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A place first, then the connection: at the cap the next one stays in the backlog.
        let Some(place) = take_place(&places, &rejections, shutdown.as_mut()).await else {
            break;
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    rejections.accept_failed(&err);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        let rejections = rejections.clone();
        tokio::spawn(async move {
            rejections.opened();
            if let Err(err) = connection.await {
                if err.is_timeout() {
                    rejections.record(Reason::HeaderTimeout);
                } else if err.is_parse_too_large() {
                    rejections.record(Reason::HeadTooLarge);
                }
            }
            rejections.closed();
            drop(place);
        });
    }
    drop(listener);
    drain(graceful, drain_timeout()).await
}

/// How many connections are served at once: `limits.max-connections`, lowered (with a
/// warning) to what the open-file limit leaves room for.
fn capped_connections(limits: &Limits) -> usize {
    let cap = connection_cap(limits.max_connections, fd_limit().unwrap_or(u64::MAX));
    if cap < limits.max_connections {
        tracing::warn!(
            MESSAGE_ID = report_common::message_id::CONNECTIONS_CAPPED,
            MAX_CONNECTIONS = limits.max_connections,
            CAP = cap,
            "limits.max-connections is {} but the open-file limit leaves room for {cap}; serving \
             at most {cap} at once (raise LimitNOFILE= in the unit, or lower max-connections)",
            limits.max_connections
        );
    }
    cap
}

/// hyper's HTTP/1 connection, bounded: a request head within the header timeout, of at most
/// [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`].
fn connection_builder(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    builder
}

/// A place for one more connection, waiting (and counting the wait as a rejection) while
/// every place is taken; `None` once `shutdown` completes first.
async fn take_place(
    places: &Arc<Semaphore>,
    rejections: &Rejections,
    shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Option<OwnedSemaphorePermit> {
    match places.clone().try_acquire_owned() {
        Ok(place) => Some(place),
        Err(_) => {
            rejections.record(Reason::MaxConnections);
            tokio::select! {
                () = shutdown => None,
                place = places.clone().acquire_owned() => place.ok(),
            }
        }
    }
}

/// Waits at most `drain_timeout` for the open connections to finish; whether they all did.
async fn drain(graceful: GracefulShutdown, drain_timeout: Duration) -> bool {
    tracing::info!(
        "shutting down: no new connections, waiting at most {} for open ones",
        humantime::format_duration(drain_timeout)
    );
    tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_the_reserve_under_the_open_file_limit() {
        assert_eq!(connection_cap(512, 1024), 512);
        assert_eq!(connection_cap(2000, 1024), 1024 - 64);
        assert_eq!(connection_cap(512, u64::MAX), 512);
        assert_eq!(
            connection_cap(512, 10),
            1,
            "never zero: the server must answer"
        );
    }
}
