//! How one arm's `report-collector` runs are configured and started.
//!
//! Every run of an arm shares one config file, one lock file and one state directory, exactly as
//! the timer's runs share them on a real host. The file is the collector's own `Config`
//! serialised (see [`crate::server::config_file`]).
//!
//! What the runs leave behind is read back here, by the collector's own rules: the tickets of
//! the saved reports (`<UTC time>_<ticket>.csv`), the ticket the lock's record still names, the
//! counters of the metrics textfile, and the ticket a run's output says it took.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use report_collector::config::{Config, LockBackend, PostgresConfig, Tls};
use report_collector::lock::HolderRecord;
use report_collector::lock::Policy;
use report_collector::store::is_report_name;
use tokio::process::Command;

use crate::arm::Arm;
use crate::params::Params;
use crate::scrape::parse;
use crate::server::config_file;

/// One arm's collector setup on disk.
#[derive(Debug, Clone)]
pub struct CollectorSetup {
    binary: PathBuf,
    /// One config file per host.
    configs: Vec<PathBuf>,
    logs: PathBuf,
    /// The lock file, when the arm's policy takes the flock (not under `allow`, nor on the
    /// PostgreSQL lock).
    lock_file: Option<PathBuf>,
    /// Each host's.
    report_dirs: Vec<PathBuf>,
    metrics_files: Vec<PathBuf>,
}

/// What an arm's runs left on disk once they had all ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// The ticket of every saved report, one per file (a ticket saved twice appears twice).
    pub saved_tickets: Vec<String>,
    /// The ticket the lock's record still names: the one the next run would resume.
    pub record_ticket: Option<String>,
    /// `report_collector_resumed_collections_total`: collections of a ticket a run left.
    pub resumed: u64,
}

/// The ticket a run's output last says it took (`got ticket T; ...` for a ticket it requested,
/// `resuming ticket T, ...` for one an earlier run left), if any.
pub fn ticket_in_output(output: &str) -> Option<String> {
    ticket_lines(output).last().map(|(_, ticket)| ticket)
}

/// When a run's output first says it took a ticket: the wall-clock time its log line starts
/// with (`2026-12-02T06:39:25.933562Z ...`), if any line says so.
pub fn ticket_taken_at(output: &str) -> Option<SystemTime> {
    let (line, _) = ticket_lines(output).next()?;
    let stamp = line.split_whitespace().next()?;
    humantime::parse_rfc3339(stamp).ok()
}

/// Every line of `output` that says the run took a ticket, with that ticket.
fn ticket_lines(output: &str) -> impl Iterator<Item = (&str, String)> {
    output.lines().filter_map(|line| {
        let mut took = None;
        for (marker, refused) in [("got ticket ", None), ("resuming ticket ", Some("not "))] {
            let Some(at) = line.find(marker) else {
                continue;
            };
            if refused.is_some_and(|not| line[..at].ends_with(not)) {
                continue;
            }
            let ticket: String = line[at + marker.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
                .collect();
            if !ticket.is_empty() {
                took = Some(ticket);
            }
        }
        took.map(|ticket| (line, ticket))
    })
}

/// The ticket of a saved report's file name, `<YYYYMMDDTHHMMSSZ>_<ticket>.csv`.
pub fn ticket_of_report(name: &str) -> Option<&str> {
    is_report_name(name).then(|| &name[17..name.len() - ".csv".len()])
}

/// The lock's record, if the file holds one (an empty or half-written file holds none).
pub fn read_record(lock_file: &Path) -> Option<HolderRecord> {
    let text = fs::read_to_string(lock_file).ok()?;
    serde_json::from_str(text.trim()).ok()
}

/// The policy the arm's collectors really run with: `allow` everywhere when the lock is switched
/// off for the control run.
pub fn effective_policy(arm: &Arm, params: &Params) -> Policy {
    if params.without_lock {
        Policy::Allow
    } else {
        arm.policy
    }
}

/// The PostgreSQL lock of one host of an arm on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresHost {
    /// `postgres.connect`.
    pub connect: String,
    /// `postgres.lock-name`: the same for every host of the arm.
    pub lock_name: String,
    /// `postgres.host-name`: this host's.
    pub host_name: String,
}

/// The name of host `index` (from 0) of an arm.
pub fn host_name(index: usize) -> String {
    format!("host-{}", index + 1)
}

