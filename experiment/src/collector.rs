//! How one arm's `report-collector` runs are configured and started.
//!
//! Every run of an arm shares one config file, one lock file and one state directory, exactly as
//! the timer's runs share them on a real host. The file is the collector's own `Config`
//! serialised (see [`crate::server::config_file`]).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use report_collector::config::{Config, Policy};
use tokio::process::Command;

use crate::arm::Arm;
use crate::params::Params;
use crate::server::config_file;

/// One arm's collector setup on disk.
#[derive(Debug, Clone)]
pub struct CollectorSetup {
    binary: PathBuf,
    config: PathBuf,
    logs: PathBuf,
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

/// The collector's configuration for this arm: the shipped defaults with time compressed, all
/// its files in `dir`, and a starting deadline only where the arm has one.
pub fn config(arm: &Arm, params: &Params, server_url: &str, dir: &Path) -> Config {
    Config {
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
        ..Config::default()
    }
}

impl CollectorSetup {
    /// Writes the arm's config into `dir`.
    pub fn prepare(
        binary: &Path,
        dir: &Path,
        arm: &Arm,
        params: &Params,
        server_url: &str,
    ) -> anyhow::Result<Self> {
        let logs = dir.join("runs");
        fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
        fs::create_dir_all(dir.join("reports")).context("cannot create the report directory")?;
        let path = dir.join("report-collector.toml");
        fs::write(&path, config_file(&config(arm, params, server_url, dir))?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(CollectorSetup {
            binary: binary.to_path_buf(),
            config: path,
            logs,
        })
    }

    /// The command for run number `seq`, declared a timer start (`--trigger timer`, so
    /// starting-deadline applies) when a timer fires it.
    pub fn command(&self, seq: usize, timer_started: bool) -> anyhow::Result<Command> {
        let out = File::create(self.logs.join(format!("{seq:03}.out")))
            .context("cannot create a run's log file")?;
        let err = File::create(self.logs.join(format!("{seq:03}.err")))
            .context("cannot create a run's log file")?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(&self.config)
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
        fs::read_to_string(self.logs.join(format!("{seq:03}.err"))).unwrap_or_default()
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
        let config = config(arm, params, server_url, dir);
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
}
