//! The `report-collector` binary: parse the command line, set up logging, load the config,
//! then build the runtime, the lock and the cancelling signals, and hand one run (or `status`)
//! to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use report_collector::client::HttpServer;
use report_collector::config::{CREDENTIAL_NAME, Config, LockBackend, Policy, deprecation_note};
use report_collector::lock::RunLock;
use report_collector::lock::flock::FlockLock;
use report_collector::lock::postgres::PostgresLock;
use report_collector::outcome::CancelSignal;
use report_collector::schedule::DeclaredTrigger;
use report_common::check_config;
use report_common::config::{ConfigFile, Loaded};
use report_common::{exit, message_id};

const EXIT_CODES: &str = "\
Exit codes:
  0    collected: the report was fetched and saved
  75   skipped: lock busy (forbid), lock-wait timed out (wait), holder not confirmed (replace),
       or a timer start later than starting-deadline after its slot; report-collector.service
       counts it as success, so `systemctl start` exits 0 (see `report-collector status`)
  64   command-line mistake (unknown option or subcommand, bad value)
  78   configuration error (a value outside its range too), naming file, line and key
       (check-config: the same)
  1    any other failure (server unreachable or failing until the deadline; an answer that is
       an error page or a truncated, malformed or too large report; disk)
  69   lock-backend = \"postgres\": the lock's database cannot be reached or refused this
       collector; nothing was collected
  79   lock-backend = \"postgres\": the lease ran out while the run held it (paused, cut off,
       or its session ended by another host); nothing was saved
  130  cancelled by SIGINT
  143  cancelled by SIGTERM

Exit codes of `status`:
  0    healthy: a collection within stale-after, or none yet within the grace period that
       starts with the first run, or no run yet while the state directory is younger than
       stale-after; and every path inspected
  1    stale: no collection within stale-after (default: 5 periods of the timer), or no run
       at all since the state directory was created, longer than stale-after ago
  69   lock-backend = \"postgres\": the lock's database cannot be reached
  74   a path could not be inspected (not a regular file or directory, missing directory,
       a state file that is not one, an I/O error)
  77   a path could not be inspected for lack of permission
  65   the last collection (or the first run) lies more than 5 s in the future: the clock was
       set back or the state file is wrong (health unknown)
  64   command-line mistake, as above
  78   configuration error, as above
  When several apply: a state file that cannot be read gives its 74 or 77; else stale gives
  1; else the first path that could not be inspected gives its code, the lock's (69, 74, 77)
  before the report directory's (74, 77). Every problem is listed in any case.";

#[derive(Debug, Parser)]
#[command(
    name = "report-collector",
    version,
    about = "Collects one report from report-apis per run, never overlapping a previous run.",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Configuration file [default: /etc/report-collector/config.toml; absent means defaults]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Base URL of report-apis (overrides server-url)
    #[arg(long, global = true, value_name = "URL")]
    server_url: Option<String>,
    /// What to do when the previous run still holds the lock: forbid, wait, replace or allow
    /// (overrides policy)
    #[arg(long, global = true, value_name = "POLICY", value_parser = policy_parser())]
    policy: Option<Policy>,
    /// The lock file (overrides lock-file)
    #[arg(long, global = true, value_name = "PATH")]
    lock_file: Option<PathBuf>,
    /// What started this run: auto (ask systemd), timer (starting-deadline applies) or manual
    /// (it never does). For runs outside systemd: tests, other schedulers
    #[arg(
        long,
        global = true,
        value_name = "HOW",
        value_enum,
        default_value = "auto"
    )]
    trigger: DeclaredTrigger,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Collect one report (what a bare `report-collector` does)
    Run,
    /// Check the configuration as a run would and print it as TOML (exit 0), or the error
    /// naming file, line and key (exit 78)
    ///
    /// Command-line overrides apply as they would to a run. With lock-backend = "postgres",
    /// the password file and tls-ca-file are read as a start reads them. No lock is taken, no
    /// server asked, no database connected.
    CheckConfig,
    /// Judge whether the collector is healthy (last collection within stale-after) and show
    /// the lock, the last run, the last collection and the reports kept
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

