//! `fleet-faults`: collectors on three hosts (network namespaces) sharing one lock in a real
//! PostgreSQL, the real report-apis, and one fault per round into the run that holds the
//! lock; then checks, on evidence independent of the collectors' verdicts, that no two runs
//! ever collected at once, no slot or ticket was collected twice, and another host took over
//! within the bound; and, from the server's own /metrics sampled through the run, that no lock
//! ever had two tickets pending and every refusal of a stale fencing token was met by a run
//! that says so. Run as root; see tests/README.md.

mod apis;
mod cleanup;
mod cluster;
mod cmd;
mod evidence;
mod faults;
mod logline;
mod netns;
mod round;
mod runs;
mod server_view;
mod verdict;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Parser;

use crate::faults::{Fault, HOSTS};
use crate::netns::Probe;
use crate::runs::Backend;

#[derive(Debug, Parser)]
#[command(
    name = "fleet-faults",
    about = "Fault injection across hosts: three collectors, one PostgreSQL lock, real processes"
)]
struct Cli {
    /// The report-collector binary
    #[arg(long, value_name = "PATH")]
    collector: PathBuf,
    /// The report-apis binary
    #[arg(long, value_name = "PATH")]
    apis: PathBuf,
    /// PostgreSQL 15's programs (initdb, pg_ctl)
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/postgresql/15/bin")]
    pg_bin: PathBuf,
    /// How many rounds (slots)
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// The seed of the fault schedule [default: from the clock]
    #[arg(long)]
    seed: Option<u64>,
    /// The collectors' schedule-period: one round per slot at least
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    period: Duration,
    /// The lock's lease
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// What a waiting host may take beyond the lease to notice it expired and act; the stated
    /// take-over bound is lease + margin + 1 s
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    margin: Duration,
    /// report-apis' generation time: how long a collection lasts
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    generation_time: Duration,
    /// The collectors' poll-interval
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// The lock backend: postgres, or flock (no shared lock: the checks must fail)
    #[arg(long, value_enum, default_value = "postgres")]
    lock_backend: Backend,
    /// Only build the fleet and check the infrastructure (reachability, partition, slow
    /// link), no collection
    #[arg(long)]
    self_test: bool,
    /// Keep the work directory (logs, configs, database snapshots) after the run
    #[arg(long)]
    keep: bool,
    /// Where the work directory is made
    #[arg(long, default_value = "/var/tmp", value_name = "DIR")]
    work_base: PathBuf,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 64 } else { 0 });
        }
    };
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("fleet-faults: run it as root (namespaces, iptables, runuser)");
        return ExitCode::from(2);
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        cleanup::run();
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-faults: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            eprintln!("fleet-faults: cannot install the signal handlers");
            return 1;
        };
        tokio::select! {
            result = harness(&cli) => match result {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => {
                    eprintln!("fleet-faults: {e:#}");
                    1
                }
            },
            _ = int.recv() => { eprintln!("fleet-faults: interrupted (SIGINT); cleaning up"); 130 }
            _ = term.recv() => { eprintln!("fleet-faults: terminated (SIGTERM); cleaning up"); 143 }
        }
    });
    // The harness's future is dropped by now: its children were killed with it.
    runtime.shutdown_timeout(Duration::from_secs(2));
    cleanup::run();
    ExitCode::from(code)
}

fn absolute(path: &Path, what: &str) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("{what} {} not found", path.display()))
}

