//! The `report-apis` binary: arguments, logging, configuration, then [`report_apis::run`];
//! `check-config` and `reload` for operators and `ExecReload=`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use report_apis::blocking_read::{BlockingRead, NotRead};
use report_apis::{Config, Reloader, config};
use report_common::check_config;
use report_common::config::{ConfigError, ConfigFile, Loaded};
use report_common::{exit, logging, message_id};

const EXIT_CODES: &str = "\
Exit codes:
  0    stopped by SIGTERM or SIGINT after draining; check-config: the configuration is valid;
       reload: the new configuration is in force
  1    any other failure (the address cannot be bound; reload: the server did not answer)
  64   command-line mistake (unknown option or subcommand, bad value)
  78   configuration error (an unknown key, a bad value, a value outside its allowed range),
       naming file, line and key (reload: refused, the old one stays)";

/// Report server: issues tickets and serves CSV reports, slower the more are outstanding.
#[derive(Debug, Clone, Parser)]
#[command(version, about, after_help = EXIT_CODES)]
struct Args {
    /// Configuration file [default: /etc/report-apis/config.toml, built-in defaults if absent]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to listen on, overriding `listen` from the configuration file
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
enum Command {
    /// Check the configuration as a start would and print it as TOML (exit 0), or the error
    /// naming file, line and key (exit 78)
    ///
    /// Run it before `systemctl restart report-apis`: a restart stops the old server before
    /// the new one can find a mistake in the file.
    CheckConfig,
    /// Check the configuration, have the server re-read it and wait until it is in force
    /// (systemctl reload)
    ///
    /// Sends SIGHUP to PID and waits for the outcome the server leaves in
    /// $RUNTIME_DIRECTORY/reload: exit 0 once in force, 78 when the file or the server refuses
    /// it (the configuration in force then stays).
    Reload {
        /// The running server's process ID ($MAINPID under systemd)
        #[arg(long, value_name = "PID")]
        pid: i32,
    },
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    match args.command {
        Some(Command::CheckConfig) => return check_config(&args),
        Some(Command::Reload { pid }) => return reload(&args, pid),
        None => {}
    }
    logging::init("report-apis");
    let config = match load(&args) {
        Ok(loaded) => loaded.config,
        Err(err) => {
            tracing::error!(MESSAGE_ID = message_id::APIS_CONFIG_REJECTED, "{err}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    match serve(config, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::Bind { listen, source }) => {
            tracing::error!(
                MESSAGE_ID = message_id::BIND_FAILED,
                LISTEN = %listen,
                "cannot listen on {listen}: {source}; free the port or choose another with --listen or `listen`"
            );
            ExitCode::FAILURE
        }
        Err(ServeError::Other(err)) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Why the server stopped with an error: it could not bind its address (a kind of its own in
/// the journal), or anything else.
#[derive(Debug)]
enum ServeError {
    Bind {
        listen: SocketAddr,
        source: std::io::Error,
    },
    Other(anyhow::Error),
}

impl From<anyhow::Error> for ServeError {
    fn from(err: anyhow::Error) -> Self {
        ServeError::Other(err)
    }
}

/// The configuration a start, a reload and `check-config` use: the file (or the defaults),
/// then `--listen`.
fn load(args: &Args) -> Result<Loaded<Config>, ConfigError> {
    let mut loaded = Config::load_or_default(args.config.as_deref())?;
    match &loaded.source {
        Some(path) => tracing::info!("configuration read from {}", path.display()),
        None => tracing::info!("no {}: using the built-in defaults", config::DEFAULT_PATH),
    }
    if let Some(listen) = args.listen {
        loaded.config.listen = listen;
    }
    Ok(loaded)
}

/// The file a start or a reload reads: `--config`, or the default path.
fn config_file(args: &Args) -> String {
    args.config.as_deref().map_or_else(
        || config::DEFAULT_PATH.to_owned(),
        |path| path.display().to_string(),
    )
}

fn check_config(args: &Args) -> ExitCode {
    match load(args) {
        Ok(loaded) => check_config::valid("report-apis", &loaded, &[], &[]),
        Err(err) => check_config::refused("report-apis", &err),
    }
}

/// Where the server leaves the outcome of each reload for `report-apis reload` to read:
/// systemd's `RuntimeDirectory=` (`RUNTIME_DIRECTORY`), or nowhere for a manual run.
fn reload_outcome_file() -> Option<PathBuf> {
    let dir = std::env::var_os("RUNTIME_DIRECTORY")?;
    // systemd lists several directories separated by colons when there are several.
    let first = std::env::split_paths(&dir).next()?;
    Some(first.join("reload"))
}

/// How long `reload` waits for the server's outcome; systemd's own reload timeout is longer.
const RELOAD_WAIT: Duration = Duration::from_secs(30);

/// How long the server waits on SIGHUP for its configuration file to be read and checked. A
/// local file takes milliseconds (1 MiB at most); a file system that has not answered in 5 s
/// may never answer, and the server goes on with the configuration in force, well within
/// [`RELOAD_WAIT`], so that `report-apis reload` hears of the refusal.
const RELOAD_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The most the outcome file may hold: the server writes one line there.
const OUTCOME_FILE_LIMIT: u64 = 64 << 10;

/// The outcome the server last wrote, if there is one to read.
fn read_outcome(file: &Path) -> Option<String> {
    let bytes = report_common::files::read(file, OUTCOME_FILE_LIMIT).ok()?;
    String::from_utf8(bytes).ok()
}

fn reload(args: &Args, pid: i32) -> ExitCode {
    use nix::sys::signal::{Signal, kill};
    // Under ExecReload= the refusal goes to the journal with its MESSAGE_ID, as the server's
    // own refusal does; by hand, readable on stderr. The check reads the file without a word:
    // the server says what it read once it applies it.
    let to_stderr = logging::init("report-apis");
    if let Err(err) = Config::load_or_default(args.config.as_deref()) {
        tracing::error!(
            MESSAGE_ID = message_id::RELOAD_REJECTED,
            CONFIG_FILE = config_file(args).as_str(),
            "reload refused, the configuration in force stays: {err}"
        );
        // This process ends at once, and journald may then not tie the record above to the
        // unit (`journalctl -t report-apis` and its MESSAGE_ID find it). The unit's own output
        // stream always is tied to it: say it there too, as for the server's refusals below,
        // so `journalctl -u report-apis`, where systemctl points, shows why.
        if !to_stderr {
            eprintln!("report-apis: reload refused, the configuration in force stays: {err}");
        }
        return ExitCode::from(exit::CONFIG);
    }
    let Some(file) = reload_outcome_file() else {
        eprintln!(
            "report-apis: RUNTIME_DIRECTORY is not set: run `systemctl reload report-apis`, \
             or send SIGHUP to the server yourself"
        );
        return ExitCode::from(exit::USAGE);
    };
    let before = read_outcome(&file);
    if let Err(err) = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP) {
        eprintln!("report-apis: cannot signal the server (PID {pid}): {err}");
        return ExitCode::FAILURE;
    }
    let waited_from = std::time::Instant::now();
    while waited_from.elapsed() < RELOAD_WAIT {
        std::thread::sleep(Duration::from_millis(20));
        let Some(now) = read_outcome(&file) else {
            continue;
        };
        if Some(&now) == before.as_ref() {
            continue;
        }
        let outcome = now.lines().next().unwrap_or_default();
        return match outcome.split_once(' ').map(|(_, rest)| rest) {
            Some(rest) if rest.starts_with("reloaded") => {
                println!("report-apis: {rest}");
                ExitCode::SUCCESS
            }
            _ => {
                eprintln!(
                    "report-apis: {}",
                    outcome.split_once(' ').map_or(outcome, |(_, rest)| rest)
                );
                ExitCode::from(exit::CONFIG)
            }
        };
    }
    eprintln!(
        "report-apis: the server (PID {pid}) did not report the reload within {}; see journalctl -u report-apis",
        humantime::format_duration(RELOAD_WAIT)
    );
    ExitCode::FAILURE
}

fn serve(config: Config, args: Args) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        // Installed before READY=1: SIGHUP's default action would end the server.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot handle SIGHUP")?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind {
                listen: config.listen,
                source,
            })?;
        let (reloader, reloads) = report_apis::reload_channel();
        tokio::spawn(reload_on_sighup(hangup, args, reloader));
        Ok(report_apis::run_with_reloads(listener, config, shutdown, reloads).await?)
    })
}

