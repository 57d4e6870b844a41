//! A throw-away PostgreSQL 15 cluster for the tests of the PostgreSQL lock: in a directory of
//! its own under /tmp, reached over its Unix socket, run as user postgres through runuser.
//!
//! Starting one takes about a second (measured on the 2-core test machine under load: initdb
//! 0.6 s, `pg_ctl start` 0.12 s, the role and schema 0.25 s), and a database in a running one
//! 0.1 s. So the tests of one run share one cluster ([`Cluster::shared`]), each test with a
//! database of its own ([`Cluster::fleet`]), named for the test, in which it may alter the
//! tables or put a trigger on them without touching another test's.
//!
//! A test of failover starts clusters of its own: a primary, and a streaming standby of it
//! ([`Cluster::standby_of`], `pg_basebackup -R` into a directory and port of its own), which it
//! kills ([`Cluster::kill`]) and promotes ([`Cluster::promote`]); [`Cluster::fleet_of`] is the
//! primary's database as the standby has it.
//!
//! A cluster (a standby too) is stopped and its directory removed when it is dropped or, for a
//! shared one (a static, never dropped), when the test process ends, however it ends: a
//! watcher process started with it waits for the end of its stdin, a pipe whose other end only
//! this process holds (never inherited by the processes the tests start), then stops the
//! server and removes the directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use super::{prerequisite, require_root, require_user};

pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running cluster.
pub struct Cluster {
    dir: PathBuf,
    pub port: u16,
    /// Its stdin is closed when the cluster is dropped or the process ends: it then stops the
    /// cluster and removes its directory.
    watcher: Child,
}

