//! A throw-away PostgreSQL 15 cluster inside the `db` namespace, as the `postgres` user, with
//! the role and database an operator would create. The harness itself talks to it only over
//! its Unix socket, which needs no network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::cleanup;
use crate::cmd;

const T: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    ns: String,
}

impl Cluster {
    /// Creates the cluster under `dir` and starts it in namespace `ns`, listening on `addrs`.
    /// Short TCP keepalives on the server's side: a host cut off silently loses its sessions
    /// within about 4 s instead of the kernel's two hours.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        ns: &str,
        addrs: &[String],
    ) -> anyhow::Result<Cluster> {
        let data = dir.join("data");
        let sock = dir.join("sock");
        for d in [&data, &sock] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        cmd::run(
            "chown",
            ["-R", "postgres:postgres", &dir.display().to_string()],
            T,
        )
        .await?;
        let cluster = Cluster {
            bin: bin.to_owned(),
            data,
            sock,
            log: dir.join("postgres.log"),
            ns: ns.to_owned(),
        };
        cluster
            .as_postgres(&[
                "initdb",
                "-D",
                &cluster.data_arg(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ])
            .await
            .context("initdb failed")?;
        // initdb trusts loopback only; the hosts come from their links, as a fleet would.
        let hba = cluster.data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba)
            .with_context(|| format!("cannot read {}", hba.display()))?;
        rules.push_str("host reports report_collector 169.254.10.0/24 trust\n");
        std::fs::write(&hba, rules).with_context(|| format!("cannot write {}", hba.display()))?;
        let options = format!(
            "-k {} -p 5432 -c listen_addresses='{}' -c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=2 -c fsync=off",
            cluster.sock.display(),
            addrs.join(",")
        );
        cleanup::cluster(bin, &cluster.data);
        cluster
            .as_postgres(&[
                "pg_ctl",
                "-D",
                &cluster.data_arg(),
                "-l",
                &cluster.log.display().to_string(),
                "-o",
                &options,
                "-w",
                "start",
            ])
            .await
            .with_context(|| format!("the cluster did not start ({})", cluster.log_tail()))?;
        // Two calls: CREATE DATABASE cannot share a transaction with anything.
        for sql in [
            "CREATE ROLE report_collector LOGIN",
            "CREATE DATABASE reports OWNER report_collector",
        ] {
            cluster.psql("postgres", sql).await?;
        }
        Ok(cluster)
    }

    fn data_arg(&self) -> String {
        self.data.display().to_string()
    }

    /// Runs a PostgreSQL program as `postgres` inside the namespace: a postmaster started or
    /// restarted by pg_ctl lives where pg_ctl ran.
    async fn as_postgres(&self, argv: &[&str]) -> anyhow::Result<String> {
        let program = self.bin.join(argv[0]).display().to_string();
        let mut args = vec!["runuser", "-u", "postgres", "--", &program];
        args.extend(&argv[1..]);
        cmd::in_ns(&self.ns, args, T).await
    }

    /// `pg_ctl restart -m fast`: every session is cut, the cluster is back within a second or
    /// two.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.as_postgres(&[
            "pg_ctl",
            "-D",
            &self.data_arg(),
            "-l",
            &self.log.display().to_string(),
            "-m",
            "fast",
            "-w",
            "restart",
        ])
        .await
        .map(drop)
    }

    /// One psql call as `postgres` over the socket, unaligned and tuples only.
    pub async fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        cmd::run(
            "psql",
            [
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &self.sock.display().to_string(),
                "-p",
                "5432",
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ],
            Duration::from_secs(10),
        )
        .await
    }

    /// Ends every session of the `reports` database coming from `addr` or naming `host` in
    /// its application_name (`report-collector HOST:PID`); how many there were.
    pub async fn terminate_from(&self, addr: &str, host: &str) -> anyhow::Result<u32> {
        let out = self
            .psql(
                "postgres",
                &format!(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = 'reports' AND (client_addr = '{addr}' \
                     OR application_name LIKE 'report-collector {host}:%')"
                ),
            )
            .await?;
        out.trim()
            .parse()
            .with_context(|| format!("unexpected count from psql: {out:?}"))
    }

    /// Every user table of `reports` as JSON rows, and the sessions: the database's own record
    /// of who held the lock and who claimed which slot.
    pub async fn snapshot(&self) -> anyhow::Result<serde_json::Value> {
        let tables = self
            .psql(
                "reports",
                "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) FROM information_schema.tables \
                 WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            )
            .await?;
        let mut out = serde_json::Map::new();
        for table in tables.lines().filter(|l| !l.is_empty()) {
            let rows = self
                .psql(
                    "reports",
                    &format!(
                        "SET TIME ZONE 'UTC'; SELECT coalesce(json_agg(t), '[]') FROM {table} t"
                    ),
                )
                .await?;
            let rows = serde_json::from_str(rows.trim()).unwrap_or(serde_json::Value::Null);
            out.insert(table.to_owned(), rows);
        }
        let sessions = self
            .psql(
                "postgres",
                "SELECT coalesce(json_agg(t), '[]') FROM (SELECT pid, application_name, host(client_addr) AS client, state, \
                 backend_start FROM pg_stat_activity WHERE datname = 'reports') t",
            )
            .await?;
        out.insert(
            "pg_stat_activity".into(),
            serde_json::from_str(sessions.trim()).unwrap_or(serde_json::Value::Null),
        );
        Ok(serde_json::Value::Object(out))
    }

    /// `pg_ctl stop -m fast`; the clean-up registry stops it otherwise.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.as_postgres(&["pg_ctl", "-D", &self.data_arg(), "-m", "fast", "-w", "stop"])
            .await?;
        cleanup::forget_cluster(&self.data);
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}
