//! What `report-collector` does once `main` has parsed the command line, set up logging,
//! loaded the configuration and built the runtime: the lock the configuration names, then one
//! run, `status` or `check-config` with it, and the outcome as the exit code. All of it runs
//! on the one current-thread runtime `main` built (a periodic job needs no more); asking
//! systemd, waiting for the lock and collecting share it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use report_common::config::Loaded;
use report_common::{check_config, exit, message_id};

use crate::client::HttpServer;
use crate::config::{Config, deprecation_note};
use crate::lock::{Lock, RunLock};
use crate::outcome::{CancelSignal, Failure, Outcome, Skip};
use crate::schedule::DeclaredTrigger;
use crate::{identity, run, status, systemd};

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Collect one report; `trigger` is what `--trigger` declares started it.
    Run { trigger: DeclaredTrigger },
    /// Judge the collector's health and show what it is based on, as text or JSON.
    Status { json: bool },
    /// Check the configuration as a run would and print it.
    CheckConfig,
}

impl Command {
    /// Every exit code the command may end with, as `--help`, the man page and the READMEs
    /// list them: its own, a command-line mistake's (`main`) and a configuration error's.
    pub fn exit_codes(self) -> BTreeSet<u8> {
        let own: Vec<u8> = match self {
            // Each outcome's, as `outcome` maps them; a run that cannot become the state
            // directory's owner fails as any other failure does.
            Command::Run { .. } => [
                Outcome::Collected {
                    report: PathBuf::new(),
                },
                Outcome::Cancelled(CancelSignal::Int),
                Outcome::Cancelled(CancelSignal::Term),
            ]
            .iter()
            .map(Outcome::exit_code)
            .chain(Skip::ALL.map(Skip::exit_code))
            .chain(Failure::ALL.map(Failure::exit_code))
            .collect(),
            // Each verdict's, and the PostgreSQL lock's database out of reach.
            Command::Status { .. } => vec![
                status::code::HEALTHY,
                status::code::STALE,
                status::code::CANNOT_INSPECT,
                status::code::NO_PERMISSION,
                status::code::IN_THE_FUTURE,
                exit::UNAVAILABLE,
            ],
            Command::CheckConfig => vec![exit::SUCCESS],
        };
        own.into_iter().chain([exit::USAGE, exit::CONFIG]).collect()
    }
}

/// Exit 78 for a configuration error: on stderr for `check-config`, in the journal otherwise.
pub fn config_rejected(checking: bool, error: &str) -> ExitCode {
    if checking {
        check_config::refused("report-collector", &error)
    } else {
        tracing::error!(
            MESSAGE_ID = message_id::COLLECTOR_CONFIG_REJECTED,
            "{error}"
        );
        ExitCode::from(exit::CONFIG)
    }
}

/// Does `command` with the configuration `loaded`, on the runtime this is awaited on.
pub async fn execute(command: Command, loaded: Loaded<Config>) -> ExitCode {
    let checking = command == Command::CheckConfig;
    // A run started as root becomes the lock directory's owner before the lock is made:
    // making the PostgreSQL lock reads the password, and no secret may be read by a process
    // that then hands itself to another user (see `identity`).
    if let Command::Run { .. } = command
        && let Err(e) = identity::become_owner_of(&loaded.config)
    {
        e.log();
        return ExitCode::from(exit::FAILURE);
    }
    // The lock is made here for `check-config` too: what it reads at start (the password
    // file, the CA file) is then checked as a run would check it. Making it connects nowhere.
    match Lock::from_config(&loaded.config) {
        Ok(lock) => with_lock(command, loaded, &lock).await,
        // The file that named what was refused, as every other configuration error names it.
        Err(e) => {
            let file = loaded
                .source
                .as_ref()
                .map(|path| format!("{}: ", path.display()))
                .unwrap_or_default();
            config_rejected(checking, &format!("configuration error: {file}{e}"))
        }
    }
}

/// `command` with the lock made.
async fn with_lock(command: Command, mut loaded: Loaded<Config>, lock: &Lock) -> ExitCode {
    match command {
        Command::Run { trigger } => one_run(&loaded.config, lock, trigger).await,
        Command::Status { json } => {
            if loaded.config.stale_after.is_none()
                && let Some(interval) = timer_interval().await
            {
                // The default stale-after follows the timer's own schedule.
                loaded.config.schedule_period = interval;
            }
            status::print(&loaded.config, lock, json).await
        }
        Command::CheckConfig => print_config(&loaded, lock),
    }
}

/// One run, cancelled by SIGTERM or SIGINT, its outcome mapped to the exit code.
async fn one_run(config: &Config, lock: &impl RunLock, declared: DeclaredTrigger) -> ExitCode {
    // Installed before the run starts: a signal that comes at any point cancels it.
    let cancel = match cancel_signal() {
        Ok(cancel) => cancel,
        Err(e) => {
            tracing::error!("cannot install the SIGTERM/SIGINT handlers: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let connect = |fence| {
        HttpServer::new(
            &config.server_url,
            config.request_timeout,
            config.max_report_size.bytes(),
            &config.report_dir,
        )
        .map(|server| server.with_fence(fence))
        .map_err(|e| e.to_string())
    };
    let note_dir = config.state_file.parent().unwrap_or(Path::new("."));
    let trigger = systemd::trigger(declared, std::env::var("TRIGGER_UNIT").ok(), note_dir).await;
    let report = run::run(config, lock, connect, trigger, cancel).await;
    ExitCode::from(report.exit_code())
}

/// The first SIGTERM or SIGINT, as the signal that cancels a run. Only a run installs it:
/// `status` and `check-config` end at once on either, as a process without handlers does.
fn cancel_signal() -> std::io::Result<impl Future<Output = CancelSignal>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            biased;
            _ = term.recv() => CancelSignal::Term,
            _ = int.recv() => CancelSignal::Int,
        }
    })
}

/// The packaged timer's interval, when systemd can tell it (see `systemd::timer_interval`).
async fn timer_interval() -> Option<Duration> {
    match systemd::timer_interval(systemd::PACKAGED_TIMER).await {
        Ok(interval) => interval,
        Err(e) => {
            tracing::debug!(
                "the timer's schedule is not known ({e}); stale-after from schedule-period"
            );
            None
        }
    }
}

/// `check-config`: the deprecated keys the file sets, then the configuration, noting what
/// the check could not see.
fn print_config(loaded: &Loaded<Config>, lock: &Lock) -> ExitCode {
    let warnings: Vec<String> = match &loaded.source {
        Some(file) => loaded
            .deprecated
            .iter()
            .map(|key| deprecation_note(key, file))
            .collect(),
        None => Vec::new(),
    };
    // Said, because a run in the unit may well see what this check did not.
    let comments = lock.unchecked();
    check_config::valid("report-collector", loaded, &warnings, &comments)
}