/// The policy names as `--help` lists them, parsed by the one `FromStr` the config uses too.
fn policy_parser() -> impl clap::builder::TypedValueParser<Value = Policy> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Policy::ALL.map(Policy::as_str))
        .try_map(|name| name.parse::<Policy>())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    let checking = matches!(cli.command, Some(Command::CheckConfig));
    // `journalctl -t report-collector` finds every line, even those journald could not
    // attribute to the unit (runs that exit at once). `check-config` only prints.
    if !checking {
        report_common::logging::init("report-collector");
    }

    let mut loaded = match Config::load_or_default(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => return config_rejected(checking, &format!("configuration error: {e}")),
    };
    let config = &mut loaded.config;
    if let Some(url) = cli.server_url {
        config.server_url = url;
    }
    if let Some(policy) = cli.policy {
        config.policy = policy;
    }
    if let Some(lock_file) = cli.lock_file {
        config.lock_file = lock_file;
    }
    if let Err(e) = config.check() {
        return config_rejected(
            checking,
            &format!("configuration error (command line): {e}"),
        );
    }

    // A run started as root becomes the lock directory's owner before the lock is made:
    // making the PostgreSQL lock reads the password, and no secret may be read by a process
    // that then hands itself to another user (see `identity`).
    if matches!(cli.command, None | Some(Command::Run))
        && let Err(e) = report_collector::identity::become_owner_of(&loaded.config)
    {
        e.log();
        return ExitCode::from(exit::FAILURE);
    }

    // The lock is made here for `check-config` too: what it reads at start (the password
    // file, the CA file) is then checked as a run would check it. Making it connects nowhere.
    match loaded.config.lock_backend {
        LockBackend::Flock => {
            let lock = FlockLock::new(&loaded.config.lock_file);
            command(cli.command, cli.trigger, loaded, &lock)
        }
        LockBackend::Postgres => {
            let pg = loaded.config.postgres.clone().unwrap_or_default();
            match PostgresLock::from_config(&pg) {
                Ok(lock) => command(cli.command, cli.trigger, loaded, &lock),
                Err(e) => config_rejected(checking, &format!("configuration error: {e}")),
            }
        }
    }
}

fn command<L: RunLock>(
    command: Option<Command>,
    trigger: DeclaredTrigger,
    mut loaded: Loaded<Config>,
    lock: &L,
) -> ExitCode {
    let config = &mut loaded.config;
    match command {
        None | Some(Command::Run) => run(config, lock, trigger),
        Some(Command::Status { json }) => {
            if config.stale_after.is_none()
                && let Some(interval) = timer_interval()
            {
                // The default stale-after follows the timer's own schedule.
                config.schedule_period = interval;
            }
            report_collector::status::print(config, lock, json)
        }
        Some(Command::CheckConfig) => check_config(&loaded),
    }
}

/// Exit 78 for a configuration error: on stderr for `check-config`, in the journal otherwise.
fn config_rejected(checking: bool, error: &str) -> ExitCode {
    if checking {
        eprintln!("report-collector: {error}");
    } else {
        tracing::error!(
            MESSAGE_ID = message_id::COLLECTOR_CONFIG_REJECTED,
            "{error}"
        );
    }
    ExitCode::from(exit::CONFIG)
}

fn check_config(loaded: &Loaded<Config>) -> ExitCode {
    let config = &loaded.config;
    let warnings: Vec<String> = match &loaded.source {
        Some(file) => loaded
            .deprecated
            .iter()
            .map(|key| deprecation_note(key, file))
            .collect(),
        None => Vec::new(),
    };
    let mut comments = Vec::new();
    if let Some(pg) = &config.postgres
        && config.lock_backend == LockBackend::Postgres
        && pg.password_file().is_none()
    {
        // Said, because a run in the unit may well have one this check never saw.
        comments.push(format!(
            "no password file checked: postgres.password-file is unset and there is no $CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME} here (LoadCredential= shows it to the service only); to check the file the unit loads, run CREDENTIALS_DIRECTORY=<its directory> report-collector check-config"
        ));
    }
    check_config::valid("report-collector", loaded, &warnings, &comments)
}

/// One run on a current-thread runtime (a periodic job needs no more), cancelled by SIGTERM
/// or SIGINT, its outcome mapped to the exit code.
fn run(config: &Config, lock: &impl RunLock, declared: DeclaredTrigger) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let report = runtime.block_on(async {
        // Installed before the run starts: a signal that comes at any point cancels it.
        let cancel = match cancel_signal() {
            Ok(cancel) => cancel,
            Err(e) => {
                tracing::error!("cannot install the SIGTERM/SIGINT handlers: {e}");
                return None;
            }
        };
        let connect = || {
            HttpServer::new(
                &config.server_url,
                config.request_timeout,
                config.max_report_size.bytes(),
            )
            .map_err(|e| e.to_string())
        };
        let note_dir = config
            .state_file
            .parent()
            .unwrap_or(std::path::Path::new("."));
        let trigger = report_collector::systemd::trigger(
            declared,
            std::env::var("TRIGGER_UNIT").ok(),
            note_dir,
        )
        .await;
        Some(report_collector::run::run(config, lock, connect, trigger, cancel).await)
    });
    match report {
        Some(report) => ExitCode::from(report.exit_code()),
        None => ExitCode::from(exit::FAILURE),
    }
}

/// The packaged timer's interval, when systemd can tell it (see `systemd::timer_interval`).
fn timer_interval() -> Option<std::time::Duration> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    match runtime.block_on(report_collector::systemd::timer_interval(
        report_collector::systemd::PACKAGED_TIMER,
    )) {
        Ok(interval) => interval,
        Err(e) => {
            tracing::debug!(
                "the timer's schedule is not known ({e}); stale-after from schedule-period"
            );
            None
        }
    }
}

/// The first SIGTERM or SIGINT, as the signal that cancels a run.
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
