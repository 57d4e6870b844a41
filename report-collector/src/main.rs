//! The `report-collector` binary: parse the command line, set up logging, load the config,
//! build the one runtime, and hand the command to the library ([`report_collector::commands`]).

// A function a reader can hold in their head: at most 60 lines of code (the threshold is in
// clippy.toml; blank and comment lines do not count). An exception is an
// `#[expect(clippy::too_many_lines, reason = "...")]`. Tests read top to bottom and are exempt.
#![warn(clippy::too_many_lines)]
#![cfg_attr(test, allow(clippy::too_many_lines))]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use report_collector::commands::{self, config_rejected};
use report_collector::config::Source;
use report_collector::lock::Policy;
use report_collector::schedule::DeclaredTrigger;
use report_common::exit;

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
       collector, its tables are of another shape, or the row's generation cannot increase;
       nothing was collected
  79   the lock was lost: its lease ran out while the run held it (lock-backend =
       \"postgres\": paused, cut off, or its session ended by another host), or report-apis
       refused the run's fencing token (either backend: another run holds the lock since);
       nothing was saved
  130  cancelled by SIGINT
  143  cancelled by SIGTERM

Exit codes of `status`:
  0    healthy: a collection within stale-after, or none yet within the grace period that
       starts with the first run, or no run yet while the state directory is younger than
       stale-after; and every path inspected
  1    stale: no collection within stale-after (default: 5 periods of the timer), or no run
       at all since the state directory was created, longer than stale-after ago
  69   lock-backend = \"postgres\": the lock's database cannot be reached, its tables are of
       another shape, or the row's generation cannot increase
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
    let command = match cli.command {
        None | Some(Command::Run) => commands::Command::Run {
            trigger: cli.trigger,
        },
        Some(Command::Status { json }) => commands::Command::Status { json },
        Some(Command::CheckConfig) => commands::Command::CheckConfig,
    };
    let checking = command == commands::Command::CheckConfig;
    // `journalctl -t report-collector` finds every line, even those journald could not
    // attribute to the unit (runs that exit at once). `check-config` only prints.
    if !checking {
        report_common::logging::init("report-collector");
    }
    let source = Source {
        file: cli.config,
        server_url: cli.server_url,
        policy: cli.policy,
        lock_file: cli.lock_file,
    };
    let loaded = match source.load() {
        Ok(loaded) => loaded,
        Err(error) => return config_rejected(checking, &error),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) if checking => {
            eprintln!("report-collector: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    runtime.block_on(commands::execute(command, loaded))
}
