//! How one arm's `report-collector` runs are configured and started.
//!
//! Every run of an arm shares one config file, one lock file and one state directory, exactly as
//! the timer's runs share them on a real host.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use tokio::process::Command;

use crate::arm::{Arm, Policy};
use crate::params::Params;
use crate::server::human;

/// The environment systemd gives a service its timer started: which timer.
pub const TRIGGER_UNIT: &str = "report-collector.timer";

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

/// The collector's config file for this arm.
pub fn config_text(arm: &Arm, params: &Params, server_url: &str, dir: &Path) -> String {
    let mut text = format!(
        "# Written by the experiment: the shipped defaults with time compressed.\n\
         server-url = \"{server_url}\"\n\
         policy = \"{policy}\"\n\
         lock-file = \"{lock}\"\n\
         report-dir = \"{reports}\"\n\
         state-file = \"{state}\"\n\
         metrics-file = \"{metrics}\"\n\
         keep-reports = 100\n\
         poll-interval = \"{poll}\"\n\
         request-timeout = \"2s\"\n\
         deadline = \"{deadline}\"\n\
         lock-wait = \"{lock_wait}\"\n\
         replace-grace = \"{grace}\"\n\
         schedule-period = \"{period}\"\n",
        policy = effective_policy(arm, params),
        lock = dir.join("collector.lock").display(),
        reports = dir.join("reports").display(),
        state = dir.join("last-run.json").display(),
        metrics = dir.join("collector.prom").display(),
        poll = human(params.poll_interval),
        deadline = human(params.run_deadline()),
        lock_wait = human(params.lock_wait()),
        grace = human(params.replace_grace()),
        period = human(params.slot),
    );
    if arm.starting_deadline {
        text.push_str(&format!(
            "starting-deadline = \"{}\"\n",
            human(params.starting_deadline())
        ));
    }
    text
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
        let config = dir.join("report-collector.toml");
        fs::write(&config, config_text(arm, params, server_url, dir))
            .with_context(|| format!("cannot write {}", config.display()))?;
        Ok(CollectorSetup {
            binary: binary.to_path_buf(),
            config,
            logs,
        })
    }

    /// The command for run number `seq`; `trigger_usec` is set when a timer fires it.
    pub fn command(&self, seq: usize, trigger_usec: Option<u128>) -> anyhow::Result<Command> {
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
        if let Some(usec) = trigger_usec {
            cmd.env("TRIGGER_UNIT", TRIGGER_UNIT)
                .env("TRIGGER_TIMER_REALTIME_USEC", usec.to_string());
        }
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

    fn arm(id: ArmId) -> Arm {
        *Arm::ALL.iter().find(|a| a.id == id).unwrap()
    }

    #[test]
    fn only_the_deadline_arm_sets_a_starting_deadline() {
        let p = Params::default();
        let dir = Path::new("/x");
        let with = config_text(&arm(ArmId::ForbidDeadline), &p, "http://127.0.0.1:1", dir);
        let without = config_text(&arm(ArmId::ForbidNoDeadline), &p, "http://127.0.0.1:1", dir);
        assert!(with.contains("starting-deadline = \"500ms\""), "{with}");
        assert!(!without.contains("starting-deadline"), "{without}");
        assert!(with.contains("schedule-period = \"3000ms\""));
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
