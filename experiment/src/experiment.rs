//! One whole experiment: a server per arm, the arms run side by side on one time line, and the
//! measurements gathered.
//!
//! The arms run concurrently, each against its own server on its own loopback port, so the whole
//! comparison takes one span instead of nine, and every arm sees the same heavy-load phases.
//! The arms on the PostgreSQL lock share one throw-away cluster, started first.

use std::path::Path;
use std::sync::Arc;
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
use crate::postgres::Cluster;
use crate::proxy::PauseProxy;
use crate::scrape::{sample, scrape};
use crate::server::Server;

/// How often each server's `/metrics` is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What one experiment measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub params: Params,
    /// One result per arm, in [`Arm::ALL`] order (without the PostgreSQL arms when
    /// `--without-postgres` leaves them out).
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
    let arms = Arm::selected(!params.without_postgres);
    // Started before the time line is laid out: it takes about a second.
    let cluster = start_cluster(&arms).await?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("cannot build an HTTP client")?;
    let lead = params.server_lead();
    let clock = Clock::aligned(params.slot, lead + Duration::from_millis(300));

    sleep_until(clock.instant(-lead.as_secs_f64()).into()).await;
    let servers = start_servers(&arms, params, binaries, work_dir, &client).await?;

    let mut tasks = JoinSet::new();
    for (index, (arm, server)) in arms.iter().zip(&servers).enumerate() {
        let common = Common {
            params,
            binaries,
            work_dir,
            cluster: &cluster,
            clock,
            client: &client,
        };
        let context = prepare_arm(*arm, server, &common).await?;
        tasks.spawn(async move { Ok((index, run_arm(context).await?)) });
    }

    let mut results: Vec<Option<ArmResult>> = vec![None; arms.len()];
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("an arm's task panicked").and_then(|r| r) {
            Ok((index, result)) => results[index] = Some(result),
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
        arms: results.into_iter().flatten().collect(),
    })
}

/// The cluster the arms on the PostgreSQL lock share, when any arm is on it.
async fn start_cluster(arms: &[Arm]) -> anyhow::Result<Option<Arc<Cluster>>> {
    if !arms.iter().any(Arm::on_postgres) {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .context("the cluster's start panicked")?
        .context("cannot start the PostgreSQL cluster")?;
    eprintln!(
        "experiment: PostgreSQL 15 cluster started in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(Some(Arc::new(cluster)))
}

/// Writes one arm's collector configs, and starts its pausing proxy when it pauses holders.
async fn prepare_arm(arm: Arm, server: &Server, common: &Common<'_>) -> anyhow::Result<ArmContext> {
    let Common {
        params,
        binaries,
        work_dir,
        cluster,
        clock,
        client,
    } = *common;
    let proxy = if arm.pause_holders {
        let give_up = clock.instant(params.span.as_secs_f64()) + params.drain;
        let last_pause = (params.span - params.slot).as_secs_f64();
        Some(PauseProxy::start(server.addr()?, clock, last_pause, give_up).await?)
    } else {
        None
    };
    let collectors_url = proxy.as_ref().map_or(&server.url, |p| &p.url);
    let connect = cluster.as_ref().map(|c| c.connect());
    let setup = CollectorSetup::prepare(
        &binaries.report_collector,
        &work_dir.join(arm.slug()),
        &arm,
        params,
        collectors_url,
        connect.as_deref(),
    )?;
    Ok(ArmContext {
        arm,
        params: params.clone(),
        client: client.clone(),
        url: server.url.clone(),
        clock,
        setup,
        proxy,
        cluster: cluster.clone().filter(|_| arm.on_postgres()),
    })
}

/// Starts one server per arm and waits until each answers.
async fn start_servers(
    arms: &[Arm],
    params: &Params,
    binaries: &Binaries,
    work_dir: &Path,
    client: &reqwest::Client,
) -> anyhow::Result<Vec<Server>> {
    let spawn = |arm: &Arm| {
        Server::spawn(
            &binaries.report_apis,
            &work_dir.join(arm.slug()),
            params,
            arm.server_enforces_fence(),
        )
    };
    let mut servers = Vec::new();
    for arm in arms {
        servers.push(spawn(arm)?);
    }
    for (server, arm) in servers.iter_mut().zip(arms) {
        // The port was free when picked, but another process may bind it before the server
        // does: such a server starts again on another port, a few times at most.
        let mut starts = 1;
        while let Err(e) = server.wait_ready(client, Duration::from_secs(5)).await {
            if starts == 3 || !server.lost_its_port() {
                return Err(e);
            }
            starts += 1;
            *server = spawn(arm)?;
        }
    }
    Ok(servers)
}

/// What every arm is prepared with.
#[derive(Clone, Copy)]
struct Common<'a> {
    params: &'a Params,
    binaries: &'a Binaries,
    work_dir: &'a Path,
    cluster: &'a Option<Arc<Cluster>>,
    clock: Clock,
    client: &'a reqwest::Client,
}

/// What one arm's task needs.
struct ArmContext {
    arm: Arm,
    params: Params,
    client: reqwest::Client,
    /// The server's own URL (the collectors may reach it through the proxy).
    url: String,
    clock: Clock,
    setup: CollectorSetup,
    proxy: Option<PauseProxy>,
    /// The cluster, for an arm on the PostgreSQL lock.
    cluster: Option<Arc<Cluster>>,
}

/// Fires one arm's runs while sampling its server, and gathers what they left.
async fn run_arm(c: ArmContext) -> anyhow::Result<ArmResult> {
    let (stop, stopped) = watch::channel(false);
    let sampler = tokio::spawn(sample(
        c.client.clone(),
        c.url.clone(),
        c.clock,
        SAMPLE_EVERY,
        stopped,
    ));
    let runs = launch(&c.arm, &c.params, c.clock, &c.setup).await;
    // The sampler only stops on this signal; a send error means it is already gone.
    let _ = stop.send(true);
    let samples = sampler.await.unwrap_or_default();
    let runs =
        runs.with_context(|| format!("the {} arm could not start its runs", c.arm.label()))?;
    let last = scrape(&c.client, &c.url).await?;
    let mut leftovers = c.setup.leftovers()?;
    if let Some(cluster) = c.cluster {
        let lock_name = c.arm.slug();
        leftovers.record_ticket =
            tokio::task::spawn_blocking(move || cluster.row_ticket(lock_name))
                .await
                .unwrap_or_default();
    }
    Ok(ArmResult {
        arm: c.arm,
        runs,
        samples,
        last,
        leftovers,
        pauses: c.proxy.map(|p| p.pauses()).unwrap_or_default(),
    })
}