/// Builds the fleet, plays the rounds, prints the figures; `Ok(false)` when a check failed.
async fn harness(cli: &Cli) -> anyhow::Result<bool> {
    let collector = absolute(&cli.collector, "the collector")?;
    let apis_bin = absolute(&cli.apis, "report-apis")?;
    let started = Instant::now();
    let tag = std::process::id().to_string();
    let work = cli.work_base.join(format!("fleet-faults-{tag}"));
    cleanup::dir(&work, cli.keep);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    println!("fleet-faults: work directory {}", work.display());

    let net = netns::create(&tag, HOSTS).await?;
    let db_addrs: Vec<String> = net.hosts.iter().map(|h| h.db_addr.to_string()).collect();
    let cluster = cluster::Cluster::start(&cli.pg_bin, &work.join("pg"), &net.db, &db_addrs)
        .await
        .context("cannot start the PostgreSQL cluster")?;
    let mut apis = apis::Apis::spawn(&apis_bin, &work, &net.db, cli.generation_time)?;
    let h1 = &net.hosts[0];
    apis.wait_ready(
        &h1.ns,
        SocketAddr::new(h1.db_addr.into(), apis::PORT),
        Duration::from_secs(10),
    )
    .await?;
    println!(
        "fleet-faults: namespaces {} and {}; PostgreSQL and report-apis up in {:.1} s",
        net.db,
        net.hosts
            .iter()
            .map(|h| h.ns.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        started.elapsed().as_secs_f64()
    );
    if cli.self_test {
        return self_test(&net, &cluster).await;
    }

    let settings = runs::Settings {
        backend: cli.lock_backend,
        period: cli.period,
        lease: cli.lease,
        poll_interval: cli.poll_interval,
        deadline: Duration::from_secs(40),
    };
    let hosts = net
        .hosts
        .iter()
        .map(|h| runs::prepare(h, &work, &settings))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seed = cli.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let bound = cli.lease + cli.margin + Duration::from_secs(1);
    println!(
        "fleet-faults: seed {seed}, {} rounds, lock backend {:?}, lease {}, take-over bound {} (lease + margin + 1 s)",
        cli.rounds,
        cli.lock_backend,
        humantime::format_duration(cli.lease),
        humantime::format_duration(bound)
    );
    // Faults may also land around the save, just after the report is ready, or just miss.
    let collecting = cli.generation_time + cli.poll_interval;
    let plans = faults::plan(seed, cli.rounds, cli.lease, collecting);
    let server = server_view::Sampler::start(&net.db, apis::PORT).await?;
    let fleet = round::Fleet {
        net: net.clone(),
        cluster: cluster.clone(),
        hosts,
        collector,
        period: cli.period,
        bound: settings.deadline + Duration::from_secs(10),
        work: work.clone(),
        seen: Mutex::new(vec![BTreeSet::new(); HOSTS]),
        server,
    };
    let mut results = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let result = round::play(&fleet, i + 1, plan).await?;
        println!("{}", verdict::describe(&result));
        results.push(result);
    }
    let sampling_busy = fleet.server.stop();
    let mut figures = verdict::judge(&results, bound);
    figures.sampling_busy = sampling_busy;
    print_figures(&figures, seed, bound, started.elapsed());
    let _ = cluster.stop().await;
    Ok(figures.failures.is_empty())
}

fn print_figures(f: &verdict::Figures, seed: u64, bound: Duration, took: Duration) {
    println!();
    println!("rounds: {} (seed {seed})", f.rounds);
    let faults: Vec<String> = Fault::ALL
        .iter()
        .map(|k| format!("{} {}", k.name(), f.faults.get(k).copied().unwrap_or(0)))
        .collect();
    println!(
        "faults: {} (missed, the holder done or without a session: {})",
        faults.join(", "),
        f.missed
    );
    println!(
        "collections: {}, skips: {}, other exits: {:?}",
        f.collections, f.skips, f.other_exits
    );
    println!("overlaps: {} (must be 0)", f.overlaps);
    println!("slots collected twice: {} (must be 0)", f.slots_twice);
    println!("tickets saved twice: {} (must be 0)", f.tickets_twice);
    println!(
        "rounds checked against the database's slot table: {}",
        f.db_checked
    );
    print_server(f);
    match evidence::worst_and_median(&f.take_overs) {
        Some((worst, median)) => println!(
            "take-overs: {}, worst {:.2} s, median {:.2} s (bound {:.2} s); slot kept by the holder after a fault: {}",
            f.take_overs.len(),
            worst.as_secs_f64(),
            median.as_secs_f64(),
            bound.as_secs_f64(),
            f.by_holder
        ),
        None => println!(
            "take-overs: none; slot kept by the holder after a fault: {}",
            f.by_holder
        ),
    }
    if !f.failed_closed.is_empty() {
        println!(
            "database restarts the other hosts met as they started (exit 69, failed closed, nobody collected): rounds {:?}",
            f.failed_closed
        );
    }
    if !f.slots_lost.is_empty() {
        println!(
            "slots lost: {} (another host took the lock in time but skipped the slot the ended holder had claimed: rounds {:?})",
            f.slots_lost.len(),
            f.slots_lost
        );
    }
    for (fault, [kept, collected, skipped, stuck]) in &f.outcomes {
        println!(
            "  after {}: holder collected {kept}, another host took over and collected {collected}, took over and skipped {skipped}, nobody took over {stuck}",
            fault.name()
        );
    }
    println!("time: {:.0} s", took.as_secs_f64());
    if f.failures.is_empty() {
        println!("PASS: every check held");
    } else {
        println!("FAIL: {} check(s) failed (seed {seed}):", f.failures.len());
        for failure in &f.failures {
            println!("  {failure}");
        }
    }
}

