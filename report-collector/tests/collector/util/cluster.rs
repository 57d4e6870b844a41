//! A throw-away PostgreSQL 15 cluster for the tests of the PostgreSQL lock: in a directory of
//! its own under /tmp, reached over its Unix socket, run as user postgres through runuser.
//!
//! Starting one takes about a second (measured on the 2-core test machine under load: initdb
//! 0.6 s, `pg_ctl start` 0.12 s, the role and schema 0.25 s), and a database in a running one
//! 0.1 s. So the tests of one run share one cluster ([`Cluster::shared`]), each test with a
//! database of its own ([`Cluster::fleet`]), named for the test, in which it may alter the
//! tables or put a trigger on them without touching another test's.
//!
//! A cluster is stopped and its directory removed when it is dropped or, for a shared one (a
//! static, never dropped), when the test process ends, however it ends: a watcher process
//! started with it waits for the end of its stdin, a pipe whose other end only this process
//! holds (never inherited by the processes the tests start), then stops the server and removes
//! the directory.

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
        // Watched before anything is made in it: a failure below drops the cluster, and the
        // watcher removes what was made.
        let cluster = Cluster {
            watcher: watch(&dir),
            dir,
            port: free_port(),
        };
        prepare(&cluster.dir);
        chown_tree(&cluster.dir, &user);
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
        ]);
        as_postgres(&[
            &format!("{BIN}/pg_ctl"),
            "-D",
            &data,
            "-o",
            &format!(
                "-k {} -c listen_addresses='' -p {} -c fsync=off {}",
                cluster.socket_dir(),
                cluster.port,
                options.replace("{dir}", &cluster.socket_dir())
            ),
            "-l",
            &format!("{}/log", cluster.socket_dir()),
            "-w",
            "start",
        ]);
        cluster
    }

    /// A database `name` of its own for one test, set up as the README tells an operator to
    /// (PostgreSQL 15: no role creates in public by default, so the collector gets a schema of
    /// its own). Each test names its own: a name used twice fails.
    pub fn fleet(&'static self, name: &str) -> Fleet {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.psql(
            name,
            &format!(
                "CREATE SCHEMA report_collector AUTHORIZATION report_collector; \
                 ALTER ROLE report_collector IN DATABASE \"{name}\" SET search_path = report_collector;"
            ),
        );
        Fleet {
            cluster: self,
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
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--", "psql", "-X", "-A", "-t", "-q"])
            .args(["-v", "ON_ERROR_STOP=1", "-h", &self.socket_dir()])
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
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
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.watcher.stdin.take());
        let _ = self.watcher.wait();
    }
}

/// One test's database in the shared cluster: a fleet of collectors of its own.
pub struct Fleet {
    cluster: &'static Cluster,
    db: String,
}

impl Fleet {
    /// The collector's `postgres.connect`: the role `report_collector`, this database.
    pub fn connect(&self) -> String {
        format!(
            "host={} port={} user=report_collector dbname={}",
            self.cluster.socket_dir(),
            self.cluster.port,
            self.db
        )
    }

    /// Runs `sql` as the superuser in this database; returns the rows, `|`-separated.
    pub fn psql(&self, sql: &str) -> String {
        self.cluster.psql(&self.db, sql)
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
            "cat >/dev/null; runuser -u postgres -- \"$1/pg_ctl\" -D \"$2/data\" -m immediate -w stop; \
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
