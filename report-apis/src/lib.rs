//! `report-apis`: a report server wire-compatible with the original Scheduler Experiment's,
//! that slows down like a real overloaded server.
//!
//! [`run`] serves on a bound listener until a shutdown future completes, so the binary and the
//! tests drive the very same code. [`run_with_reloads`] also takes reloaded configurations
//! and applies them without dropping a ticket; [`reload`] is the rest of a reload (the re-read
//! on SIGHUP, off the runtime: [`blocking_read`]; the outcome file; `report-apis reload`).

// A function a reader can hold in their head: at most 60 lines of code (the threshold is in
// clippy.toml; blank and comment lines do not count). An exception is an
// `#[expect(clippy::too_many_lines, reason = "...")]`. Tests read top to bottom and are exempt.
#![warn(clippy::too_many_lines)]
#![cfg_attr(test, allow(clippy::too_many_lines))]

pub mod api;
pub mod blocking_read;
pub mod config;
pub mod fence;
pub mod load;
pub mod metrics;
pub mod notify;
pub mod rejections;
pub mod reload;
pub mod report;
pub mod serve;
pub mod tickets;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use report_common::message_id;
use tokio::net::TcpListener;
use tokio::time::{Instant, MissedTickBehavior};

pub use config::Config;
pub use reload::{Reloader, Reloads, reload_channel};

use crate::api::AppState;
use crate::fence::Fences;
use crate::load::LoadClock;
use crate::metrics::Metrics;
use crate::rejections::{Rejections, Summariser};
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
    let (_reloader, reloads) = reload_channel();
    run_with_reloads(listener, config, shutdown, reloads).await
}

/// [`run`], and every configuration sent through the [`Reloader`] of `reloads` applied from
/// then on: pending tickets are kept and served; tickets issued afterwards use the new
/// generation settings; the heavy-load phase under way continues; a lower `max-pending`
/// refuses new tickets but evicts none; the drain timeout is the one in force at shutdown. A
/// different `listen`, `max-connections` or `header-timeout` is refused: it needs a restart.
pub async fn run_with_reloads(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reloads: Reloads,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let address = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let metrics = Arc::new(Metrics::new());
    let clock = LoadClock::new(&config.heavy_load, start);
    let tickets = Arc::new(Tickets::new(&config, clock, metrics.clone(), start));
    let fences = Arc::new(Fences::load(&config, metrics.clone())?);
    let rejections = Arc::new(Rejections::new(metrics.clone()));
    let app = api::app(AppState {
        tickets: tickets.clone(),
        fences: fences.clone(),
        metrics,
        rejections: rejections.clone(),
    });

    let housekeeping = tokio::spawn(housekeeping(tickets.clone(), rejections.clone()));
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

    let limits = config.limits.clone();
    let in_force = Arc::new(Mutex::new(config));
    let reloading = tokio::spawn(reload::apply_reloads(
        reloads,
        tickets.clone(),
        fences,
        in_force.clone(),
    ));
    // Read at shutdown, so that the value of the last reload counts.
    let drain_timeout = move || {
        notify::stopping();
        in_force
            .lock()
            .map_or(Duration::ZERO, |config| config.shutdown.drain_timeout)
    };
    let drained = serve::serve(listener, app, &limits, rejections, shutdown, drain_timeout).await;
    if !drained {
        tracing::warn!(
            MESSAGE_ID = message_id::DRAIN_TIMEOUT,
            "connections still open after the drain timeout; closing them"
        );
    }
    housekeeping.abort();
    reloading.abort();
    tracing::info!(MESSAGE_ID = message_id::STOPPED, "stopped");
    Ok(())
}

/// A background task: logs heavy-load toggles as they happen, keeps expiry and the
/// systemd status line current, and feeds the watchdog (only while the store answers).
///
/// A toggle is logged when the state differs from the last one seen, whichever branch woke
/// the loop: the 1 s tick and a toggle can be due in the same millisecond, and `select!` then
/// runs only one of them.
async fn housekeeping(tickets: Arc<Tickets>, rejections: Arc<Rejections>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let watchdog_every = notify::watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    watchdog.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_status = String::new();
    let mut summariser = Summariser::new();
    let mut heavy = tickets.snapshot(Instant::now()).heavy;
    loop {
        let toggle = tickets.next_toggle(Instant::now());
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
        summariser.tick(&rejections, Instant::now());
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
        let rejections = Arc::new(Rejections::new(Arc::new(Metrics::new())));
        let task = tokio::spawn(housekeeping(tickets, rejections));
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
