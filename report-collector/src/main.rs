//! The `report-collector` binary: parse the command line, set up logging, load the config,
//! then build the runtime, the lock and the cancelling signals, and hand one run (or `status`)
//! to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use report_collector::client::HttpServer;
use report_collector::config::{Config, Policy};
use report_collector::lock::flock::FlockLock;
use report_collector::outcome::CancelSignal;
use report_collector::schedule::Trigger;
use report_common::config::ConfigFile;
use report_common::exit;

const EXIT_CODES: &str = "\
Exit codes:
  0    collected: the report was fetched and saved
  75   skipped: lock busy (forbid), lock-wait timed out (wait), holder not confirmed (replace),
       or a timer start later than starting-deadline after its slot
  78   configuration error (config file or command line)
  1    any other failure (server unreachable or failing until the deadline, bad answers, disk)
  130  cancelled by SIGINT
  143  cancelled by SIGTERM

Exit codes of `status`:
  0    healthy: a collection within stale-after, or none yet within the grace period that
       starts with the first run, or no run yet
  1    stale: no collection within stale-after (default: 5 schedule periods)
  74   a path could not be inspected (not a regular file or directory, missing directory,
       a state file that is not one)
  77   a path could not be inspected for lack of permission";

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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Collect one report (what a bare `report-collector` does)
    Run,
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
            return ExitCode::from(if e.use_stderr() { exit::CONFIG } else { 0 });
        }
    };
    // `journalctl -t report-collector` finds every line, even those journald could not
    // attribute to the unit (runs that exit at once).
    report_common::logging::init("report-collector");

    let mut config = match Config::load_or_default(cli.config.as_deref()) {
        Ok((config, _)) => config,
        Err(e) => {
            tracing::error!("configuration error: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
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
        tracing::error!("configuration error (command line): {e}");
        return ExitCode::from(exit::CONFIG);
    }

    let lock = FlockLock::new(&config.lock_file);
    match cli.command {
        None | Some(Command::Run) => run(&config, &lock),
        Some(Command::Status { json }) => report_collector::status::print(&config, &lock, json),
    }
}

/// One run on a current-thread runtime (a periodic job needs no more), cancelled by SIGTERM
/// or SIGINT, its outcome mapped to the exit code.
fn run(config: &Config, lock: &FlockLock) -> ExitCode {
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
            HttpServer::new(&config.server_url, config.request_timeout).map_err(|e| e.to_string())
        };
        let trigger = Trigger::from_env();
        Some(report_collector::run::run(config, lock, connect, trigger, cancel).await)
    });
    match report {
        Some(report) => ExitCode::from(report.exit_code()),
        None => ExitCode::from(exit::FAILURE),
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