/// The folder of host `index` of an arm in the arm's folder `dir`: the folder itself when the
/// arm has one host.
pub fn host_dir(arm: &Arm, dir: &Path, index: usize) -> PathBuf {
    if arm.hosts > 1 {
        dir.join(host_name(index))
    } else {
        dir.to_path_buf()
    }
}

/// The collector's configuration for this arm: the shipped defaults with time compressed, all
/// its files in `dir`, a starting deadline only where the arm has one, and the PostgreSQL lock
/// with a scaled lease for a host of an arm on it.
pub fn config(
    arm: &Arm,
    params: &Params,
    server_url: &str,
    dir: &Path,
    postgres: Option<&PostgresHost>,
) -> Config {
    let pg = postgres.map(|pg| PostgresConfig {
        connect: pg.connect.clone(),
        lock_name: pg.lock_name.clone(),
        host_name: Some(pg.host_name.clone()),
        lease: params.lease(),
        tls: Tls::Disable,
        ..PostgresConfig::default()
    });
    Config {
        lock_backend: if pg.is_some() {
            LockBackend::Postgres
        } else {
            LockBackend::Flock
        },
        postgres: pg,
        server_url: server_url.to_owned(),
        policy: effective_policy(arm, params),
        lock_file: dir.join("collector.lock"),
        report_dir: dir.join("reports"),
        state_file: dir.join("last-run.json"),
        metrics_file: Some(dir.join("collector.prom")),
        keep_reports: 100,
        poll_interval: params.poll_interval,
        request_timeout: Duration::from_secs(2),
        deadline: params.run_deadline(),
        lock_wait: params.lock_wait(),
        replace_grace: params.replace_grace(),
        starting_deadline: arm.starting_deadline.then(|| params.starting_deadline()),
        schedule_period: params.slot,
        resume_within: params.resume_within(),
        ..Config::default()
    }
}