impl Cluster {
    /// The cluster every test of this run that needs one shares, started by the first: the
    /// role `report_collector` in it, no database yet. A failure names what is missing
    /// ([`prerequisite`]), in each test that asks for it.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let cluster = Cluster::start_with("", |_| {});
            cluster.psql("postgres", "CREATE ROLE report_collector LOGIN");
            cluster
        })
    }

    /// A cluster started with the server options `options` (`{dir}` is its directory), after
    /// `prepare` has put what they name into that directory (then given to postgres).
    pub fn start_with(options: &str, prepare: impl FnOnce(&Path)) -> Cluster {
        let cluster = Cluster::watched(prepare);
        as_postgres(&[
            &format!("{BIN}/initdb"),
            "-D",
            &cluster.data(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]);
        cluster.start(options);
        cluster
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`: it follows the primary's WAL
    /// from the backup on), in a directory of its own, on a port of its own, started with the
    /// server options `options` and read-only until [`Cluster::promote`]d. It connects to the
    /// primary as `application_name` (`cluster_name`), the name `synchronous_standby_names`
    /// matches. The primary's own options are on its command line, not in its configuration
    /// files, so the standby does not take them from the backup.
    pub fn standby_of(primary: &Cluster, application_name: &str, options: &str) -> Cluster {
        let standby = Cluster::watched(|_| {});
        as_postgres(&[
            &format!("{BIN}/pg_basebackup"),
            "-D",
            &standby.data(),
            "-h",
            &primary.socket_dir(),
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        ]);
        standby.start(&format!("-c cluster_name={application_name} {options}"));
        standby
    }

    /// A directory of its own under /tmp, watched before anything is made in it (a failure
    /// later drops the cluster, and the watcher removes what was made), with what `prepare`
    /// put in it, given to postgres; and a port.
    fn watched(prepare: impl FnOnce(&Path)) -> Cluster {
        require_root("the cluster runs as user postgres");
        prerequisite(
            "the PostgreSQL 15 binaries",
            if Path::new(BIN).join("postgres").exists() {
                Ok(())
            } else {
                Err(format!("no {BIN}/postgres (apt install postgresql-15)"))
            },
        );
        let user = require_user("postgres");
        let dir = tempfile::Builder::new()
            .prefix("rc-pg")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let cluster = Cluster {
            watcher: watch(&dir),
            dir,
            port: free_port(),
        };
        prepare(&cluster.dir);
        chown_tree(&cluster.dir, &user);
        cluster
    }

    /// Starts the server on its data directory with the server options `options`.
    fn start(&self, options: &str) {
        self.pg_ctl(&[
            "-o",
            &format!(
                "-k {} -c listen_addresses='' -p {} -c fsync=off {}",
                self.socket_dir(),
                self.port,
                options.replace("{dir}", &self.socket_dir())
            ),
            "-l",
            &format!("{}/log", self.socket_dir()),
            "-w",
            "start",
        ]);
    }

    /// Stops the server at once, as a crash of its host would (`pg_ctl stop -m immediate`):
    /// no checkpoint, nothing more sent to a standby. Its directory stays until it is dropped.
    pub fn kill(&self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }

    /// Makes a standby the primary (`pg_ctl promote -w`: returns once it takes writes), on a
    /// timeline of its own.
    pub fn promote(&self) {
        self.pg_ctl(&["-w", "promote"]);
    }

    /// `pg_ctl -D DATA` with `args`, as postgres.
    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let mut all = vec![format!("{BIN}/pg_ctl"), "-D".to_owned(), data];
        all.extend(args.iter().map(|&a| a.to_owned()));
        as_postgres(&all.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// A database `name` of its own for one test, set up as the README tells an operator to
    /// (PostgreSQL 15: no role creates in public by default, so the collector gets a schema of
    /// its own). Each test names its own: a name used twice fails.
    pub fn fleet(&self, name: &str) -> Fleet {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.psql(
            name,
            &format!(
                "CREATE SCHEMA report_collector AUTHORIZATION report_collector; \
                 ALTER ROLE report_collector IN DATABASE \"{name}\" SET search_path = report_collector;"
            ),
        );
        self.fleet_of(name)
    }

    /// The database `name`, made already (on a standby: by its primary), as a fleet.
    pub fn fleet_of(&self, name: &str) -> Fleet {
        Fleet {
            socket_dir: self.socket_dir(),
            port: self.port,
            db: name.to_owned(),
        }
    }

    /// The directory of its socket (and of its data, log and whatever `prepare` put there).
    pub fn socket_dir(&self) -> String {
        self.dir.display().to_string()
    }

    pub fn data(&self) -> String {
        format!("{}/data", self.socket_dir())
    }

    /// Runs `sql` as the superuser in database `db`; returns the rows, `|`-separated.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        psql(&self.socket_dir(), self.port, db, sql)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.watcher.stdin.take());
        let _ = self.watcher.wait();
    }
}

/// One test's database in a cluster (mostly the shared one): a fleet of collectors of its own.
pub struct Fleet {
    socket_dir: String,
    port: u16,
    db: String,
}

impl Fleet {
    /// The collector's `postgres.connect`: the role `report_collector`, this database.
    pub fn connect(&self) -> String {
        format!(
            "host={} port={} user=report_collector dbname={}",
            self.socket_dir, self.port, self.db
        )
    }

    /// Runs `sql` as the superuser in this database; returns the rows, `|`-separated.
    pub fn psql(&self, sql: &str) -> String {
        psql(&self.socket_dir, self.port, &self.db, sql)
    }

    /// One column of the lock's row `name`.
    pub fn row(&self, name: &str, column: &str) -> String {
        self.psql(&format!(
            "SELECT {column} FROM report_collector.report_collector_lock WHERE name = '{name}'"
        ))
    }
}

/// A shell that waits for the end of its stdin, then stops the cluster in `dir` and removes
/// `dir`.
fn watch(dir: &Path) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(
            // A test killed while its cluster starts leaves `pg_ctl start` running: its end is
            // waited for, or the server it starts would outlive the stop.
            "cat >/dev/null; \
             while pgrep -f -- \"pg_ctl -D $2/data\" >/dev/null; do sleep 0.1; done; \
             runuser -u postgres -- \"$1/pg_ctl\" -D \"$2/data\" -m immediate -w stop; \
             rm -rf \"$2\"",
        )
        .arg("sh")
        .arg(BIN)
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A TCP port nothing listens on now (the cluster's socket is named by it; the one that
/// listens on 127.0.0.1 listens there).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn chown_tree(path: &Path, user: &nix::unistd::User) {
    nix::unistd::chown(path, Some(user.uid), Some(user.gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), user);
        }
    }
}

/// Runs `sql` as the superuser in database `db` of the server on `socket_dir`, `port`.
fn psql(socket_dir: &str, port: u16, db: &str, sql: &str) -> String {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", "psql", "-X", "-A", "-t", "-q"])
        .args(["-v", "ON_ERROR_STOP=1", "-h", socket_dir])
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", db])
        .args(["-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn as_postgres(args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
