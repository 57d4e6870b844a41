//! `report-apis`: a report server wire-compatible with the original Scheduler Experiment's,
//! that slows down like a real overloaded server.
//!
//! [`run`] serves on a bound listener until a shutdown future completes, so the binary and the
//! tests drive the very same code.

pub mod api;
pub mod config;
pub mod load;
pub mod metrics;
pub mod notify;
pub mod report;
pub mod tickets;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use report_common::message_id;
use tokio::net::TcpListener;
use tokio::time::{Instant, MissedTickBehavior};

pub use config::Config;

use crate::api::AppState;
use crate::load::LoadClock;
use crate::metrics::Metrics;
use crate::tickets::{Snapshot, Tickets};

/// How often the housekeeping task expires tickets and refreshes the status line.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// Serves `config` on `listener` until `shutdown` completes, then stops accepting, waits at
/// most `shutdown.drain-timeout` for open connections, and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let address = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let metrics = Arc::new(Metrics::new());
    let clock = LoadClock::new(&config.heavy_load, start);
    let tickets = Arc::new(Tickets::new(&config, clock, metrics.clone(), start));
    let app = api::app(AppState {
        tickets: tickets.clone(),
        metrics,
    });

    let housekeeping = tokio::spawn(housekeeping(tickets.clone(), clock));
    tracing::info!(
        MESSAGE_ID = message_id::SERVER_READY,
        LISTEN = %address,
        GENERATION_TIME = %humantime::format_duration(config.report.generation_time),
        SLOWDOWN = config.report.slowdown,
        HEAVY_LOAD_PERIOD = %humantime::format_duration(config.heavy_load.period),
        MAX_PENDING = config.limits.max_pending,
        "listening on http://{address}"
    );
    notify::ready(&status_line(&tickets.snapshot(Instant::now())));

    let drain_timeout = config.shutdown.drain_timeout;
    let (began_tx, began_rx) = tokio::sync::oneshot::channel();
    let graceful = async move {
        shutdown.await;
        notify::stopping();
        tracing::info!(
            "shutting down: no new connections, waiting at most {} for open ones",
            humantime::format_duration(drain_timeout)
        );
        let _ = began_tx.send(());
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(graceful);
    let deadline = async move {
        match began_rx.await {
            Ok(()) => tokio::time::sleep(drain_timeout).await,
            // The server ended on its own; the other branch has the result.
            Err(_) => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        result = server => result.context("the HTTP server failed"),
        () = deadline => {
            tracing::warn!(
                "connections still open after the drain timeout of {}; closing them",
                humantime::format_duration(drain_timeout)
            );
            Ok(())
        }
    };
    housekeeping.abort();
    if result.is_ok() {
        tracing::info!("stopped");
    }
    result
}

/// The one background task: logs heavy-load toggles as they happen, keeps expiry and the
/// systemd status line current, and feeds the watchdog (only while the store answers).
///
/// A toggle is logged when the state differs from the last one seen, whichever branch woke
/// the loop: the 1 s tick and a toggle can be due in the same millisecond, and `select!` then
/// runs only one of them.
async fn housekeeping(tickets: Arc<Tickets>, clock: LoadClock) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let watchdog_every = notify::watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    watchdog.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_status = String::new();
    let mut heavy = tickets.snapshot(Instant::now()).heavy;
    loop {
        let toggle = clock.next_toggle(Instant::now());
        tokio::select! {
            () = sleep_until_maybe(toggle) => {}
            _ = tick.tick() => {}
            _ = watchdog.tick(), if watchdog_every.is_some() => {
                tickets.snapshot(Instant::now());
                notify::watchdog();
            }
        }
        let snapshot = tickets.snapshot(Instant::now());
        if snapshot.heavy != heavy {
            heavy = snapshot.heavy;
            if heavy {
                tracing::info!(
                    MESSAGE_ID = message_id::HEAVY_LOAD_ON,
                    HEAVY_LOAD = 1,
                    PENDING = snapshot.pending,
                    "heavy load on: reports stop progressing and /get_report answers \"report is not ready\""
                );
            } else {
                tracing::info!(
                    MESSAGE_ID = message_id::HEAVY_LOAD_OFF,
                    HEAVY_LOAD = 0,
                    PENDING = snapshot.pending,
                    "heavy load off: reports progress again"
                );
            }
        }
        let status = status_line(&snapshot);
        if status != last_status {
            notify::status(&status);
            last_status = status;
        }
    }
}

async fn sleep_until_maybe(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn status_line(snapshot: &Snapshot) -> String {
    format!(
        "heavy load {}; {} pending, {} ready, {} held",
        if snapshot.heavy { "on" } else { "off" },
        snapshot.pending,
        snapshot.ready,
        snapshot.held
    )
}

#[cfg(test)]
mod tests {
    use report_common::logging::capture;

    use super::*;

    /// Toggles every housekeeping tick, on tokio's paused clock: the tick and the toggle are due
    /// at the very same instant each time, the case where `select!` runs only one branch.
    #[tokio::test(start_paused = true)]
    async fn every_heavy_load_toggle_is_logged_even_when_the_tick_is_due_with_it() {
        let (captured, _guard) = capture::start();
        let mut config = Config::default();
        config.heavy_load.period = HOUSEKEEPING_INTERVAL;
        let start = Instant::now();
        let clock = LoadClock::new(&config.heavy_load, start);
        let tickets = Arc::new(Tickets::new(
            &config,
            clock,
            Arc::new(Metrics::new()),
            start,
        ));
        let task = tokio::spawn(housekeeping(tickets, clock));
        tokio::time::sleep(HOUSEKEEPING_INTERVAL * 10 + HOUSEKEEPING_INTERVAL / 2).await;
        task.abort();

        let toggles: Vec<(String, String)> = captured
            .events()
            .into_iter()
            .filter_map(|e| Some((e.get("HEAVY_LOAD")?.clone(), e.get("MESSAGE_ID")?.clone())))
            .collect();
        let expected: Vec<(String, String)> = (0..10)
            .map(|i| match i % 2 {
                0 => ("1".to_owned(), message_id::HEAVY_LOAD_ON.to_owned()),
                _ => ("0".to_owned(), message_id::HEAVY_LOAD_OFF.to_owned()),
            })
            .collect();
        assert_eq!(toggles, expected);
    }
}