impl CollectorSetup {
    /// Writes the arm's config of each host into `dir` (a folder per host when it has
    /// several); `connect` is the PostgreSQL lock's `postgres.connect` for an arm on it.
    pub fn prepare(
        binary: &Path,
        dir: &Path,
        arm: &Arm,
        params: &Params,
        server_url: &str,
        connect: Option<&str>,
    ) -> anyhow::Result<Self> {
        let logs = dir.join("runs");
        fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
        let mut setup = CollectorSetup {
            binary: binary.to_path_buf(),
            configs: Vec::new(),
            logs,
            lock_file: None,
            report_dirs: Vec::new(),
            metrics_files: Vec::new(),
        };
        for index in 0..arm.hosts.max(1) {
            let host = host_dir(arm, dir, index);
            fs::create_dir_all(host.join("reports"))
                .context("cannot create the report directory")?;
            let postgres = connect.filter(|_| arm.on_postgres()).map(|c| PostgresHost {
                connect: c.to_owned(),
                lock_name: arm.slug().to_owned(),
                host_name: host_name(index),
            });
            let config = config(arm, params, server_url, &host, postgres.as_ref());
            let path = host.join("report-collector.toml");
            fs::write(&path, config_file(&config)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
            setup.configs.push(path);
            if config.policy != Policy::Allow && config.lock_backend == LockBackend::Flock {
                setup.lock_file = Some(config.lock_file);
            }
            setup.report_dirs.push(config.report_dir);
            setup.metrics_files.push(
                config
                    .metrics_file
                    .unwrap_or_else(|| host.join("collector.prom")),
            );
        }
        Ok(setup)
    }

    /// How many hosts fire at each slot.
    pub fn hosts(&self) -> usize {
        self.configs.len()
    }

    /// The file run number `seq` writes its stderr to.
    pub fn stderr_path(&self, seq: usize) -> PathBuf {
        self.logs.join(format!("{seq:03}.err"))
    }

    /// Whether process `pid`, run number `seq`, holds a ticket now: its output says it took
    /// ticket T and, when the arm takes the lock, the lock's record names T under `pid` (so
    /// the next run will find it). Returns T.
    pub fn holds_ticket(&self, seq: usize, pid: u32) -> Option<String> {
        let ticket = ticket_in_output(&fs::read_to_string(self.stderr_path(seq)).ok()?)?;
        match &self.lock_file {
            None => Some(ticket),
            Some(lock) => read_record(lock)
                .filter(|r| r.pid == pid && r.ticket.as_deref() == Some(ticket.as_str()))
                .map(|_| ticket),
        }
    }

    /// What the runs left on disk; read once they have all ended.
    /// On the PostgreSQL lock, the ticket its row names is read by the caller (see
    /// [`crate::postgres::Cluster::row_ticket`]).
    pub fn leftovers(&self) -> anyhow::Result<Leftovers> {
        let mut saved_tickets = Vec::new();
        for dir in &self.report_dirs {
            let entries =
                fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
            for entry in entries {
                let name = entry
                    .with_context(|| format!("cannot list {}", dir.display()))?
                    .file_name();
                if let Some(ticket) = name.to_str().and_then(ticket_of_report) {
                    saved_tickets.push(ticket.to_owned());
                }
            }
        }
        saved_tickets.sort();
        let mut resumed = 0.0;
        for file in &self.metrics_files {
            let metrics = fs::read_to_string(file).unwrap_or_default();
            resumed += parse(&metrics)
                .get("report_collector_resumed_collections_total")
                .copied()
                .unwrap_or(0.0);
        }
        // A counter written by the collector as a whole number.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a whole, non-negative count"
        )]
        let resumed = resumed.max(0.0) as u64;
        Ok(Leftovers {
            saved_tickets,
            record_ticket: self
                .lock_file
                .as_deref()
                .and_then(read_record)
                .and_then(|r| r.ticket),
            resumed,
        })
    }

    /// The command for run number `seq` on host `host` (from 0), declared a timer start
    /// (`--trigger timer`, so starting-deadline applies) when a timer fires it.
    pub fn command(&self, seq: usize, host: usize, timer_started: bool) -> anyhow::Result<Command> {
        let config = self
            .configs
            .get(host)
            .with_context(|| format!("the arm has no host {host}"))?;
        let out = File::create(self.logs.join(format!("{seq:03}.out")))
            .context("cannot create a run's log file")?;
        let err = File::create(self.stderr_path(seq)).context("cannot create a run's log file")?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(config)
            .arg("run")
            .env_remove("JOURNAL_STREAM")
            .env_remove("INVOCATION_ID")
            .env_remove("TRIGGER_UNIT")
            .env_remove("TRIGGER_TIMER_REALTIME_USEC")
            .env_remove("TRIGGER_TIMER_MONOTONIC_USEC")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        cmd.arg("--trigger")
            .arg(if timer_started { "timer" } else { "manual" });
        Ok(cmd)
    }

    /// What run number `seq` wrote on stderr, for a failure message.
    pub fn stderr_of(&self, seq: usize) -> String {
        fs::read_to_string(self.stderr_path(seq)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arm::ArmId;
    use report_common::config::ConfigFile;

    fn arm(id: ArmId) -> Arm {
        *Arm::ALL.iter().find(|a| a.id == id).unwrap()
    }

    /// The file written for the arm, checked to load back as the very same configuration.
    fn config_text(arm: &Arm, params: &Params, server_url: &str, dir: &Path) -> String {
        let config = config(arm, params, server_url, dir, None);
        let text = config_file(&config).unwrap();
        let read = Config::parse(Path::new("report-collector.toml"), &text).unwrap();
        assert_eq!(read, config, "{text}");
        text
    }

    #[test]
    fn only_the_deadline_arm_sets_a_starting_deadline() {
        let p = Params::default();
        let dir = Path::new("/x");
        let with = config_text(&arm(ArmId::ForbidDeadline), &p, "http://127.0.0.1:1", dir);
        let without = config_text(&arm(ArmId::ForbidNoDeadline), &p, "http://127.0.0.1:1", dir);
        assert!(with.contains("starting-deadline = \"500ms\""), "{with}");
        assert!(!without.contains("starting-deadline"), "{without}");
        assert!(with.contains("schedule-period = \"3s\""));
        assert!(with.contains("policy = \"forbid\""));
    }

    #[test]
    fn the_lock_free_control_runs_every_arm_with_allow() {
        let p = Params {
            without_lock: true,
            ..Params::default()
        };
        let text = config_text(
            &arm(ArmId::Replace),
            &p,
            "http://127.0.0.1:1",
            Path::new("/x"),
        );
        assert!(text.contains("policy = \"allow\""), "{text}");
    }

    #[test]
    fn resume_within_is_passed_to_every_arm() {
        let dir = Path::new("/x");
        let text = config_text(&arm(ArmId::Replace), &Params::default(), "http://h:1", dir);
        assert!(text.contains("resume-within = \"1m 30s\""), "{text}");
        let off = Params {
            resume_within: Some(Duration::ZERO),
            ..Params::default()
        };
        let text = config_text(&arm(ArmId::ForbidKilled), &off, "http://h:1", dir);
        assert!(text.contains("resume-within = \"0s\""), "{text}");
        assert!(text.contains("policy = \"forbid\""), "{text}");
    }

    #[test]
    fn a_host_on_the_postgres_lock_names_the_arms_lock_and_its_own_host() {
        let p = Params::default();
        let pg = PostgresHost {
            connect: "host=/tmp/x port=5 user=report_collector dbname=experiment".into(),
            lock_name: "postgres-fenced".into(),
            host_name: host_name(1),
        };
        let arm = arm(ArmId::PostgresFenced);
        let dir = host_dir(&arm, Path::new("/x"), 1);
        assert_eq!(dir, Path::new("/x/host-2"));
        let config = config(&arm, &p, "http://h:1", &dir, Some(&pg));
        let text = config_file(&config).unwrap();
        let read = Config::parse(Path::new("report-collector.toml"), &text).unwrap();
        assert_eq!(read, config, "{text}");
        for needle in [
            "lock-backend = \"postgres\"",
            "[postgres]",
            "lock-name = \"postgres-fenced\"",
            "host-name = \"host-2\"",
            "lease = \"1s\"",
            "tls = \"disable\"",
            "policy = \"forbid\"",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert_eq!(
            host_dir(&self::arm(ArmId::Forbid), Path::new("/x"), 0),
            Path::new("/x")
        );
    }

    #[test]
    fn the_ticket_a_run_took_is_read_from_its_output() {
        let output = "\
2026-12-02T04:09:33.011032Z  INFO not resuming ticket a-1_0, which pid 7 left unfinished: resuming is off (resume-within = 0s) TICKET=a-1_0
2026-12-02T04:09:33.012000Z  INFO cancelled ticket a-1_0 on the server: resuming is off TICKET=a-1_0
2026-12-02T04:09:33.013000Z  INFO got ticket b-2_0; polling for its report TICKET=b-2_0
";
        assert_eq!(ticket_in_output(output).as_deref(), Some("b-2_0"));
        let resumed = "2026-12-02T04:09:33.011032Z  INFO resuming ticket c-3_1, which pid 7 left unfinished (requested 3s ago, resume-within 1m 30s) TICKET=c-3_1\n";
        assert_eq!(ticket_in_output(resumed).as_deref(), Some("c-3_1"));
        assert_eq!(
            ticket_in_output(&output[..output.find("got").unwrap()]),
            None
        );
        assert_eq!(
            ticket_in_output("WARN skipped this run: ... with ticket d_0"),
            None
        );
    }

    #[test]
    fn when_a_run_took_its_ticket_is_read_from_its_output() {
        let output = "\
2026-12-02T04:09:33.011032Z  INFO not resuming ticket a-1_0, which pid 7 left unfinished: resuming is off (resume-within = 0s) TICKET=a-1_0
2026-12-02T04:09:33.250000Z  INFO got ticket b-2_0; polling for its report TICKET=b-2_0
2026-12-02T04:09:35.000000Z  INFO got ticket b-3_0; polling for its report TICKET=b-3_0
";
        assert_eq!(
            ticket_taken_at(output),
            Some(humantime::parse_rfc3339("2026-12-02T04:09:33.250Z").unwrap())
        );
        assert_eq!(
            ticket_taken_at(&output[..output.find("2026-12-02T04:09:33.25").unwrap()]),
            None
        );
        assert_eq!(ticket_taken_at("got ticket b-2_0 without a time"), None);
    }

    #[test]
    fn saved_reports_name_their_ticket() {
        assert_eq!(
            ticket_of_report("20261202T040928Z_8f902e31-b2b2-4ad5-b3f9-8e5b4e695797_0.csv"),
            Some("8f902e31-b2b2-4ad5-b3f9-8e5b4e695797_0")
        );
        assert_eq!(ticket_of_report(".20261202T040928Z_a_0.csv.x1.tmp"), None);
        assert_eq!(ticket_of_report("notes.csv"), None);
    }
}
