//! The throw-away PostgreSQL 15 cluster the arms on the PostgreSQL lock share, started and
//! removed by the experiment itself, as the collector's own tests do
//! (`report-collector/tests/collector/util/cluster.rs`).
//!
//! The cluster lives in a directory of its own under /tmp, runs as user `postgres` (through
//! `runuser`, so the experiment runs as root), listens only on its Unix socket, with `fsync`
//! off. It holds one database with the role `report_collector` and a schema of that name owned
//! by it, set up as the collector's README tells an operator to; each arm names its own
//! `lock-name` in it.
//!
//! It is stopped and its directory removed however the experiment ends (an error, a panic,
//! ctrl-C, `kill -9`): a watcher process, in a process group of its own so the terminal's
//! ctrl-C does not reach it, waits for the end of its stdin, a pipe whose other end only the
//! experiment holds (never inherited by the processes it starts), then stops the cluster and
//! removes the directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

/// Where Debian's postgresql-15 package puts the server's programs.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The database the collectors use.
pub const DATABASE: &str = "experiment";

/// What to do when the cluster cannot be started here, in one sentence.
pub const HOW_TO_INSTALL: &str = "the arms on the PostgreSQL lock start a throw-away PostgreSQL 15 \
     cluster: install it with `apt install postgresql-15` (on Debian 12, scripts/install-deps.sh \
     installs it as the postgresql package) and run \
     the experiment as root (the cluster runs as user postgres), or leave those arms out with \
     --without-postgres";

/// A running cluster; stopped and removed when dropped (or when the experiment ends anyhow).
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    pub port: u16,
    /// Its stdin closes when the cluster is dropped or the process ends; it then stops the
    /// cluster and removes `dir`.
    watcher: Child,
}

/// Why the cluster cannot be started on this machine, if it cannot: a sentence naming what to
/// install or how to run.
pub fn missing_prerequisite() -> Option<String> {
    if !Path::new(BIN).join("postgres").exists() {
        return Some(format!("no {BIN}/postgres: {HOW_TO_INSTALL}"));
    }
    if !nix::unistd::Uid::effective().is_root() {
        return Some(format!("not running as root: {HOW_TO_INSTALL}"));
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(_)) => None,
        _ => Some(format!("no user postgres: {HOW_TO_INSTALL}")),
    }
}

impl Cluster {
    /// Starts a cluster with the database [`DATABASE`], the role `report_collector` and its
    /// schema; takes about a second.
    pub fn start() -> anyhow::Result<Cluster> {
        if let Some(why) = missing_prerequisite() {
            bail!("{why}");
        }
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .context("no user postgres")?;
        let dir = tempfile::Builder::new()
            .prefix("experiment-pg")
            .tempdir_in("/tmp")
            .context("cannot create the cluster's folder in /tmp")?
            .keep();
        // Watched before anything is made in it: an error below drops the cluster, and the
        // watcher removes what was made.
        let cluster = Cluster {
            watcher: watch(&dir)?,
            dir,
            port: free_port()?,
        };
        nix::unistd::chown(&cluster.dir, Some(user.uid), Some(user.gid))
            .context("cannot give the cluster's folder to user postgres")?;
        let data = cluster.data();
        as_postgres(&[
            &format!("{BIN}/initdb"),
            "-D",
            &data,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ])?;
        as_postgres(&[
            &format!("{BIN}/pg_ctl"),
            "-D",
            &data,
            "-o",
            &format!(
                "-k {} -c listen_addresses='' -p {} -c fsync=off",
                cluster.socket_dir(),
                cluster.port
            ),
            "-l",
            &format!("{}/log", cluster.socket_dir()),
            "-w",
            "start",
        ])?;
        cluster.psql("postgres", "CREATE ROLE report_collector LOGIN")?;
        cluster.psql("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
        cluster.psql(
            DATABASE,
            &format!(
                "CREATE SCHEMA report_collector AUTHORIZATION report_collector; \
                 ALTER ROLE report_collector IN DATABASE {DATABASE} SET search_path = report_collector;"
            ),
        )?;
        Ok(cluster)
    }

    /// The directory of its socket, data and log.
    pub fn socket_dir(&self) -> String {
        self.dir.display().to_string()
    }

    fn data(&self) -> String {
        format!("{}/data", self.socket_dir())
    }

    /// The collector's `postgres.connect`: the role `report_collector`, the database
    /// [`DATABASE`], over the Unix socket.
    pub fn connect(&self) -> String {
        format!(
            "host={} port={} user=report_collector dbname={DATABASE}",
            self.socket_dir(),
            self.port
        )
    }

    /// Runs `sql` as the superuser in database `db`; returns the rows, `|`-separated.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--", "psql", "-X", "-A", "-t", "-q"])
            .args(["-v", "ON_ERROR_STOP=1", "-h", &self.socket_dir()])
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .context("cannot run psql through runuser")?;
        if !out.status.success() {
            bail!(
                "psql {sql}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The ticket the lock's row `lock_name` still names (the one the next holder would
    /// resume), if the row and a ticket exist.
    pub fn row_ticket(&self, lock_name: &str) -> Option<String> {
        let tables = self
            .psql(
                DATABASE,
                "SELECT to_regclass('report_collector.report_collector_lock') IS NOT NULL",
            )
            .ok()?;
        if tables != "t" {
            return None;
        }
        let ticket = self
            .psql(
                DATABASE,
                &format!(
                    "SELECT COALESCE(ticket, '') FROM report_collector.report_collector_lock \
                     WHERE name = '{}'",
                    lock_name.replace('\'', "''")
                ),
            )
            .ok()?;
        (!ticket.is_empty()).then_some(ticket)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.watcher.stdin.take());
        // The watcher stops the cluster and removes its folder; it only fails to be waited
        // for if it is already gone.
        let _ = self.watcher.wait();
    }
}

/// A shell that waits for the end of its stdin, then stops the cluster in `dir` and removes
/// `dir`. In a process group of its own and deaf to the terminal's signals, so a ctrl-C that
/// ends the experiment does not end it before it has cleaned up.
fn watch(dir: &Path) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .arg("-c")
        .arg(
            "trap '' INT TERM HUP QUIT; cat >/dev/null; \
             if [ -f \"$2/data/postmaster.pid\" ]; then \
             runuser -u postgres -- \"$1/pg_ctl\" -D \"$2/data\" -m immediate -w stop; fi; \
             rm -rf \"$2\"",
        )
        .arg("sh")
        .arg(BIN)
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the cluster's watcher")
}

/// A TCP port number nothing listens on now: it names the cluster's socket.
fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener
        .local_addr()
        .context("cannot read the bound port")?
        .port())
}

fn as_postgres(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run runuser")?;
    if !out.status.success() {
        bail!(
            "{}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
