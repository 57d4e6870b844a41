//! One whole experiment: a server per arm, the arms run side by side on one time line, and the
//! measurements gathered.
//!
//! The arms run concurrently, each against its own server on its own loopback port, so the whole
//! comparison takes one span instead of seven, and every arm sees the same heavy-load phases.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::sleep_until;

use crate::arm::{Arm, ArmId};
use crate::binaries::Binaries;
use crate::clock::Clock;
use crate::collector::CollectorSetup;
use crate::launcher::launch;
use crate::measure::{ArmResult, heavy_phases};
use crate::params::Params;
use crate::scrape::{sample, scrape};
use crate::server::Server;

/// How often each server's `/metrics` is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What one experiment measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub params: Params,
    /// One result per arm, in [`Arm::ALL`] order.
    pub arms: Vec<ArmResult>,
}

impl Outcome {
    pub fn arm(&self, id: ArmId) -> Option<&ArmResult> {
        self.arms.iter().find(|a| a.arm.id == id)
    }

    /// Heavy-load phases as reported by the server sampled longest (all servers start together
    /// and share one heavy-load rhythm).
    pub fn heavy_phases(&self) -> Vec<(f64, f64)> {
        let last_at = |a: &&ArmResult| a.samples.last().map_or(f64::MIN, |s| s.at);
        self.arms
            .iter()
            .max_by(|a, b| last_at(a).total_cmp(&last_at(b)))
            .map(|a| heavy_phases(&a.samples))
            .unwrap_or_default()
    }
}

/// Runs every arm once; `work_dir` receives the config files, lock files, reports and logs.
pub async fn run(params: &Params, binaries: &Binaries, work_dir: &Path) -> anyhow::Result<Outcome> {
    params.validate().map_err(|e| anyhow!(e))?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("cannot build an HTTP client")?;
    let lead = params.server_lead();
    let clock = Clock::aligned(params.slot, lead + Duration::from_millis(300));

    sleep_until(clock.instant(-lead.as_secs_f64()).into()).await;
    let mut servers = Vec::new();
    for arm in Arm::ALL {
        servers.push(Server::spawn(
            &binaries.report_apis,
            &work_dir.join(arm.slug()),
            params,
        )?);
    }
    for (server, arm) in servers.iter_mut().zip(Arm::ALL) {
        // The port was free when picked, but another process may bind it before the server
        // does: such a server starts again on another port, a few times at most.
        let mut starts = 1;
        while let Err(e) = server.wait_ready(&client, Duration::from_secs(5)).await {
            if starts == 3 || !server.lost_its_port() {
                return Err(e);
            }
            starts += 1;
            *server = Server::spawn(&binaries.report_apis, &work_dir.join(arm.slug()), params)?;
        }
    }

    let mut tasks = JoinSet::new();
    for (index, (arm, server)) in Arm::ALL.iter().zip(&servers).enumerate() {
        let dir = work_dir.join(arm.slug());
        let setup =
            CollectorSetup::prepare(&binaries.report_collector, &dir, arm, params, &server.url)?;
        let (arm, params, client, url) = (*arm, params.clone(), client.clone(), server.url.clone());
        tasks.spawn(async move {
            let (stop, stopped) = watch::channel(false);
            let sampler = tokio::spawn(sample(
                client.clone(),
                url.clone(),
                clock,
                SAMPLE_EVERY,
                stopped,
            ));
            let runs = launch(&arm, &params, clock, &setup).await;
            // The sampler only stops on this signal; a send error means it is already gone.
            let _ = stop.send(true);
            let samples = sampler.await.unwrap_or_default();
            let runs =
                runs.with_context(|| format!("the {} arm could not start its runs", arm.label()))?;
            let last = scrape(&client, &url).await?;
            let leftovers = setup.leftovers()?;
            anyhow::Ok((
                index,
                ArmResult {
                    arm,
                    runs,
                    samples,
                    last,
                    leftovers,
                },
            ))
        });
    }

    let mut arms: Vec<Option<ArmResult>> = vec![None; Arm::ALL.len()];
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("an arm's task panicked").and_then(|r| r) {
            Ok((index, result)) => arms[index] = Some(result),
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    for server in servers {
        server.stop().await?;
    }
    if let Some(err) = first_error {
        return Err(err);
    }
    Ok(Outcome {
        params: params.clone(),
        arms: arms.into_iter().flatten().collect(),
    })
}