/// The server's view: the most tickets pending, the samples, the refusals and the runs that
/// met them.
fn print_server(f: &verdict::Figures) {
    let by_lock: Vec<String> = f
        .max_pending_by_lock
        .iter()
        .map(|(lock, n)| format!("\"{lock}\" {n}"))
        .collect();
    println!(
        "server's view: {} samples of /metrics, one every {} ms ({} reads failed, {:.2} s spent reading); most tickets pending per lock: {} (must be 1 at most), server-wide: {} (must be 1 at most), the server's own peak: {}",
        f.server_samples,
        server_view::EVERY.as_millis(),
        f.server_failed,
        f.sampling_busy.as_secs_f64(),
        if by_lock.is_empty() {
            "none seen".to_owned()
        } else {
            by_lock.join(", ")
        },
        f.max_pending,
        f.pending_peak
            .map_or_else(|| "unread".to_owned(), |p| p.to_string())
    );
    let refusals: Vec<String> = f
        .fence_refusals
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    let matched: usize = f.refused.iter().map(|(_, _, runs)| runs.len()).sum();
    println!(
        "fence refusals counted by the server: {}; runs that exited 79 with the FENCED line: {matched}",
        if refusals.is_empty() {
            "none".to_owned()
        } else {
            refusals.join(", ")
        }
    );
    for (round, stale, runs) in &f.refused {
        println!("  round {round}: {stale} refused fence-stale, fenced runs {runs:?}");
    }
}

/// The infrastructure alone: PostgreSQL reachable from every host with psql, report-apis
/// answering, a partition making a connect hang, the token bucket in place.
async fn self_test(net: &netns::Net, cluster: &cluster::Cluster) -> anyhow::Result<bool> {
    let mut ok = true;
    let mut check = |what: String, passed: bool| {
        println!("{} {what}", if passed { "PASS" } else { "FAIL" });
        ok &= passed;
    };
    let t = Duration::from_secs(10);
    for h in &net.hosts {
        let out = cmd::in_ns(
            &h.ns,
            [
                "psql",
                "-X",
                "-A",
                "-t",
                "-h",
                &h.db_addr.to_string(),
                "-U",
                "report_collector",
                "-d",
                "reports",
                "-c",
                "SELECT current_user || ' ' || host(inet_client_addr())",
            ],
            t,
        )
        .await;
        let (passed, shown) = match &out {
            Ok(o) => (
                o.trim() == format!("report_collector {}", h.addr),
                o.trim().to_owned(),
            ),
            Err(e) => (false, format!("{e:#}")),
        };
        check(
            format!("{}: psql -h {} answers ({shown})", h.name, h.db_addr),
            passed,
        );
        let (probe, first) = netns::probe(
            &h.ns,
            SocketAddr::new(h.db_addr.into(), apis::PORT),
            Duration::from_secs(2),
            Some("GET /healthz HTTP/1.0\r\n\r\n"),
        )
        .await?;
        check(
            format!("{}: report-apis answers /healthz ({first})", h.name),
            probe == Probe::Connected && first.contains(" 200"),
        );
    }
    let h = &net.hosts[1];
    netns::partition(h, true).await?;
    let (probe, _) = netns::probe(
        &h.ns,
        SocketAddr::new(h.db_addr.into(), 5432),
        Duration::from_secs(2),
        None,
    )
    .await?;
    check(
        format!(
            "{}: partitioned, a TCP connect to PostgreSQL hangs ({probe:?})",
            h.name
        ),
        probe == Probe::Silent,
    );
    let other = &net.hosts[2];
    let (probe, _) = netns::probe(
        &other.ns,
        SocketAddr::new(other.db_addr.into(), 5432),
        Duration::from_secs(2),
        None,
    )
    .await?;
    check(
        format!("{}: not partitioned, connects ({probe:?})", other.name),
        probe == Probe::Connected,
    );
    netns::partition(h, false).await?;
    let (probe, _) = netns::probe(
        &h.ns,
        SocketAddr::new(h.db_addr.into(), 5432),
        Duration::from_secs(2),
        None,
    )
    .await?;
    check(
        format!("{}: healed, connects again ({probe:?})", h.name),
        probe == Probe::Connected,
    );
    netns::slow(net, h, true).await?;
    let shown = netns::qdiscs(h).await?;
    check(
        format!("{}: token bucket on its link ({})", h.name, shown.trim()),
        shown.contains("tbf") && shown.contains("64Kbit"),
    );
    netns::slow(net, h, false).await?;
    let shown = netns::qdiscs(h).await?;
    check(
        format!("{}: token bucket removed ({})", h.name, shown.trim()),
        !shown.contains("tbf"),
    );
    let before = cluster
        .psql("postgres", "SELECT pg_postmaster_start_time()")
        .await?;
    cluster.restart().await?;
    let after = cluster
        .psql("postgres", "SELECT pg_postmaster_start_time()")
        .await?;
    check(
        format!(
            "the cluster restarts ({} -> {})",
            before.trim(),
            after.trim()
        ),
        before != after,
    );
    let h1 = &net.hosts[0];
    let listen = cmd::in_ns(&h1.ns, ["true"], t).await;
    check(
        "the host namespaces run programs".to_owned(),
        listen.is_ok(),
    );
    if !ok {
        bail!("the infrastructure is not as the rounds need it");
    }
    cluster.stop().await?;
    Ok(true)
}