/// On every SIGHUP: re-read the configuration as a start would, have the server apply it, log
/// the outcome, and leave it where `report-apis reload` waits for it. The file is read off the
/// runtime's threads and under [`RELOAD_READ_TIMEOUT`] (see [`report_apis::blocking_read`]): a
/// file that cannot be read in time is refused as a bad one is, and the server answers on.
async fn reload_on_sighup(mut hangup: tokio::signal::unix::Signal, args: Args, reloader: Reloader) {
    let outcome_file = reload_outcome_file();
    let reads = BlockingRead::default();
    let mut count = 0_u64;
    while hangup.recv().await.is_some() {
        count += 1;
        report_apis::notify::reloading();
        let read_args = args.clone();
        let read = reads.run(RELOAD_READ_TIMEOUT, move || {
            load(&read_args).map(|l| l.config)
        });
        let outcome = match read.await {
            Ok(Ok(config)) => reloader.reload(config).await,
            Ok(Err(err)) => Err(err.to_string()),
            Err(not_read) => Err(not_read_in_time(&config_file(&args), &not_read)),
        };
        let line = match &outcome {
            Ok(changes) => {
                tracing::info!(
                    MESSAGE_ID = message_id::RELOADED,
                    "reloaded: the new configuration is in force ({changes}); pending tickets kept"
                );
                format!("reloaded: the new configuration is in force ({changes})")
            }
            Err(why) => {
                tracing::error!(
                    MESSAGE_ID = message_id::RELOAD_REJECTED,
                    CONFIG_FILE = config_file(&args).as_str(),
                    "reload refused, the configuration in force stays: {why}"
                );
                format!("reload refused, the configuration in force stays: {why}")
            }
        };
        if let Some(file) = &outcome_file {
            let text = format!("{}.{count} {line}\n", std::process::id());
            let temporary = file.with_extension("new");
            let written =
                std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, file));
            if let Err(err) = written {
                tracing::warn!("cannot write {}: {err}", file.display());
            }
        }
        report_apis::notify::reloaded();
    }
}

/// Why a reload has no configuration to apply, when the file gave no answer.
fn not_read_in_time(file: &str, not_read: &NotRead) -> String {
    format!(
        "cannot read the configuration file {file}: {not_read}; check the file system it is on, then reload again"
    )
}

/// Installs the SIGTERM (systemd's stop) and SIGINT (Ctrl-C) handlers at once, before the
/// server reports itself ready, and returns a future that completes on the first of them.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
