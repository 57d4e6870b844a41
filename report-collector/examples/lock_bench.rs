//! What the shared lock costs a run: lock acquire + release with the flock backend and with
//! the PostgreSQL backend (connect, schema check, advisory lock, lease row, release, close: all
//! a run pays), and the connection's start alone (startup and authentication, the part no
//! statement can save), the median of many, printed. Run by `bench/report-collector/lock.sh`,
//! which starts a throw-away cluster; by hand: `lock_bench RUNS "host=/run/postgresql user=... dbname=..."`.

use std::time::{Duration, Instant};

use report_collector::config::{PostgresConfig, Tls};
use report_collector::lock::flock::FlockLock;
use report_collector::lock::postgres::PostgresLock;
use report_collector::lock::{LockGuard, Policy, Request, RunLock};

fn request() -> Request {
    Request {
        policy: Policy::Forbid,
        lock_wait: Duration::ZERO,
        replace_grace: Duration::ZERO,
        deadline: tokio::time::Instant::now() + Duration::from_secs(30),
        deadline_setting: Duration::from_secs(30),
        slot: None,
    }
}

async fn median_of(runs: usize, mut once: impl AsyncFnMut()) -> Duration {
    let mut took = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        once().await;
        took.push(start.elapsed());
    }
    took.sort();
    took[runs / 2]
}

async fn acquire_release(lock: &impl RunLock) {
    let acquired = report_collector::lock::acquire(lock, request())
        .await
        .expect("the lock is free");
    acquired.guard.expect("a guard").release(None).await;
}

/// Connected (startup and authentication done), then closed without a statement.
async fn connect_only(connect: &str) {
    let (client, connection) = tokio_postgres::connect(connect, tokio_postgres::NoTls)
        .await
        .expect("the cluster answers");
    drop(client);
    drop(connection);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(200);
    let connect = args.next();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let flock = FlockLock::new(dir.path().join("bench.lock"));
        let flock_median = median_of(runs, async || acquire_release(&flock).await).await;
        println!(
            "lock acquire+release, flock:    median {:>9.3} ms of {runs}",
            flock_median.as_secs_f64() * 1e3
        );
        let Some(connect) = connect else {
            println!("lock acquire+release, postgres: not measured (no connect string given)");
            return;
        };
        let config = PostgresConfig {
            connect: connect.clone(),
            lock_name: "lock-bench".to_owned(),
            tls: Tls::Disable,
            ..PostgresConfig::default()
        };
        let lock = PostgresLock::from_config(&config).unwrap();
        let pg_median = median_of(runs, async || acquire_release(&lock).await).await;
        println!(
            "lock acquire+release, postgres: median {:>9.3} ms of {runs} (Unix socket, same host; {:.0}x flock)",
            pg_median.as_secs_f64() * 1e3,
            pg_median.as_secs_f64() / flock_median.as_secs_f64()
        );
        let connect_median = median_of(runs, async || connect_only(&connect).await).await;
        println!(
            "connection start, postgres:     median {:>9.3} ms of {runs} (startup and authentication, no statement)",
            connect_median.as_secs_f64() * 1e3
        );
    });
}
